"""python -m emojax.generate: the feedback loop on the shipped tiny models, its files, and bad input."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _generate(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "emojax.generate", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_generate_writes_best_rounds_trace_and_contact_sheet(tmp_path):
  out = tmp_path / "gen"
  proc = _generate("--prompt=a star in the center and a ring on the left", "--valence=2", "--arousal=-1",
                   "--feedback_rounds=2", "--images_per_round=3", "--num_steps=2", "--batch_size=8",
                   f"--outdir={out}", "--progress=false")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["requests"] == 1
  trace = json.loads((out / "trace.json").read_text())
  assert trace["target"] == {"valence": 2.0, "arousal": -1.0} and len(trace["rounds"]) == 2
  r0, r1 = trace["rounds"]
  assert r0["prompt"] == "a star in the center and a ring on the left" and len(r0["images"]) == 3
  assert r0["status"] in ("ok",) or r0["status"].startswith(("unparsed", "refused"))
  assert r1["prompt"] == (r0["prompt"] if r0["status"] != "ok" else r1["prompt"]) and r1["status"] == "final round"
  assert all((out / im["file"]).is_file() for r in trace["rounds"] for im in r["images"])
  best = trace["rounds"][trace["best"]["round"]]["images"][trace["best"]["image"]]
  assert trace["best"]["judged_error"] == min(im["judged_error"] for r in trace["rounds"] for im in r["images"])
  assert (out / "best.png").read_bytes() == (out / best["file"]).read_bytes()
  assert (out / "contact_sheet.png").stat().st_size > 1000


def test_a_grid_of_targets_and_selection_alone(tmp_path):
  out = tmp_path / "grid"
  proc = _generate("--prompt=a circle at the top", "--valence=-2,2", "--arousal=0", "--rewrite=false",
                   "--feedback_rounds=2", "--images_per_round=2", "--num_steps=2", "--batch_size=4",
                   f"--outdir={out}", "--progress=false")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_text())
  assert [(s["valence"], s["arousal"]) for s in summary] == [(-2.0, 0.0), (2.0, 0.0)]
  for s in summary:
    trace = json.loads((out / s["dir"] / "trace.json").read_text())
    assert [r["prompt"] for r in trace["rounds"]] == ["a circle at the top"] * 2
    assert trace["rounds"][0]["status"] == "kept: rewriting is off"


@pytest.mark.parametrize("args, message", [
    (["--valence=3.5"], "--valence=3.5 is outside [-3, 3]"),
    (["--arousal=calm"], "--arousal='calm' is not a number"),
    (["--prompt= "], "empty prompt"),
    (["--generator=/nowhere/gen"], "generator directory /nowhere/gen does not exist"),
    (["--lvlm=/nowhere/lvlm"], "LVLM directory /nowhere/lvlm does not exist"),
    (["--feedback_rounds=0"], "--feedback_rounds=0 must be >= 1"),
    (["OCCUPIED"], "holds other files"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path):
  out = tmp_path / "out"
  if args == ["OCCUPIED"]:
    out.mkdir()
    (out / "notes.txt").write_text("another run")
    args = []
  base = {"--prompt": "--prompt=a star in the center", "--outdir": f"--outdir={out}"}
  for a in args:
    base[a.split("=")[0]] = a
  proc = _generate(*base.values())
  errors = [l for l in proc.stderr.splitlines() if l.startswith("emojax.generate: error:")]
  assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert not out.exists() or os.listdir(out) == ["notes.txt"]
