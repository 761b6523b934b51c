"""The command lines turn bad input into one actionable line and exit code 2, with nothing written."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT


def _train(*args, workdir):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "emojax.train", f"--workdir={workdir}", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args, message", [
    (["--config=configs/generator.py", "--config.rl.no_such_field=1"], "unknown config field rl.no_such_field"),
    (["--config=configs/generator.py:bogus"], "unknown preset 'bogus' for generator; use default, smoke, sd35m or sd35m_1gpu"),
    (["--config=configs/lvlm.py", "--config.rewards.weights.format=-1"],
     "config field rewards.weights.format=-1.0 is out of range: it must be a number >= 0"),
    (["--config=configs/generator.py", "--config.model.pretrained=/nonexistent/gen"], "/nonexistent/gen does not exist"),
    # what a new user tried: out-of-range values are named with their valid range, before anything runs
    (["--config=configs/generator.py", "--config.rl.group_size=0"],
     "config field rl.group_size=0 is out of range: it must be an integer >= 2"),
    (["--config=configs/generator.py", "--config.eval.num_prompts=0"], "eval.num_prompts=0 is out of range"),
    (["--config=configs/generator.py", "--config.optim.learning_rate=-0.001"],
     "optim.learning_rate=-0.001 is out of range: it must be a number > 0"),
    (["--config=configs/generator.py", "--config.rl.timestep_fraction=1.5"],
     "rl.timestep_fraction=1.5 is out of range: it must be a number in (0, 1]"),
    (["--config=configs/lvlm.py", "--config.aggregation=sum"],
     "aggregation='sum' is out of range: it must be one of 'sequence_mean', 'token_mean'"),
    (["--config=configs/pretrain_generator.py", "--config.shape_margin=-1"], "shape_margin=-1 is out of range"),
    # chunks and kernels (model.attention names one this CPU lacks): refused before the workdir exists
    (["--config=configs/generator.py", "--config.rl.rollout_chunks=0"], "rl.rollout_chunks=0 is out of range"),
    (["--config=configs/generator.py", "--config.rl.decode_chunks=100"],
     "rl.decode_chunks=100 does not divide the batch of"),
    (["--config=configs/generator.py", "--config.model.attention=splash"],
     "model.attention='splash' is not available on cpu; it has: auto, xla, blockwise"),
    (["--config=configs/lvlm.py", "--config.model.attention=cudnn"], "model.attention='cudnn' is not available on cpu"),
    ([], "--config=configs/<job>.py is required"),
    (["--config=configs/generator.py", "extra"], "unexpected arguments ['extra']"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
  workdir = tmp_path / "run"
  proc = _train(*args, workdir=workdir)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("emojax.train: error:")]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()  # nothing written


def test_loading_a_config_imports_no_jax_flax_or_model():
  names = ("generator", "lvlm", "sft_lvlm", "pretrain_generator", "pretrain_preference", "evaluate",
           "evaluate_generator", "ablation")
  code = (f"import importlib, sys\nfor n in {names!r}:\n  importlib.import_module('configs.' + n).get_config()\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax', 'orbax', 'grain') "
          "or m.startswith(('emojax.models', 'emojax.tasks'))))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "[]", proc.stdout


def _evaluate(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "emojax.evaluate", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_generator_evaluation_writes_metrics_csv_images_and_plots(tmp_path, tiny_preference):
  out = tmp_path / "eval"
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a circle in the center\n\na star at the top left\n")
  proc = _evaluate("--config=configs/evaluate_generator.py", f"--workdir={out}", f"--config.prompts_file={prompts}",
                   "--config.grid=(-3.0,3.0)", "--config.batch_size=3",
                   f"--config.preference.path={tiny_preference[1] / 'export'}", "--config.num_steps=2", "--progress=false")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary == json.loads((out / "metrics.json").read_text())
  assert summary["n"] == 8 and 0 <= summary["clip_iqa"] <= 1 and summary["parse_rate"] > 0
  rows = list(csv.DictReader((out / "per_image.csv").open()))
  assert len(rows) == 8 and {r["prompt"] for r in rows} == {"a circle in the center", "a star at the top left"}
  assert [(float(r["target_valence"]), float(r["target_arousal"])) for r in rows[:4]] == [(-3, -3), (-3, 3), (3, -3), (3, 3)]
  colour_err = np.mean([abs(float(r["colour_valence"]) - float(r["target_valence"])) for r in rows])
  assert summary["colour_valence_error"] == pytest.approx(colour_err, abs=1e-3)  # the summary is the CSV's mean
  assert 0.5 < summary["colour_error_floor"] <= summary["colour_valence_error"] + summary["colour_arousal_error"]
  cells = {}
  for r in rows:
    cells.setdefault((r["target_valence"], r["target_arousal"]), []).append(float(r["pickscore"]))
  assert len(cells) == 4 and summary["pickscore_min_cell"] == pytest.approx(min(map(np.mean, cells.values())), abs=1e-3)
  assert summary["pickscore_min_cell"] <= summary["pickscore"] and "pickscore_clean" not in summary
  assert all((out / r["file"]).is_file() for r in rows)
  assert (out / "va_grid.png").stat().st_size > 1000 and (out / "va_scatter.png").stat().st_size > 1000


def test_generator_evaluation_with_the_feedback_loop(tmp_path, tiny_preference):
  out = tmp_path / "eval"
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a circle in the center\na star at the top left and a ring on the right\n")
  proc = _evaluate("--config=configs/evaluate_generator.py", f"--workdir={out}", f"--config.prompts_file={prompts}",
                   "--config.grid=(-2.0,2.0)", "--config.batch_size=8", "--config.feedback.rounds=2",
                   "--config.feedback.images_per_round=2", "--config.feedback.rewriter=oracle",
                   f"--config.preference.path={tiny_preference[1] / 'export'}", "--config.num_steps=2", "--progress=false")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / "metrics.json").read_text())
  assert summary["n"] == 8 and summary["rewrite_accept_rate"] == 1.0  # the oracle keeps the content
  first, last = summary["rounds"]
  assert last["judged_error"] <= first["judged_error"]  # the kept image only gets better by the judge
  traces = json.loads((out / "feedback_traces.json").read_text())
  assert len(traces) == 8 and all(len(t["rounds"]) == 2 for t in traces)
  rows = list(csv.DictReader((out / "per_image.csv").open()))
  # the CSV holds the kept images: their LVLM readings are the traces' chosen ones
  for row, t in zip(rows, traces):
    best = t["rounds"][t["best"]["round"]]["images"][t["best"]["image"]]
    assert float(row["judged_valence"]) == pytest.approx(best["valence"], abs=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--config.feedback.rewriter=human"], "feedback.rewriter='human' is out of range"),
    (["--config.grid=(-3.0,3.5)"], "config field grid=(-3.0, 3.5) is out of range"),
    (["--config.prompts_file=EMPTY"], "holds no prompt"),
    (["--config.generator=/nowhere/gen"], "/nowhere/gen does not exist"),
    (["--config.preference.path=/nowhere/clip"], "CLIP directory /nowhere/clip does not exist"),
])
def test_generator_evaluation_bad_input_is_one_line(args, message, tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n  \n")
  args = [a.replace("EMPTY", str(empty)) for a in args]
  out = tmp_path / "eval"
  proc = _evaluate("--config=configs/evaluate_generator.py", f"--workdir={out}", *args)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("emojax.evaluate: error:")]
  assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert not out.exists()


def test_generator_evaluation_refuses_another_runs_directory(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  proc = _evaluate("--config=configs/evaluate_generator.py", f"--workdir={tmp_path}")
  errors = [l for l in proc.stderr.splitlines() if l.startswith("emojax.evaluate: error:")]
  assert proc.returncode == 2 and len(errors) == 1 and "not empty and holds no earlier evaluation" in errors[0]
  assert os.listdir(tmp_path) == ["checkpoints"]


@pytest.mark.asset
def test_generator_evaluation_on_split_prompts_reports_the_clean_level(tmp_path):
  """With the shipped preference model and EmoShapes prompts, pickscore_clean is the model's PickScore of the
  split's own renders of those prompts."""
  from emojax.data import emoshapes
  from emojax.io import assets
  from emojax.rewards.clip_scores import SHIPPED_PREFERENCE, ClipScorer
  out = tmp_path / "eval"
  proc = _evaluate("--config=configs/evaluate_generator.py", f"--workdir={out}", "--config.grid=(0.0,)",
                   "--config.data.num_prompts=2", "--config.num_steps=4", "--config.batch_size=2", "--progress=false")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / "metrics.json").read_text())
  examples = [emoshapes.make_example(12345, i) for i in range(2)]
  s = ClipScorer.from_pretrained(assets.asset_dir(SHIPPED_PREFERENCE))
  want = s.pickscore(np.stack([e["image"] for e in examples]), [e["prompt"] for e in examples]).mean()
  assert summary["n"] == 2 and summary["pickscore_clean"] == pytest.approx(float(want), abs=1e-3)


def test_configs_resolve_to_the_installed_package_outside_a_checkout(tmp_path):
  """From a directory with no configs/, configs/NAME.py is the package's; a file under the working directory wins."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  run = lambda *a: subprocess.run([sys.executable, "-m", "emojax.train", f"--workdir={tmp_path / 'w'}", *a],
                                  cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                                  stdin=subprocess.DEVNULL)
  proc = run("--config=configs/generator.py:smoke", "--config.rl.group_size=0")  # loaded, then refused by its range
  assert proc.returncode == 2 and "rl.group_size=0 is out of range" in proc.stderr.strip().splitlines()[-1], proc.stderr
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "generator.py").write_text("raise ValueError('the local configs/generator.py')\n")
  proc = run("--config=configs/generator.py")
  assert proc.returncode == 2 and "the local configs/generator.py" in proc.stderr, proc.stderr
  assert not (tmp_path / "w").exists()


def test_config_path_keeps_existing_and_absolute_paths(tmp_path, monkeypatch):
  from emojax import cli
  monkeypatch.chdir(tmp_path)
  assert cli.config_path("configs/generator.py") == os.path.join(cli.PACKAGE_CONFIGS, "generator.py")
  assert cli.config_path("configs/no_such.py") == "configs/no_such.py"  # the loader's error names what was asked
  assert cli.config_path("/abs/generator.py") == "/abs/generator.py"
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "generator.py").write_text("")
  assert cli.config_path("configs/generator.py") == "configs/generator.py"
  assert cli._resolve_config_flags(["prog", "--config", "configs/generator.py:smoke"])[2] == "configs/generator.py:smoke"
  assert cli._resolve_config_flags(["prog", "--config=configs/lvlm.py:feedback"])[1] == (
      f"--config={os.path.join(cli.PACKAGE_CONFIGS, 'lvlm.py')}:feedback")
