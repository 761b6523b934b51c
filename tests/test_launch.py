"""launch/: the local launcher's dry run and argument errors, and a real run of two JAX processes on this machine
(4 simulated CPU devices each, Gloo collectives) through the generator smoke job."""
import json
import os
import subprocess

from conftest import ROOT, cli_env

LOCAL = os.path.join(ROOT, "launch", "local.sh")


def local(*args, timeout=60):
  return subprocess.run(["bash", LOCAL, *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                        timeout=timeout)


def test_local_dry_run_prints_one_command_per_process():
  proc = local("--num_processes=3", "--devices_per_process=2", "--port=23456", "--logdir=/tmp/x", "--dry-run", "--",
               "--config=configs/generator.py:smoke", "--workdir=/tmp/w w")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert line.startswith("JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 "
                           f"EMOJAX_COORDINATOR=localhost:23456 EMOJAX_NUM_PROCESSES=3 EMOJAX_PROCESS_ID={i} "
                           "python -m emojax.train --config=configs/generator.py:smoke --workdir=/tmp/w\\ w ")
    assert line.endswith(f"> /tmp/x/process_{i}.log 2>&1")
  assert "--num_processes=N" in local("--help").stdout


def test_local_bad_arguments_exit_2():
  for args in (("--num_processes=0", "--devices_per_process=2"), ("--devices_per_process=2",), ("--nope",)):
    proc = local(*args, "--dry-run")
    assert proc.returncode == 2 and proc.stderr.startswith("launch/local.sh: error:"), (args, proc.stderr)


def test_two_processes_run_the_generator_smoke_job_and_write_once(tmp_path):
  """2 processes x 4 devices: the job trains, checkpoints (orbax across processes; the RNG key saved as host data)
  and exports, and process 0 alone writes the metrics."""
  workdir = tmp_path / "run"
  proc = local("--num_processes=2", "--devices_per_process=4", "--port=12391", f"--logdir={tmp_path / 'logs'}", "--",
               "--config=configs/generator.py:smoke", f"--workdir={workdir}", "--noprogress", timeout=600)
  logs = "".join((tmp_path / "logs" / f"process_{i}.log").read_text()[-1500:] for i in range(2))
  assert proc.returncode == 0, proc.stderr + logs
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [1, 2, 3]  # once, not once per process
  assert (workdir / "export" / "params.safetensors").is_file() and (workdir / "checkpoints" / "3").is_dir()
