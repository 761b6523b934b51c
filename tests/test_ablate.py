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


def test_smoke_ablation_writes_every_row_and_reads_finished_ones(tmp_path):
  """The RF rows' metrics are written beforehand, as a killed ablation leaves them: the run reads them
  (and so trains nothing) and computes every other row on the grid."""
  out = tmp_path / "abl"
  (out / "seed0").mkdir(parents=True)
  keys = ablate.METRICS
  for name, x in (("rf", 0.5), ("rf_tf", 0.25)):
    (out / "seed0" / f"{name}.json").write_text(json.dumps({k: x for k in keys}))
  proc = _ablate("--config=configs/ablation.py:smoke", f"--workdir={out}", "--progress=false")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not (out / "seed0" / "rf").exists()  # nothing trained: both RF rows were finished
  table = json.loads((out / "ablation.json").read_text())
  assert list(table["rows"]) == ["base", "rf", "tf", "selection", "rf_tf", "emotional_prompts", "oracle_tf"]
  base = json.loads((out / "seed0" / "base.json").read_text())
  assert table["rows"]["base"]["colour_sum_change"]["mean"] == 0.0
  assert table["rows"]["base"]["pickscore"]["mean"] == pytest.approx(base["pickscore"])
  assert table["rows"]["rf_tf"]["clip_score"]["mean"] == 0.25
  want = 0.5 / (base["colour_valence_error"] + base["colour_arousal_error"]) - 1
  assert table["rows"]["rf_tf"]["colour_sum_change"]["mean"] == pytest.approx(want)
  tf = json.loads((out / "seed0" / "tf.json").read_text())
  assert tf["rounds"][-1]["round"] == 1 and tf["feedback"]["rewriter"] == "lvlm"
  kept = json.loads((out / "seed0" / "selection.json").read_text())
  assert kept["rewrite_accept_rate"] is None and kept["feedback"]["rewrite"] is False
  oracle = json.loads((out / "seed0" / "oracle_tf.json").read_text())
  assert oracle["rewrite_accept_rate"] == 1.0  # the oracle always keeps the content
  md = (out / "ablation.md").read_text()
  assert md.startswith("| row |") and [l.split(" | ")[0] for l in md.splitlines()[2:9]] == [
      "| base", "| rf", "| tf", "| selection", "| rf_tf", "| emotional_prompts", "| oracle_tf"]


def test_training_config_of_each_protocol():
  from configs import ablation
  c = ablation.get_config("smoke")
  c.unlock()
  current = ablate.train_config(c, 3)
  assert current.seed == 3 and current.data.prompt_field == "prompt" and current.data.target_mode == "uniform"
  c.train.protocol = "paper"
  paper = ablate.train_config(c, 3)
  assert paper.data.prompt_field == "emotional_prompt" and paper.data.target_mode == "data"
  c.train.config = "configs/nowhere.py"
  with pytest.raises(FileNotFoundError, match="configs/nowhere.py does not exist"):
    ablate.train_config(c, 0)


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
