"""python -m emojax.ablate: the smoke ablation trains, evaluates every row on one grid and writes both tables."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from emojax import ablate


def _ablate(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "emojax.ablate", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900, stdin=subprocess.DEVNULL)


def test_smoke_ablation_writes_every_row_and_resumes(tmp_path):
  out = tmp_path / "abl"
  proc = _ablate("--config=configs/ablation.py:smoke", f"--workdir={out}", "--progress=false")
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = json.loads((out / "ablation.json").read_text())
  assert list(table["rows"]) == ["base", "rf", "tf", "selection", "rf_tf", "emotional_prompts", "oracle_tf"]
  base = json.loads((out / "seed0" / "base.json").read_text())
  assert table["rows"]["base"]["colour_sum_change"]["mean"] == 0.0
  assert table["rows"]["base"]["pickscore"]["mean"] == pytest.approx(base["pickscore"])
  assert (out / "seed0" / "rf" / "export" / "config.json").is_file()
  assert json.loads((out / "seed0" / "tf.json").read_text())["rounds"][-1]["round"] == 1
  md = (out / "ablation.md").read_text()
  assert md.startswith("| row |") and [l.split(" | ")[0] for l in md.splitlines()[2:9]] == [
      "| base", "| rf", "| tf", "| selection", "| rf_tf", "| emotional_prompts", "| oracle_tf"]
  kept = json.loads((out / "seed0" / "selection.json").read_text())
  assert kept["rewrite_accept_rate"] is None and kept["feedback"]["rewrite"] is False
  # a rerun reads the finished rows instead of recomputing them
  (out / "seed0" / "rf.json").write_text(json.dumps({**json.loads((out / "seed0" / "rf.json").read_text()),
                                                     "clip_score": 123.0}))
  proc = _ablate("--config=configs/ablation.py:smoke", f"--workdir={out}", "--progress=false")
  assert proc.returncode == 0 and json.loads((out / "ablation.json").read_text())["rows"]["rf"]["clip_score"]["mean"] == 123.0


def test_emotional_prompts_follow_the_target():
  va = np.array([[2.5, 2.5], [-2.5, -2.5]], np.float32)
  bright, dark = ablate.emotional_prompts(12345, va)
  assert "background" in bright and bright != dark


@pytest.mark.parametrize("args, message", [
    (["--config.rows=('rf',)"], "rows must include 'base'"),
    (["--config.train.protocol=mine"], "train.protocol='mine' is out of range"),
    (["--config.seeds=(0,0)"], "seeds=(0, 0) is out of range"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
  proc = _ablate("--config=configs/ablation.py:smoke", f"--workdir={tmp_path / 'x'}", *args)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("emojax.ablate: error:")]
  assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
