"""python -m emojax.evaluate --config=configs/evaluate.py --config.lvlm=DIR            (an LVLM judge)
   python -m emojax.evaluate --config=configs/evaluate_generator.py --workdir=OUT     (a generator)

LVLM mode judges EmoShapes examples 0..N-1 of world `data.seed` (greedy, batched, jitted, with the judge
question its model was taught) and prints ONE JSON line: valence_mae, arousal_mae (an unparsable answer
counts as the worst in-range answer, 3 + |target|), their *_parsed versions, category_acc, format_rate,
parse_rate, n, and the predict-the-mean baseline, so a reader sees whether the judge beats copying the
split's mean (rules: emojax.emotion.scoring). DIR is an LVLM export or a transformers Qwen2.5-VL directory.

Generator mode generates every prompt (an EmoShapes split's neutral prompts or `prompts_file`) at every
V-A of `grid` from fixed noise and reads each image with the LVLM judge, the colour judge and the
preference model (emojax.evaluation.report), adds pickscore_min_cell (the lowest PickScore mean of one V-A
target, where a noise column shows) and, for split prompts, pickscore_clean (the split's own clean renders
of the same prompts: the level a generator that stays a picture keeps); writes OUT/metrics.json (also printed as one JSON line),
OUT/per_image.csv, OUT/images/, OUT/va_grid.png and OUT/va_scatter.png. With feedback.rounds > 0 every
(prompt, V, A) runs the test-time feedback loop (emojax.pipelines.feedback_loop; all requests of a round in
one batch) and the metrics are those of the kept images, with per-round errors of the images kept so far
and OUT/feedback_traces.json. OUT is written whole or not at
all; a non-empty OUT that holds no earlier evaluation is refused.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from absl import app, flags, logging
from ml_collections import config_flags

from emojax import cli

_CONFIG = config_flags.DEFINE_config_file("config", cli.config_path("configs/evaluate.py"),
                                          "ml_collections config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory of a generator evaluation.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def evaluate_lvlm(c) -> dict:
  from emojax.data import pipeline
  from emojax.lvlm import judge
  model, _, params, processor = judge.load_lvlm(c.lvlm)
  t0 = time.perf_counter()
  d = c.data
  if d.name == "emoshapes" and not d.dir:
    split = pipeline.labelled_split(d.seed, d.num_examples, d.image_size, d.noise_max_std)
  else:
    from emojax.data import sources
    if d.noise_max_std > 0:
      raise ValueError(f"data.noise_max_std relabels by the EmoShapes colour model, which does not hold for {d.name}; set 0")
    split = sources.as_arrays(sources.TfdsSource(d.name, d.dir, d.split, d.config or str(d.image_size)),
                              d.num_examples)
  out = judge.evaluate(model, params, processor, split, batch_size=min(c.batch_size, c.data.num_examples),
                       max_prompt_len=c.max_prompt_len, max_new_tokens=c.max_new_tokens)
  logging.info("judged %d images in %.1f s", len(split["image"]), time.perf_counter() - t0)
  where = ({"data_seed": d.seed} if d.name == "emoshapes" and not d.dir else
           {"data": f"{d.name}/{d.config or d.image_size}", "split": d.split})
  return {"lvlm": os.path.abspath(c.lvlm), **where, "noise_max_std": d.noise_max_std} | out


def evaluate_generator(c, workdir: str) -> dict:
  from emojax.evaluation import grid_eval, report
  from emojax.io import assets
  from emojax.pipelines import feedback_loop as fl
  from emojax.pipelines import tiny
  out_dir = os.path.abspath(workdir)
  if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, "metrics.json")):
    raise FileExistsError(f"refusing to write the evaluation into {out_dir}: it is not empty and holds no earlier "
                          "evaluation (metrics.json); choose an empty or new --workdir")
  prompts, examples = grid_eval.grid_prompts(c)
  rows_prompts, va = report.grid_rows(prompts, c.grid)
  judges = grid_eval.Judges.from_config(c)
  out = grid_eval.run(c, judges, rows_prompts, va, progress=_PROGRESS.value)
  summary = {"generator": os.path.abspath(tiny.generator_dir(c.generator)), **out["summary"]}
  if examples:  # the clean level: the split's own renders of the same prompts
    clean = np.stack([ex["image"] for ex in examples])
    summary["pickscore_clean"] = float(judges.preference.scorer.pickscore(clean, prompts).mean())

  def write(tmp):
    report.write(tmp, rows_prompts, out["images"], out["rows"], c.grid)
    with open(os.path.join(tmp, "metrics.json"), "w") as f:
      json.dump(summary, f, indent=1)
    if out["traces"] is not None:
      with open(os.path.join(tmp, "feedback_traces.json"), "w") as f:
        json.dump([fl.trace_json(t) for t in out["traces"]], f, indent=1)
  assets.save_directory(out_dir, write, is_export=lambda d: os.path.isfile(os.path.join(d, "metrics.json")))
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; config fields are set as --config.field=value")
  c = _CONFIG.value
  cli.check_config(c)
  if c.mode == "generator" and not _WORKDIR.value:
    raise app.UsageError("a generator evaluation needs --workdir=OUT for its images, CSV and plots")
  cli.use_compilation_cache()
  out = evaluate_lvlm(c) if c.mode == "lvlm" else evaluate_generator(c, _WORKDIR.value)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  cli.run(main, "emojax.evaluate")
