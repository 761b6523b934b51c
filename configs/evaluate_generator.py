"""A generator's emotion fidelity and picture quality on prompts x a V-A grid (emojax/evaluate.py).

  python -m emojax.evaluate --config=configs/evaluate_generator.py --workdir=/tmp/eval_gen \
      [--config.generator=WORKDIR/export] [--config.prompts_file=prompts.txt]
"""
import ml_collections

from emojax import config_utils as cu


def get_config(arg=None):
  if arg:
    raise ValueError(f"configs/evaluate_generator.py takes no preset (got {arg!r}); set fields with --config.field=value")
  c = ml_collections.ConfigDict()
  c.mode = "generator"  # what emojax.evaluate evaluates: a generator (this file) or an LVLM (configs/evaluate.py)
  c.generator = ""  # generator directory (a generator job's export); "" = the shipped tiny generator
  c.lvlm = cu.lvlm_judge()  # the LVLM judge reading every image
  c.preference = cu.preference_model()  # the preference model of pickscore, clip_score and clip_iqa
  c.prompts_file = ""  # a text file of prompts, one per line; "" = neutral prompts of the EmoShapes split below
  c.grid = (-3.0, -1.5, 0.0, 1.5, 3.0)  # V and A values; every prompt at every (V, A) (EmotiCrafter's 5 x 5)
  c.seed = 0  # seeds the fixed noise of every image
  c.batch_size = 25  # images per jitted generation batch
  c.num_steps = 20  # ODE steps
  c.shift = 3.0  # SD3 sigma-schedule shift
  c.cfg_scale = 1.0  # classifier-free guidance (1 = off, as the GRPO rollouts)

  c.feedback = ml_collections.ConfigDict()
  c.feedback.rounds = 0  # test-time feedback rounds per (prompt, V, A); 0 = one image each, no loop
  c.feedback.images_per_round = 8  # images per round and request (the paper: 3 rounds x 8)
  c.feedback.rewrite = True  # rewrite the prompt between rounds (false: selection alone, same budget)
  c.feedback.rewriter = "lvlm"  # who rewrites: the LVLM, or the tiny world's closed-form "oracle" (a reference)
  c.feedback.stop_error = 0.0  # stop a request once its judged |dV| + |dA| is below this (0 = never)

  c.data = ml_collections.ConfigDict()
  c.data.seed = 12345  # held-out EmoShapes world of the prompts
  c.data.num_prompts = 4  # its first n neutral prompts
  return c


RANGES = {
    **cu.lvlm_judge_ranges("lvlm"), **cu.preference_model_ranges("preference"),
    "mode": cu.OneOf("generator"), "generator": cu.STR, "prompts_file": cu.STR, "grid": cu.Floats(-3.0, 3.0), "seed": cu.Int(0),
    "batch_size": cu.Int(1), "num_steps": cu.Int(1, 1000), "shift": cu.Positive(), "cfg_scale": cu.Float(0.0),
    "data.seed": cu.Int(0), "data.num_prompts": cu.Int(1),
    "feedback.rounds": cu.Int(0), "feedback.images_per_round": cu.Int(1), "feedback.rewrite": cu.BOOL,
    "feedback.rewriter": cu.OneOf("lvlm", "oracle"), "feedback.stop_error": cu.Float(0.0),
}
