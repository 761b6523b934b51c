"""Greedy judging of an LVLM on an EmoShapes world or a prepared dataset's split (emojax/evaluate.py).

  python -m emojax.evaluate --config=configs/evaluate.py --config.lvlm=/tmp/sft_lvlm/export \
      --config.data.seed=12345 --config.data.num_examples=256
  python -m emojax.evaluate --config=configs/evaluate.py --config.lvlm=DIR --config.data.name=emotic \
      --config.data.dir=DATA_DIR --config.data.config=256 --config.max_prompt_len=...   # cross-domain (no category)
"""
import ml_collections

from emojax import config_utils as cu


def get_config(arg=None):
  if arg:
    raise ValueError(f"configs/evaluate.py takes no preset (got {arg!r}); set fields with --config.field=value")
  c = ml_collections.ConfigDict()
  c.mode = "lvlm"  # what emojax.evaluate evaluates: an LVLM judge (this file) or a generator (evaluate_generator.py)
  c.lvlm = ""  # LVLM export directory (<workdir>/export of an LVLM job) or a transformers Qwen2.5-VL directory
  c.batch_size = 64  # images per jitted greedy-decoding batch (the last batch is padded)
  c.max_prompt_len = 120  # prompt tokens, left-padded; must hold the judge prompt and the image tokens
  c.max_new_tokens = 152  # answer tokens decoded at most (SFT's target_len: the longest SFT answer fits)

  c.data = ml_collections.ConfigDict()
  c.data.name = "emoshapes"  # "emoshapes", "emoset_va" or "emotic" (emojax.data.sources)
  c.data.dir = ""  # TFDS data_dir of a prepared dataset ("" with emoshapes: the procedural world below)
  c.data.config = ""  # TFDS builder config ("" = data.image_size, e.g. "64")
  c.data.split = "test"  # split of a prepared dataset
  c.data.seed = 12345  # EmoShapes world seed (SFT trains on world 1 and evaluates on 12345)
  c.data.num_examples = 256  # examples 0..n-1 of that world are judged
  c.data.image_size = 32  # EmoShapes image side in pixels
  c.data.noise_max_std = 0.0  # > 0: every image gets Gaussian pixel noise of std U[0, this] and its labels remeasured
  return c


RANGES = {
    "mode": cu.OneOf("lvlm"), "lvlm": cu.STR, "batch_size": cu.Int(1), "max_prompt_len": cu.Int(1), "max_new_tokens": cu.Int(1),
    "data.name": cu.OneOf("emoshapes", "emoset_va", "emotic"), "data.dir": cu.STR, "data.config": cu.STR,
    "data.split": cu.OneOf("train", "validation", "test"),
    "data.seed": cu.Int(0), "data.num_examples": cu.Int(1), "data.image_size": cu.Int(8, 4096),
    "data.noise_max_std": cu.Fraction(),
}
