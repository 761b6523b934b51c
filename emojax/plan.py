"""python -m emojax.plan --config=configs/generator.py:sd35m --mesh=data=1,fsdp=8,tensor=1 [--device_memory=95GiB]
   python -m emojax.plan --config=configs/lvlm.py:qwen25vl_7b --mesh=data=1,fsdp=8,tensor=1

Will a job fit a mesh? From weight shapes alone (no weights: model configs come from model.pretrained /
rewards.lvlm.path when they name a directory, else from the preset architecture --architecture), the programs
the job runs are lowered and compiled ahead of time for the mesh on simulated CPU devices, and each prints one
JSON line: per-device bytes of the parameters, the LoRA adapters, the optimizer state, the constants (the KL
reference, the VAE) and the batch, from their shardings; XLA's figures (memory_analysis: arguments, outputs,
aliased donations, temporaries); their total against --device_memory and whether it fits; and the analytic
parameter bytes (global and per device) beside XLA's argument figure.

Programs. generator_grpo: rollout (the SDE sampler and the decode), update (the train step), judge (the LVLM
reward's greedy answers to a batch of rollout images, its weights sharded over the same mesh by the Qwen rules).
lvlm_grpo: rollout (G sampled answers per image with the KV cache), update.

XLA's CPU compiler schedules and fuses as a CPU does; a TPU's or GPU's temporaries differ (the parameter,
optimizer and constant figures do not), so read temp_bytes as an order of magnitude.
"""
from __future__ import annotations

import json
import math
import re
import sys

from absl import flags
from ml_collections import config_flags

from emojax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (path[:arg]).",
                                          lock_config=True)
_MESH = flags.DEFINE_string("mesh", "data=1,fsdp=8,tensor=1", "Mesh axes and sizes, e.g. data=2,fsdp=4,tensor=1.")
_MEMORY = flags.DEFINE_string("device_memory", "95GiB", "Memory of one device (e.g. 95GiB for a TPU v5p, 80GB).")
_ARCH = flags.DEFINE_string("architecture", "", "Model preset when the config names no directory "
                            "(default: sd35m for an SD3 generator, qwen25vl_7b for an LVLM and its judge).")
_PROGRAMS = flags.DEFINE_list("programs", [], "Programs to plan (default: all of the job's).")

AXES = ("data", "fsdp", "tensor")
UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
         "TIB": 2**40}


def parse_mesh(text: str) -> dict[str, int]:
  """"data=1,fsdp=8,tensor=1" -> {"data": 1, "fsdp": 8, "tensor": 1}; missing axes are 1."""
  mesh = dict.fromkeys(AXES, 1)
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, size = part.partition("=")
    if name not in AXES:
      raise ValueError(f"--mesh: unknown axis {name!r}; the axes are {', '.join(AXES)} (e.g. data=1,fsdp=8,tensor=1)")
    if not size.isdigit() or int(size) < 1:
      raise ValueError(f"--mesh: {name}={size!r} must be a positive integer")
    mesh[name] = int(size)
  return mesh


def parse_bytes(text: str) -> int:
  m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]i?B|B)?\s*", text, re.IGNORECASE)
  if not m:
    raise ValueError(f"--device_memory={text!r}: expected a size such as 95GiB, 80GB or 17179869184")
  return int(float(m.group(1)) * UNITS[(m.group(2) or "B").upper()])


def main(argv):
  config = cli.job_config(argv, _CONFIG.value, "--config=configs/<job>.py[:preset] is required")
  mesh = parse_mesh(_MESH.value)
  memory = parse_bytes(_MEMORY.value)
  cli.simulate_devices(math.prod(mesh.values()))
  cli.use_compilation_cache()
  from emojax import planning
  with config.unlocked():
    config.mesh.num_devices = math.prod(mesh.values())
    for k, v in mesh.items():
      config.mesh[k] = v
  for row in planning.plan(config, device_memory=memory, architecture=_ARCH.value, programs=_PROGRAMS.value):
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  sys.exit(cli.run(main, "emojax.plan"))
