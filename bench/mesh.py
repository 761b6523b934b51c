"""Mesh-sharding experiments: one job on several meshes of simulated CPU devices, the table a user reads before
booking a pod.

  python -m bench.mesh --config=configs/generator.py --meshes=8x1x1,4x2x1,2x2x2,1x8x1,1x4x2
  python -m bench.mesh --config=configs/lvlm.py:smoke --meshes=8x1x1,2x1x4 --set=max_new_tokens=152

Meshes are data x fsdp x tensor. For each: the job's programs compiled ahead of time (emojax.plan: per-device
bytes of the largest program, XLA's figure, and the compile time of each), then `steps` training steps of the job
itself through the trainer (its real data, weights and host stages) timed per step, the first (compilation) apart.
One JSON line per mesh, then a markdown table. The devices are simulated on this CPU, so the step times say how
much a layout costs in collectives and replication here, not what a pod will run at; no PyTorch counterpart runs
in this bench (there is no PyTorch mesh of simulated CPU devices to compare with).
"""
import argparse
import importlib.util
import json
import math
import statistics
import sys
import tempfile

AXES = ("data", "fsdp", "tensor")


def parse_meshes(text: str) -> list[dict]:
  meshes = []
  for item in filter(None, text.split(",")):
    sizes = item.lower().split("x")
    if len(sizes) != 3 or not all(s.isdigit() and int(s) > 0 for s in sizes):
      raise SystemExit(f"bench.mesh: error: mesh {item!r} is not DATAxFSDPxTENSOR, e.g. 4x2x1")
    meshes.append(dict(zip(AXES, map(int, sizes))))
  if not meshes:
    raise SystemExit("bench.mesh: error: --meshes is empty")
  return meshes


def load_config(spec: str, overrides: list[str]):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_bench_mesh_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for item in overrides:
    key, _, value = item.partition("=")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    old = node[leaf]
    node[leaf] = (value.lower() == "true") if isinstance(old, bool) else type(old)(value)
  return config


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True, help="configs/<job>.py[:preset] (generator_grpo or lvlm_grpo)")
  p.add_argument("--meshes", default="8x1x1,4x2x1,2x2x2,1x8x1", help="comma list of DATAxFSDPxTENSOR")
  p.add_argument("--steps", type=int, default=3, help="training steps per mesh (the first compiles)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override (repeatable)")
  args = p.parse_args(argv)
  meshes = parse_meshes(args.meshes)
  devices = max(math.prod(m.values()) for m in meshes)
  from emojax import cli
  cli.simulate_devices(devices)
  from emojax import plan, trainer
  from emojax.tasks import make_task

  rows = []
  for mesh in meshes:
    config = load_config(args.config, args.set)
    with config.unlocked():
      config.mesh.num_devices = math.prod(mesh.values())
      config.mesh.update(mesh)
      config.total_steps, config.checkpoint_every, config.eval_every = args.steps, 10**6, 10**6
      if "eval" in config and "at_start" in config.eval:
        config.eval.at_start = False
    plans = plan.plan(config.copy_and_resolve_references(), device_memory=2**50)
    with tempfile.TemporaryDirectory() as workdir:
      result = trainer.run(config, workdir, make_task(config), progress=False)
    times = [m["step_time_s"] for m in result.metrics]
    row = {"mesh": "x".join(str(mesh[a]) for a in AXES), **mesh,
           "peak_bytes_per_device": max(r["total_bytes"] for r in plans),
           "peak_program": max(plans, key=lambda r: r["total_bytes"])["program"],
           "params_bytes_per_device": plans[0]["params_bytes"] + plans[0]["lora_bytes"],
           "compile_s": {r["program"]: r["compile_s"] for r in plans},
           "first_step_s": round(times[0], 2),
           "step_s": round(statistics.median(times[1:]), 3) if len(times) > 1 else None}
    rows.append(row)
    print(json.dumps(row), flush=True)
  print("\n| mesh (data x fsdp x tensor) | peak MB / device (program) | params MB / device | compile s | "
        "first step s | step s |\n|---|---|---|---|---|---|")
  for r in rows:
    compile_s = ", ".join(f"{k} {v}" for k, v in r["compile_s"].items())
    print(f"| {r['mesh']} | {r['peak_bytes_per_device'] / 1e6:.0f} ({r['peak_program']}) | "
          f"{r['params_bytes_per_device'] / 1e6:.1f} | {compile_s} | {r['first_step_s']} | {r['step_s']} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
