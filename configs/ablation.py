"""The ablation base / +RF / +TF / +RF+TF (with emotional-prompt and oracle-rewriter reference rows) over run seeds.

  python -m emojax.ablate --config=configs/ablation.py --workdir=workdirs/ablation
  python -m emojax.ablate --config=configs/ablation.py --workdir=workdirs/ablation_paper --config.train.protocol=paper
  python -m emojax.ablate --config=configs/ablation.py:smoke --workdir=/tmp/x     # a minute, for tests
"""
import ml_collections

from emojax import config_utils as cu

ROWS = ("base", "rf", "tf", "selection", "rf_tf", "emotional_prompts", "oracle_tf")


def get_config(arg=None):
  arg = cu.parse_arg(arg, preset="default")
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1, 2)  # run seeds: each trains its own RF generator and evaluates every row on its own noise
  c.rows = ROWS  # table rows to compute (all need "base"; rf and rf_tf train a generator per seed)

  c.train = ml_collections.ConfigDict()
  c.train.config = "configs/generator.py"  # the generator GRPO job (the main job) trained for the RF rows
  c.train.preset = "default"  # its preset
  # "current": neutral prompts and uniform V-A targets (the main job); "paper": EmoFeedback²'s protocol,
  # emotional prompts with their images' own V-A during training (neutral prompts at test time either way)
  c.train.protocol = "current"

  c.eval = ml_collections.ConfigDict()
  c.eval.lvlm = cu.lvlm_judge()  # the LVLM judge and rewriter
  c.eval.preference = cu.preference_model()  # PickScore, CLIP-Score, CLIP-IQA
  c.eval.data_seed = 12345  # held-out EmoShapes world of the neutral prompts (and the emotional-prompt pool)
  c.eval.num_prompts = 4  # its first n neutral prompts
  c.eval.grid = (-3.0, -1.5, 0.0, 1.5, 3.0)  # every prompt at every (V, A) of grid x grid
  c.eval.num_steps = 20  # ODE steps
  c.eval.batch_size = 50  # images per jitted generation batch
  c.eval.feedback_rounds = 3  # rounds of the TF rows (the paper: 3 x 8)
  c.eval.images_per_round = 8  # images per round; the rows without TF make one image per (prompt, V, A)

  if arg.preset == "smoke":
    c.seeds, c.train.preset = (0,), "smoke"
    c.eval.num_prompts, c.eval.grid, c.eval.num_steps, c.eval.batch_size = 1, (-2.0, 2.0), 2, 4
    c.eval.feedback_rounds, c.eval.images_per_round = 2, 2
  elif arg.preset != "default":
    raise ValueError(f"unknown preset {arg.preset!r} for ablation; use default or smoke")
  return c


RANGES = {
    "seeds": cu.Ints(0), "rows": cu.Names(*ROWS), "train.config": cu.STR, "train.preset": cu.STR,
    "train.protocol": cu.OneOf("current", "paper"),
    **cu.lvlm_judge_ranges("eval.lvlm"), **cu.preference_model_ranges("eval.preference"),
    "eval.data_seed": cu.Int(0), "eval.num_prompts": cu.Int(1), "eval.grid": cu.Floats(-3.0, 3.0),
    "eval.num_steps": cu.Int(1, 1000), "eval.batch_size": cu.Int(1), "eval.feedback_rounds": cu.Int(1),
    "eval.images_per_round": cu.Int(1),
}
