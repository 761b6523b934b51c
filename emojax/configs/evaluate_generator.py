"""A generator's emotion fidelity and picture quality on prompts x a V-A grid (emojax/evaluate.py).

  python -m emojax.evaluate --config=configs/evaluate_generator.py --workdir=/tmp/eval_gen \
      [--config.generator=WORKDIR/export] [--config.prompts_file=prompts.txt]
"""
from emojax import config_utils as cu


def fields() -> cu.Fields:
  f = cu.Fields()
  f("mode", "generator", cu.OneOf("generator"),
    "what emojax.evaluate evaluates: a generator (this file) or an LVLM (configs/evaluate.py)")
  f("generator", "", cu.STR, 'generator directory (a generator job\'s export); "" = the shipped tiny generator')
  f.include("lvlm", cu.lvlm_judge_fields())  # the LVLM judge reading every image
  f.include("preference", cu.preference_model_fields())  # the preference model of pickscore, clip_score and clip_iqa
  f("prompts_file", "", cu.STR,
    'a text file of prompts, one per line; "" = neutral prompts of the EmoShapes split below')
  f("grid", (-3.0, -1.5, 0.0, 1.5, 3.0), cu.Floats(-3.0, 3.0),
    "V and A values; every prompt at every (V, A) (EmotiCrafter's 5 x 5)")
  f("seed", 0, cu.Int(0), "seeds the fixed noise of every image")
  f("batch_size", 25, cu.Int(1), "images per jitted generation batch")
  f("num_steps", 20, cu.Int(1, 1000), "ODE steps")
  f("shift", 3.0, cu.Positive(), "SD3 sigma-schedule shift")
  f("cfg_scale", 1.0, cu.Float(0.0), "classifier-free guidance (1 = off, as the GRPO rollouts)")

  f("feedback.rounds", 0, cu.Int(0), "test-time feedback rounds per (prompt, V, A); 0 = one image each, no loop")
  f("feedback.images_per_round", 8, cu.Int(1), "images per round and request (the paper: 3 rounds x 8)")
  f("feedback.rewrite", True, cu.BOOL, "rewrite the prompt between rounds (false: selection alone, same budget)")
  f("feedback.rewriter", "lvlm", cu.OneOf("lvlm", "oracle"),
    'who rewrites: the LVLM, or the tiny world\'s closed-form "oracle" (a reference)')
  f("feedback.stop_error", 0.0, cu.Float(0.0),
    "stop a request once its judged |dV| + |dA| is below this (0 = never)")

  f("data.seed", 12345, cu.Int(0), "held-out EmoShapes world of the prompts")
  f("data.num_prompts", 4, cu.Int(1), "its first n neutral prompts")
  return f


FIELDS = fields()


def get_config(arg=None):
  if arg:
    raise ValueError(f"configs/evaluate_generator.py takes no preset (got {arg!r}); "
                     "set fields with --config.field=value")
  return FIELDS.config()
