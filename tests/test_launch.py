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


def script(name, *args):
  return subprocess.run(["bash", os.path.join(ROOT, "launch", name), *args], cwd=ROOT, env=cli_env(),
                        capture_output=True, text=True, timeout=60)


def test_slurm_dry_run_prints_the_srun_line():
  proc = script("slurm.sbatch", "--dry-run", "--", "--config=configs/generator.py:sd35m", "--workdir=/shared/run 1")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["srun", "--kill-on-bad-exit=1", "python", "-m", "emojax.train",
                                 "--config=configs/generator.py:sd35m", "--workdir=/shared/run\\", "1"]
  assert "sbatch launch/slurm.sbatch" in script("slurm.sbatch", "--help").stdout
  assert script("slurm.sbatch", "--dry-run").returncode == 2


def test_tpu_vm_dry_runs_print_each_gcloud_command():
  base = ("--name=emo", "--zone=us-east5-a", "--accelerator=v5p-16", "--dry-run")
  want = {
      "create": "gcloud compute tpus tpu-vm create emo --zone=us-east5-a --accelerator-type=v5p-16 "
                "--version=tpu-ubuntu2204-base",
      "install": "gcloud compute tpus tpu-vm ssh emo --zone=us-east5-a --worker=all --command='pip install -e ~/emojax'",
      "logs": "gcloud compute tpus tpu-vm ssh emo --zone=us-east5-a --worker=0 --command='tail -f ~/emojax.log'",
      "delete": "gcloud compute tpus tpu-vm delete emo --zone=us-east5-a --quiet",
  }
  for action, line in want.items():
    proc = script("tpu_vm.sh", action, *base)
    assert proc.returncode == 0 and proc.stdout.strip() == line, (action, proc.stdout, proc.stderr)
  copy = script("tpu_vm.sh", "copy", *base).stdout
  assert copy.startswith(f"gcloud compute tpus tpu-vm scp --recurse {ROOT} emo:~/emojax") and "--worker=all" in copy
  run = script("tpu_vm.sh", "run", *base, "--", "--config=configs/lvlm.py:qwen25vl_7b", "--workdir=gs://b/r").stdout
  assert "--worker=all --command='cd ~/emojax && nohup python -m emojax.train --config=configs/lvlm.py:qwen25vl_7b " \
         "--workdir=gs://b/r > ~/emojax.log 2>&1 &'" in run
  for bad in (("run", *base), ("create", "--zone=z", "--dry-run"), ("explode", *base)):
    proc = script("tpu_vm.sh", *bad)
    assert proc.returncode == 2 and proc.stderr.startswith("launch/tpu_vm.sh: error:"), bad
  assert "ACTION: create | copy" in script("tpu_vm.sh", "--help").stdout
