"""python -m emojax.evaluate --config=configs/evaluate.py --config.lvlm=DIR
    [--config.data.seed=S --config.data.num_examples=N]

Judges EmoShapes examples 0..N-1 of world S with the LVLM in DIR (greedy, batched, jitted, with the
judge question its model was taught) and prints ONE JSON line on stdout: valence_mae, arousal_mae
(an unparsable answer counts as the worst in-range answer, 3 + |target|), valence_mae_parsed,
arousal_mae_parsed (parsed answers only), category_acc, format_rate, parse_rate, n, and the
predict-the-mean baseline (baseline_valence_mae, baseline_arousal_mae, baseline_category_acc and its
constants), so a reader sees whether the judge beats copying the split's mean. Scoring rules:
emojax.emotion.scoring.

DIR is an LVLM export (config.json + params.safetensors: <workdir>/export of an LVLM job) or a
transformers Qwen2.5-VL directory. A workdir's checkpoint is exported with `python -m emojax.export`.
"""
from __future__ import annotations

import json
import os
import time

from absl import app, logging
from ml_collections import config_flags

from emojax import cli

_CONFIG = config_flags.DEFINE_config_file("config", "configs/evaluate.py", "ml_collections config file (path[:arg]).",
                                          lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; config fields are set as --config.field=value")
  c = _CONFIG.value
  cli.check_config(c)
  cli.use_compilation_cache()
  from emojax.data import pipeline
  from emojax.lvlm import judge
  model, _, params, processor = judge.load_lvlm(c.lvlm)
  t0 = time.perf_counter()
  split = pipeline.labelled_split(c.data.seed, c.data.num_examples, c.data.image_size, c.data.noise_max_std)
  out = judge.evaluate(model, params, processor, split, batch_size=min(c.batch_size, c.data.num_examples),
                       max_prompt_len=c.max_prompt_len, max_new_tokens=c.max_new_tokens)
  logging.info("judged %d images in %.1f s", c.data.num_examples, time.perf_counter() - t0)
  meta = {"lvlm": os.path.abspath(c.lvlm), "data_seed": c.data.seed, "noise_max_std": c.data.noise_max_std}
  print(json.dumps(meta | out), flush=True)


if __name__ == "__main__":
  cli.run(main, "emojax.evaluate")
