"""python -m emojax.evaluate --config=configs/evaluate.py --config.lvlm=DIR
    [--config.data.seed=S --config.data.num_examples=N]

Judges EmoShapes examples 0..N-1 of world S with the LVLM in DIR (greedy, batched, jitted) and
prints ONE JSON line on stdout: valence_mae, arousal_mae (an unparsable answer counts as the
worst in-range answer, 3 + |target|), valence_mae_parsed, arousal_mae_parsed (parsed answers
only), category_acc, format_rate, parse_rate, n, and the predict-the-mean baseline
(baseline_valence_mae, baseline_arousal_mae, baseline_category_acc and its constants), so a
reader sees whether the judge beats copying the split's mean. Scoring rules: emojax.tasks.lvlm_common.

DIR is an LVLM export (config.json + params.safetensors: <workdir>/export, written when an SFT
run finishes) or a transformers Qwen2.5-VL directory. An orbax checkpoint workdir is not read:
finish the run (or resume it to total_steps) so it exports.
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/evaluate.py", "ml_collections config file (path[:arg]).",
                                          lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; config fields are set as --config.field=value")
  c = _CONFIG.value
  import jax
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "EMOJAX_COMPILATION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "emojax", "jax")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
  from emojax.tasks import lvlm_common as common
  model, _, params, processor = common.load_lvlm(c.lvlm)
  if c.data.num_examples < 1 or c.batch_size < 1:
    raise ValueError(f"data.num_examples={c.data.num_examples} and batch_size={c.batch_size} must be positive")
  t0 = time.perf_counter()
  split = common.eval_split(c.data.seed, c.data.num_examples, c.data.image_size, c.data.noise_max_std)
  out = common.evaluate(model, params, processor, split, batch_size=min(c.batch_size, c.data.num_examples),
                        max_prompt_len=c.max_prompt_len, max_new_tokens=c.max_new_tokens, short=c.short_prompt)
  logging.info("judged %d images in %.1f s", c.data.num_examples, time.perf_counter() - t0)
  meta = {"lvlm": os.path.abspath(c.lvlm), "data_seed": c.data.seed, "noise_max_std": c.data.noise_max_std}
  print(json.dumps(meta | out), flush=True)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
    raise app.UsageError(f"bad flag or config: {lines[-1] if lines else type(e).__name__}") from None


def cli():
  try:
    app.run(main, flags_parser=_parse_flags)
  except (ValueError, FileNotFoundError, app.UsageError) as e:  # bad input: one actionable line
    print(f"emojax.evaluate: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  cli()
