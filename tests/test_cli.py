"""The train CLI turns bad input into one actionable line and exit code 2."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(*args, tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "emojax.train", f"--workdir={tmp_path}", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args, message", [
    (["--config=configs/generator.py", "--config.rl.no_such_field=1"], "unknown config field rl.no_such_field"),
    (["--config=configs/generator.py:bogus"], "unknown preset 'bogus'"),
    (["--config=configs/generator.py", "--config.model.pretrained=/nonexistent/gen"], "/nonexistent/gen does not exist"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
  proc = _train(*args, tmp_path=tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("emojax.train: error:")]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "checkpoints")
