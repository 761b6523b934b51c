"""launch/: the local launcher's dry run and argument errors, and a real run of two JAX processes on this machine
(4 simulated CPU devices each, Gloo collectives) through the generator smoke job."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

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


def test_unreachable_coordinator_is_one_line_within_the_timeout(tmp_path):
  env = {**cli_env(), "EMOJAX_COORDINATOR": "localhost:12397", "EMOJAX_NUM_PROCESSES": "2", "EMOJAX_PROCESS_ID": "1",
         "EMOJAX_INIT_TIMEOUT": "3"}
  t0 = time.time()
  proc = subprocess.run([sys.executable, "-m", "emojax.train", "--config=configs/generator.py:smoke",
                         f"--workdir={tmp_path / 'run'}", "--noprogress"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2 and time.time() - t0 < 60, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "emojax.train: error: coordinator localhost:12397 is not reachable after 3 s")
  assert not (tmp_path / "run").exists()


def launch(tmp_path, name, port, args, env=None):
  """Starts launch/local.sh with 2 processes x 4 devices (returns the Popen; logs in tmp_path/name)."""
  logdir = tmp_path / name
  return subprocess.Popen(["bash", LOCAL, "--num_processes=2", "--devices_per_process=4", f"--port={port}",
                           f"--logdir={logdir}", "--grace=60", "--", *args, "--noprogress"], cwd=ROOT,
                          env={**cli_env(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, tmp_path, name, timeout=600):
  out, err = proc.communicate(timeout=timeout)
  logs = [(tmp_path / name / f"process_{i}.log").read_text() for i in range(2)]
  return proc.returncode, err, logs


def wait_for_lines(path, n, proc, timeout=300):
  t0 = time.time()
  while not (path.is_file() and len(path.read_text().splitlines()) >= n):
    assert proc.poll() is None and time.time() - t0 < timeout, f"no step {n} in {path}"
    time.sleep(0.2)


def export_params(directory):
  from safetensors.numpy import load_file
  return load_file(str(directory / "export" / "params.safetensors"))


def assert_params_close(got, want, atol):
  assert got.keys() == want.keys()
  worst = max(float(np.abs(got[k].astype(np.float64) - want[k]).max()) for k in want)
  assert worst <= atol, worst
  return worst


def one_process_run(config, workdir):
  """The reference: the same job in this test process, one process on the same 8-device mesh."""
  from emojax import trainer
  from emojax.tasks import make_task
  result = trainer.run(config, str(workdir), make_task(config), progress=False)
  assert result.step == config.total_steps
  return export_params(workdir)


# Cross-process all-reduces (Gloo) add the per-process partial sums in another order than one process's 8-device
# reduction, so gradients differ by float32 rounding, and Adam's normalised step turns a rounding difference in a
# near-zero gradient coordinate into a parameter move of up to lr per step. Measured at lr 1e-4: 4e-6 after 4
# uninterrupted generator steps, 1e-7 after 6 with a kill and a preemption (without the per-process data split:
# 6e-4 after 3); LVLM GRPO 1.3e-6 after 2; the generator at lr 1e-3 with one initial noise per group (whose
# small reward spreads scale rounding up in the advantages) 4.9e-5 after 6. The tolerance is a fifth of one
# Adam step.
def multi_process_atol(config):
  return 0.2 * config.optim.learning_rate


STEPS = 6
GENERATOR = ["--config=configs/generator.py:smoke", f"--config.total_steps={STEPS}", "--config.checkpoint_every=1",
             f"--config.eval_every={STEPS}", "--config.rewards.lvlm.mesh=train",  # the judge sharded across processes
             "--config.eval.at_start=false"]  # one evaluation (step 6) is enough here; each costs 10 s a launch


def completed_steps(workdir):
  return max((int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()), default=0)


def test_sigkill_then_sigterm_to_one_process_and_the_relaunches_end_as_one_process(tmp_path):
  """The generator smoke job on 2 processes x 4 devices, its LVLM judge reward sharded over both processes' devices.
  kill -9 of process 1: process 0 exits with one line naming the lost peer and the last complete checkpoint, well
  within the heartbeat timeout. The relaunch resumes there; SIGTERM to process 1 then makes both save the same
  step and exit 0. The last relaunch ends with the parameters of one process on the same 8-device mesh (each
  process read its own half of every global batch). Metrics are written once."""
  from configs import generator
  workdir = tmp_path / "run"
  args = [*GENERATOR, f"--workdir={workdir}"]
  metrics = workdir / "metrics.jsonl"

  proc = launch(tmp_path, "first", 12391, args, env={"EMOJAX_HEARTBEAT_TIMEOUT": "20"})
  wait_for_lines(metrics, 2, proc)
  killed = time.time()
  os.kill(int((tmp_path / "first" / "process_1.pid").read_text()), signal.SIGKILL)
  code, err, logs = finish(proc, tmp_path, "first", timeout=120)
  assert code != 0 and time.time() - killed < 60
  assert "process 1 exited with status 137" in err and "process 0 exited with status" in err
  assert re.search(r"emojax.train: error: a collective across the 2 processes failed .* another process has died",
                   logs[0]) or "another task died" in logs[0], logs[0][-3000:]
  saved = completed_steps(workdir)
  assert saved >= 1

  proc = launch(tmp_path, "second", 12392, args)
  t0 = time.time()  # a new complete checkpoint: both processes are stepping, their SIGTERM handlers in place
  while completed_steps(workdir) <= saved:
    assert proc.poll() is None and time.time() - t0 < 300, "the relaunch made no checkpoint"
    time.sleep(0.2)
  os.kill(int((tmp_path / "second" / "process_1.pid").read_text()), signal.SIGTERM)
  code, err, logs = finish(proc, tmp_path, "second")
  assert code == 0, err + logs[0][-2000:] + logs[1][-2000:]
  assert all(f"resuming from step {saved}" in log for log in logs)
  stopped = [re.search(r"finished at step (\d+) \(preempted=True\)", log) for log in logs]
  assert all(stopped), logs[1][-2000:]
  step = int(stopped[0].group(1))
  assert int(stopped[1].group(1)) == step < STEPS and completed_steps(workdir) == step

  code, err, logs = finish(launch(tmp_path, "third", 12393, args), tmp_path, "third")
  assert code == 0, err + logs[0][-2000:]
  assert all(f"resuming from step {step}" in log for log in logs)
  assert [json.loads(l)["step"] for l in metrics.read_text().splitlines()] == list(range(1, STEPS + 1))
  assert (workdir / "samples" / f"step_{STEPS:06d}.png").is_file()

  config = generator.get_config("smoke")
  config.total_steps, config.checkpoint_every, config.eval_every = STEPS, 100, STEPS
  config.rewards.lvlm.mesh, config.eval.at_start = "train", False
  worst = assert_params_close(export_params(workdir), one_process_run(config, tmp_path / "one"), multi_process_atol(config))
  print("generator: 2 processes (killed, preempted, resumed) vs 1, max |dparam|", worst)


def test_lvlm_grpo_on_two_processes_ends_as_on_one(tmp_path):
  """The LVLM GRPO smoke job (data 2 x tensor 4: tensor-parallel within a process, data across them; full answers,
  so rewards differ within groups and gradients are not zero) on 2 processes equals one process."""
  from configs import lvlm
  args = ["--config=configs/lvlm.py:smoke", "--config.mesh.data=2", "--config.mesh.tensor=4",
          "--config.max_new_tokens=152"]
  code, err, logs = finish(launch(tmp_path, "logs", 12394, [*args, f"--workdir={tmp_path / 'two'}"]), tmp_path, "logs")
  assert code == 0, err + logs[0][-2000:]
  config = lvlm.get_config("smoke")
  config.mesh.data, config.mesh.tensor, config.max_new_tokens = 2, 4, 152
  want = one_process_run(config, tmp_path / "one")
  rows = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
  assert min(r["grad_norm"] for r in rows) > 0
  worst = assert_params_close(export_params(tmp_path / "two"), want, multi_process_atol(config))
  print("lvlm: 2 processes vs 1, max |dparam|", worst)


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
