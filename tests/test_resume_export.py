"""Resume is exact in everything a user sees, and every run keeps what it trained.

Real `python -m emojax.train` processes killed with SIGKILL mid-step and mid-save resume from the last
complete checkpoint and end bit-identical to an uninterrupted run, with metrics.jsonl and TensorBoard
holding each step once; a changed trajectory field is refused on resume; the export (and
`python -m emojax.export` from any checkpoint) is a generator directory GRPO can start from, whose
transformer/ is the MMDiT in the diffusers layout.
"""
import glob
import json
import os
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, cli_env, generator_config
from emojax import checkpoint, metric_log, trainer
from emojax.io import assets
from emojax.models import mmdit
from emojax.pipelines import tiny
from emojax.tasks.generator_grpo import GeneratorGRPO

STEPS = 4


def _train_args(asset, workdir):
  return ["--config=configs/generator.py:smoke", f"--workdir={workdir}", f"--config.model.pretrained={asset}",
          "--config.rewards.weights.lvlm_emotion=0", "--config.rewards.weights.colour_emotion=1",
          f"--config.total_steps={STEPS}", "--config.checkpoint_every=2", "--config.eval_every=1000",
          "--config.eval.at_start=False", "--config.mesh.num_devices=1", "--progress=false"]


# Runs emojax.train in this process after making the save of checkpoint 4 kill the process between
# writing the train state and committing (a SIGKILL in the middle of a save).
_KILL_MID_SAVE = """
import os, runpy, signal, sys
import grain.python as grain
save = grain.PyGrainCheckpointHandler.save
def killing_save(self, directory, *args, **kwargs):
  if "4.orbax-checkpoint-tmp" in str(directory):
    os.kill(os.getpid(), signal.SIGKILL)
  return save(self, directory, *args, **kwargs)
grain.PyGrainCheckpointHandler.save = killing_save
sys.argv = ["emojax.train", *sys.argv[1:]]
runpy.run_module("emojax.train", run_name="__main__")
"""


def _run(args, prefix=("-m", "emojax.train"), **kw):
  return subprocess.run([sys.executable, *prefix, *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                        timeout=600, stdin=subprocess.DEVNULL, **kw)


def _kill_after_row(args, workdir, step):
  """Starts a run and SIGKILLs it as soon as metrics.jsonl has the row of `step` (the next step is running)."""
  proc = subprocess.Popen([sys.executable, "-m", "emojax.train", *args], cwd=ROOT, env=cli_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
  path = os.path.join(workdir, metric_log.JSONL)
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and any(r["step"] == step for r in metric_log.read_jsonl(path)):
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  assert proc.wait(60) == -signal.SIGKILL, "the run ended before it could be killed"


def _events(tb_dir):
  """(tag, step) of every scalar in a TensorBoard directory (TFRecord framing, tensorboardX's Event proto)."""
  from tensorboardX.proto import event_pb2
  out = []
  for path in glob.glob(os.path.join(tb_dir, "events.*")):
    data = open(path, "rb").read()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      out += [(v.tag, event.step) for v in event.summary.value]
  return out


def _export_params(directory):
  return tiny.load_generator(directory)[2]


def _same_rows(a, b):
  drop = lambda r: {k: v for k, v in r.items() if not (k.startswith("time/") or k == "step_time_s")}
  assert [drop(r) for r in a] == [drop(r) for r in b]


@pytest.fixture(scope="module")
def uninterrupted(tiny_asset, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = _run(_train_args(tiny_asset, workdir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_sigkill_mid_step_and_mid_save_resume_bit_identical(tiny_asset, uninterrupted, tmp_path):
  args = _train_args(tiny_asset, tmp_path)
  _kill_after_row(args, tmp_path, 3)  # checkpoint 2 is complete, step 4 is running: killed mid-step
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.all_steps() == [2]
  ckpt.close()
  mid_save = _run(args, prefix=("-c", _KILL_MID_SAVE))  # resumes at 2, is killed while saving 4
  assert mid_save.returncode == -signal.SIGKILL, mid_save.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4.orbax-checkpoint-tmp"]
  assert [r["step"] for r in metric_log.read_jsonl(tmp_path / metric_log.JSONL)] == [1, 2, 3, 4]
  final = _run(args)  # falls back to checkpoint 2 with a warning and finishes
  assert final.returncode == 0, final.stderr[-3000:]
  assert "never completed" in final.stderr and "resuming from step 2" in final.stderr
  want, got = _export_params(uninterrupted / "export"), _export_params(tmp_path / "export")
  jax.tree.map(np.testing.assert_array_equal, got, want)
  rows = metric_log.read_jsonl(tmp_path / metric_log.JSONL)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  _same_rows(rows, metric_log.read_jsonl(uninterrupted / metric_log.JSONL))
  events = _events(tmp_path / metric_log.TENSORBOARD)
  assert len(events) == len(set(events)) and {s for _, s in events} == {1, 2, 3, 4}
  assert ("reward_mean", 3) in events


def test_export_is_a_generator_directory_with_a_diffusers_transformer(tiny_asset, uninterrupted, tmp_path):
  export = uninterrupted / "export"
  gen, gcfg, params = tiny.load_generator(str(export))  # what --config.model.pretrained=<workdir>/export reads
  ckpt = checkpoint.Checkpointer(str(uninterrupted))
  state = ckpt.restore(None, None, STEPS)
  ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(state["params"]))  # float32: exact
  start = tiny.load_generator(tiny_asset)[2]
  assert max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params["emotion"]),
                                                         jax.tree.leaves(start["emotion"]))) > 0  # it trained
  with open(export / "transformer" / "config.json") as f:
    assert json.load(f)["_class_name"] == "SD3Transformer2DModel"
  model, hf_params = mmdit.from_pretrained(str(export / "transformer"))
  assert model.config == gcfg.mmdit
  jax.tree.map(np.testing.assert_array_equal, hf_params, params["mmdit"])
  # python -m emojax.export writes any checkpoint; the mid-run one differs from the final one
  out = tmp_path / "step2"
  proc = _run([f"--workdir={uninterrupted}", "--step=2", f"--outdir={out}"], prefix=("-m", "emojax.export"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  mid = _export_params(str(out))
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(mid["emotion"]), jax.tree.leaves(params["emotion"])))
  proc = _run([f"--workdir={uninterrupted}", f"--outdir={out}"], prefix=("-m", "emojax.export"))  # replaces it
  assert proc.returncode == 0, proc.stderr[-3000:]
  jax.tree.map(np.testing.assert_array_equal, _export_params(str(out)), params)


def test_export_refuses_a_directory_that_is_not_an_export(uninterrupted, tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  proc = _run([f"--workdir={uninterrupted}", f"--outdir={tmp_path}"], prefix=("-m", "emojax.export"))
  errors = [l for l in proc.stderr.splitlines() if l.startswith("emojax.export: error:")]
  assert proc.returncode == 2 and len(errors) == 1 and "not empty and holds no export" in errors[0], proc.stderr[-2000:]
  assert os.listdir(tmp_path) == ["notes.txt"]
  with pytest.raises(FileExistsError, match="refusing to export"):
    assets.save(str(tmp_path), {"w": np.zeros(2)}, {})


@pytest.fixture(scope="module")
def two_steps(tiny_asset, tmp_path_factory):
  """A 2-step in-process run to resume from."""
  workdir = tmp_path_factory.mktemp("two_steps")
  config = generator_config(tiny_asset, **{"total_steps": 2, "mesh.num_devices": 1})
  trainer.run(config, str(workdir), GeneratorGRPO(config), progress=False)
  return workdir


@pytest.mark.parametrize("field, value", [("seed", 1), ("rl.kl_beta", 0.5), ("optim.learning_rate", 0.1),
                                          ("data.seed", 9)])
def test_resume_with_a_changed_trajectory_field_is_refused(tiny_asset, two_steps, field, value):
  config = generator_config(tiny_asset, **{"total_steps": 3, "mesh.num_devices": 1, field: value})
  with pytest.raises(ValueError, match=rf"config field {field} was .* fresh --workdir.*--config.resume_changes={field}"):
    trainer.run(config, str(two_steps), GeneratorGRPO(config), progress=False)
  assert checkpoint.Checkpointer(str(two_steps)).all_steps() == [2]


def test_resume_may_change_length_cadence_and_named_fields(tiny_asset, two_steps):
  config = generator_config(tiny_asset, **{"total_steps": 3, "checkpoint_every": 3, "eval.num_prompts": 2,
                                           "mesh.num_devices": 1, "rl.kl_beta": 0.5, "resume_changes": "rl.kl_beta"})
  result = trainer.run(config, str(two_steps), GeneratorGRPO(config), progress=False)
  assert result.step == 3 and [m["step"] for m in result.metrics] == [3]


def test_checkpoint_holds_the_rng_key_the_run_trains_with(two_steps):
  ckpt = checkpoint.Checkpointer(str(two_steps))
  _, rng = ckpt.restore_with_rng(None, None, 2)
  ckpt.close()
  want = jax.random.split(jax.random.key(0))[1]  # trainer: (init key, step key) = split(key(seed))
  np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(want))


def test_metrics_rewind_drops_later_and_half_written_rows(tmp_path):
  w = metric_log.MetricWriter(str(tmp_path))
  for step in range(1, 6):
    w.write(step, {"loss": 0.1 * step, "bad": float("nan")})
  w.close()
  with open(tmp_path / metric_log.JSONL, "a") as f:
    f.write('{"step": 6, "loss": 0.')  # a kill mid-write
  w = metric_log.MetricWriter(str(tmp_path), start_step=3)
  w.write(4, {"loss": 9.0})
  w.close()
  rows = metric_log.read_jsonl(tmp_path / metric_log.JSONL)
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 0.1), (2, 0.2), (3, 0.30000000000000004), (4, 9.0)]
  assert rows[0]["bad"] == "nan"
  assert sorted(_events(tmp_path / metric_log.TENSORBOARD)) == [("loss", s) for s in (1, 2, 3, 4)]
