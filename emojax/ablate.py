"""python -m emojax.ablate --config=configs/ablation.py --workdir=OUT

For every run seed: trains the generator with GRPO (RF) as the main job does (OUT/seed<S>/rf, resumed if
killed), then evaluates on one held-out grid (the same neutral prompts for every row; within a seed the
same noise for every row, the seed's own noise across seeds) every row of configs/ablation.py:
  base                the shipped generator, one image per (prompt, V, A)
  rf                  the RF generator
  tf                  the base generator with test-time textual feedback (rounds x images per round)
  selection           the base generator, the same rounds x images on the same noise, the prompt kept:
                      picking the best by the judge alone
  rf_tf               both
  emotional_prompts   reference: the base generator given, per target, the emotional prompt of the held-out
                      world's example (of 2000) whose own V-A is nearest the target (content differs)
  oracle_tf           reference: TF with the closed-form oracle rewriter instead of the LVLM
Each row's metrics land in OUT/seed<S>/<row>.json (a rerun skips finished rows); OUT/ablation.json and
OUT/ablation.md hold mean +- std over seeds of colour-judged |dV|, |dA| (the honest measure), their sum's
change against base, LVLM-judged errors, CLIP-Score, PickScore and CLIP-IQA.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from emojax import cli

_CONFIG = config_flags.DEFINE_config_file("config", cli.config_path("configs/ablation.py"),
                                          "ml_collections config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (training runs, per-row metrics, the table).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")

METRICS = ("colour_valence_error", "colour_arousal_error", "valence_error", "arousal_error", "clip_score",
           "pickscore", "clip_iqa")
POOL = 2000  # held-out examples the emotional-prompt row picks from


def train_config(c, seed: int):
  """The generator job's config for one run seed, with the ablation's protocol."""
  from emojax import config_utils
  path = cli.config_path(c.train.config)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"train.config {c.train.config} does not exist (a path, or configs/NAME.py of the package)")
  module = cli.load_config_module(path)
  tc = module.get_config(c.train.preset)
  tc.seed = seed
  if c.train.protocol == "paper":
    tc.data.prompt_field, tc.data.target_mode = "emotional_prompt", "data"
  config_utils.validate(tc, module.FIELDS, what=path)
  return tc


def eval_config(c, seed: int, generator: str, feedback_rounds: int = 0, rewriter: str = "lvlm", rewrite: bool = True):
  """A configs/evaluate_generator.py config for one row."""
  e = cli.load_config_module("configs/evaluate_generator.py").get_config()
  e.generator, e.lvlm, e.preference, e.seed = generator, c.eval.lvlm, c.eval.preference, seed
  e.grid, e.num_steps, e.batch_size = tuple(c.eval.grid), c.eval.num_steps, c.eval.batch_size
  e.data.seed, e.data.num_prompts = c.eval.data_seed, c.eval.num_prompts
  e.feedback.rounds, e.feedback.images_per_round, e.feedback.rewriter = feedback_rounds, c.eval.images_per_round, rewriter
  e.feedback.rewrite = rewrite
  return e


def emotional_prompts(data_seed: int, va: np.ndarray) -> list[str]:
  """Per target, the emotional prompt of the pool example whose own (V, A) is nearest."""
  from emojax.data import emoshapes
  pool = [emoshapes.make_example(data_seed + 1, i) for i in range(POOL)]
  own = np.array([(e["valence"], e["arousal"]) for e in pool], np.float32)
  nearest = np.argmin(((va[:, None, :] - own[None]) ** 2).sum(-1), 1)
  return [pool[j]["emotional_prompt"] for j in nearest]


def run_seed(c, seed: int, workdir: str, judges) -> dict[str, dict]:
  from emojax import trainer
  from emojax.evaluation import grid_eval as generator_run, report
  from emojax.tasks import make_task
  out, seed_dir = {}, os.path.join(workdir, f"seed{seed}")
  os.makedirs(seed_dir, exist_ok=True)
  rf_dir = os.path.join(seed_dir, "rf")
  pending = [r for r in ("rf", "rf_tf") if r in c.rows and not os.path.isfile(os.path.join(seed_dir, f"{r}.json"))]
  if pending and not os.path.isfile(os.path.join(rf_dir, "export", "config.json")):
    tc = train_config(c, seed)
    trainer.run(tc, rf_dir, make_task(tc), progress=_PROGRESS.value)
  rf, k = os.path.join(rf_dir, "export"), c.eval.feedback_rounds
  rows = {"base": ("", 0, "lvlm", True), "rf": (rf, 0, "lvlm", True), "tf": ("", k, "lvlm", True),
          "selection": ("", k, "lvlm", False), "rf_tf": (rf, k, "lvlm", True), "emotional_prompts": ("", 0, "lvlm", True),
          "oracle_tf": ("", k, "oracle", True)}
  for name in c.rows:
    path = os.path.join(seed_dir, f"{name}.json")
    if os.path.isfile(path):
      with open(path) as f:
        out[name] = json.load(f)
      continue
    e = eval_config(c, seed, *rows[name])
    prompts, _ = generator_run.grid_prompts(e)
    rows_prompts, va = report.grid_rows(prompts, e.grid)
    if name == "emotional_prompts":
      rows_prompts = emotional_prompts(c.eval.data_seed, va)
    logging.info("seed %d: evaluating %s", seed, name)
    out[name] = generator_run.run(e, judges, rows_prompts, va, progress=_PROGRESS.value)["summary"]
    with open(path + ".tmp", "w") as f:
      json.dump(out[name], f, indent=1)
    os.replace(path + ".tmp", path)  # a killed run never leaves half a row
  return out


def table(per_seed: dict[int, dict[str, dict]], rows) -> tuple[dict, str]:
  """(JSON table, Markdown table) of mean +- std over seeds."""
  out = {}
  for name in rows:
    vals = {m: [per_seed[s][name][m] for s in per_seed] for m in METRICS}
    total = [v + a for v, a in zip(vals["colour_valence_error"], vals["colour_arousal_error"])]
    base = [per_seed[s]["base"]["colour_valence_error"] + per_seed[s]["base"]["colour_arousal_error"] for s in per_seed]
    vals["colour_sum_change"] = [t / b - 1 for t, b in zip(total, base)]
    out[name] = {m: {"mean": float(np.mean(x)), "std": float(np.std(x)), "per_seed": list(map(float, x))}
                 for m, x in vals.items()}
  head = ["row", "colour dV", "colour dA", "dV+dA vs base", "LVLM dV", "LVLM dA", "CLIP-Score", "PickScore", "CLIP-IQA"]
  keys = ["colour_valence_error", "colour_arousal_error", "colour_sum_change", "valence_error", "arousal_error",
          "clip_score", "pickscore", "clip_iqa"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, m in out.items():
    cells = [f"{100 * m[k]['mean']:+.0f}% ± {100 * m[k]['std']:.0f}" if k == "colour_sum_change"
             else f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}" for k in keys]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return out, "\n".join(lines) + f"\n\nmean ± std over seeds {sorted(per_seed)}\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; config fields are set as --config.field=value")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir=OUT is required")
  c = _CONFIG.value
  cli.check_config(c)
  if "base" not in c.rows:
    raise ValueError("rows must include 'base' (every change is reported against it)")
  for s in c.seeds:
    train_config(c, s)  # a bad training config fails now, not after the first seed's runs
  cli.use_compilation_cache()
  from emojax.evaluation import grid_eval as generator_run
  judges = generator_run.Judges.from_config(eval_config(c, 0, ""))
  per_seed = {s: run_seed(c, s, _WORKDIR.value, judges) for s in c.seeds}
  out, md = table(per_seed, c.rows)
  summary = {"protocol": c.train.protocol, "seeds": list(c.seeds), "rows": out}
  with open(os.path.join(_WORKDIR.value, "ablation.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(_WORKDIR.value, "ablation.md"), "w") as f:
    f.write(md)
  print(md, flush=True)


if __name__ == "__main__":
  cli.run(main, "emojax.ablate")
