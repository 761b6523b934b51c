"""The command lines turn bad input into one actionable line and exit code 2, with nothing written."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _train(*args, workdir):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "emojax.train", f"--workdir={workdir}", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args, message", [
    (["--config=configs/generator.py", "--config.rl.no_such_field=1"], "unknown config field rl.no_such_field"),
    (["--config=configs/generator.py:bogus"], "unknown preset 'bogus'"),
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
  code = ("import sys\nimport configs.generator, configs.lvlm, configs.sft_lvlm, configs.pretrain_generator, "
          "configs.evaluate\nfor n in ('generator', 'lvlm', 'sft_lvlm', 'pretrain_generator'):\n"
          "  getattr(configs, n).get_config()\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax', 'orbax', 'grain') "
          "or m.startswith(('emojax.models', 'emojax.tasks'))))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "[]", proc.stdout
