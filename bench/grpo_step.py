"""The main job's step time, end to end and per stage, on the shipped tiny generator and judge.

  python -m bench.grpo_step                       # configs/generator.py defaults, 12 steps
  python -m bench.grpo_step --steps=12 --override=model.frozen=text --override=rl.grad_accum=1

Runs `emojax.trainer.run` on configs/generator.py (evaluation and intermediate checkpoints off) in
a fresh workdir and reports medians over the steps after `--skip` (compilation): `step_s` (what
metrics.jsonl calls step_time_s) and, where the trainer logs them, its stages `time/rollout_s`
(jitted experience, until its images reach the host), `time/score_s` (host rewards: the LVLM judge)
and `time/update_s` (jitted GRPO update, until its metrics reach the host).
"""
import argparse
import ast
import statistics
import tempfile

from configs import generator as generator_config
from emojax import trainer
from emojax.tasks.generator_grpo import GeneratorGRPO
from bench import common


def _set(config, assignment: str):
  key, value = assignment.split("=", 1)
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  try:
    value = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    value = tuple(value.split(",")) if isinstance(node[leaf], tuple) else value
  node[leaf] = value


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--steps", type=int, default=12, help="GRPO steps run")
  p.add_argument("--skip", type=int, default=2, help="first steps left out of the medians (compilation)")
  p.add_argument("--preset", default="default", help="configs/generator.py preset")
  p.add_argument("--override", action="append", default=[], help="field=value, e.g. rl.grad_accum=1")
  a = p.parse_args()

  config = generator_config.get_config(a.preset)
  config.unlock()
  config.total_steps, config.checkpoint_every, config.eval_every = a.steps, a.steps, 10 ** 6
  config.eval.at_start = False
  config.optim.decay_steps = 0
  for o in a.override:
    _set(config, o)
  with tempfile.TemporaryDirectory() as workdir:
    result = trainer.run(config, workdir, GeneratorGRPO(config), progress=False)
  rows = result.metrics[a.skip:]
  keys = ["step_time_s"] + sorted(k for k in rows[0] if k.startswith("time/"))
  rec = {"bench": "grpo_step", "preset": a.preset, "overrides": a.override, "steps_timed": len(rows),
         "frozen": list(config.model.frozen), "batch": config.rl.prompts_per_step * config.rl.group_size}
  for k in keys:
    vals = [r[k] for r in rows]
    rec[k.replace("step_time_s", "step_s") + "_median"] = statistics.median(vals)
    rec[k.replace("step_time_s", "step_s") + "_min"] = min(vals)
  rec["first_step_s"] = result.metrics[0]["step_time_s"]
  rec.update(common.env_info())
  common.emit(rec)


if __name__ == "__main__":
  main()
