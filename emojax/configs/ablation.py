"""The ablation base / +RF / +TF / +RF+TF (with emotional-prompt and oracle-rewriter reference rows) over run seeds.

  python -m emojax.ablate --config=configs/ablation.py --workdir=workdirs/ablation
  python -m emojax.ablate --config=configs/ablation.py --workdir=workdirs/ablation_paper --config.train.protocol=paper
  python -m emojax.ablate --config=configs/ablation.py:smoke --workdir=/tmp/x     # a minute, for tests
"""
from emojax import config_utils as cu

ROWS = ("base", "rf", "tf", "selection", "rf_tf", "emotional_prompts", "oracle_tf")
PRESETS = {"default": "every row over three run seeds", "smoke": "one seed, a tiny grid, a minute, for tests"}


def fields() -> cu.Fields:
  f = cu.Fields()
  f("seeds", (0, 1, 2), cu.Ints(0),
    "run seeds: each trains its own RF generator and evaluates every row on its own noise")
  f("rows", ROWS, cu.Names(*ROWS), 'table rows to compute (all need "base"; rf and rf_tf train a generator per seed)')

  f("train.config", "configs/generator.py", cu.STR, "the generator GRPO job (the main job) trained for the RF rows")
  f("train.preset", "default", cu.STR, "its preset")
  f("train.protocol", "current", cu.OneOf("current", "paper"),
    '"current": neutral prompts and uniform V-A targets (the main job); "paper": EmoFeedback²\'s protocol, '
    "emotional prompts with their images' own V-A during training (neutral prompts at test time either way)")

  f.include("eval.lvlm", cu.lvlm_judge_fields())  # the LVLM judge and rewriter
  f.include("eval.preference", cu.preference_model_fields())  # PickScore, CLIP-Score, CLIP-IQA
  f("eval.data_seed", 12345, cu.Int(0),
    "held-out EmoShapes world of the neutral prompts (and the emotional-prompt pool)")
  f("eval.num_prompts", 4, cu.Int(1), "its first n neutral prompts")
  f("eval.grid", (-3.0, -1.5, 0.0, 1.5, 3.0), cu.Floats(-3.0, 3.0), "every prompt at every (V, A) of grid x grid")
  f("eval.num_steps", 20, cu.Int(1, 1000), "ODE steps")
  f("eval.batch_size", 50, cu.Int(1), "images per jitted generation batch")
  f("eval.feedback_rounds", 3, cu.Int(1), "rounds of the TF rows (the paper: 3 x 8)")
  f("eval.images_per_round", 8, cu.Int(1),
    "images per round; the rows without TF make one image per (prompt, V, A)")
  return f


FIELDS = fields()


def get_config(arg=None):
  preset, c = cu.preset_config(arg, FIELDS, PRESETS, "ablation")
  if preset == "smoke":
    c.seeds, c.train.preset = (0,), "smoke"
    c.eval.num_prompts, c.eval.grid, c.eval.num_steps, c.eval.batch_size = 1, (-2.0, 2.0), 2, 4
    c.eval.feedback_rounds, c.eval.images_per_round = 2, 2
  return c
