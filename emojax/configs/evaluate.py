"""Greedy judging of an LVLM on an EmoShapes world or a prepared dataset's split (emojax/evaluate.py).

  python -m emojax.evaluate --config=configs/evaluate.py --config.lvlm=/tmp/sft_lvlm/export \
      --config.data.seed=12345 --config.data.num_examples=256
  python -m emojax.evaluate --config=configs/evaluate.py --config.lvlm=DIR --config.data.name=emotic \
      --config.data.dir=DATA_DIR --config.data.config=256 --config.max_prompt_len=...   # cross-domain (no category)
"""
from emojax import config_utils as cu


def fields() -> cu.Fields:
  f = cu.Fields()
  f("mode", "lvlm", cu.OneOf("lvlm"),
    "what emojax.evaluate evaluates: an LVLM judge (this file) or a generator (evaluate_generator.py)")
  f("lvlm", "", cu.STR,
    "LVLM export directory (<workdir>/export of an LVLM job) or a transformers Qwen2.5-VL directory")
  f("batch_size", 64, cu.Int(1), "images per jitted greedy-decoding batch (the last batch is padded)")
  f("max_prompt_len", 120, cu.Int(1), "prompt tokens, left-padded; must hold the judge prompt and the image tokens")
  f("max_new_tokens", 152, cu.Int(1), "answer tokens decoded at most (SFT's target_len: the longest SFT answer fits)")

  f("data.name", "emoshapes", cu.OneOf("emoshapes", "emoset_va", "emotic"),
    '"emoshapes", "emoset_va" or "emotic" (emojax.data.sources)')
  f("data.dir", "", cu.STR, 'TFDS data_dir of a prepared dataset ("" with emoshapes: the procedural world below)')
  f("data.config", "", cu.STR, 'TFDS builder config ("" = data.image_size, e.g. "64")')
  f("data.split", "test", cu.OneOf("train", "validation", "test"), "split of a prepared dataset")
  f("data.seed", 12345, cu.Int(0), "EmoShapes world seed (SFT trains on world 1 and evaluates on 12345)")
  f("data.num_examples", 256, cu.Int(1), "examples 0..n-1 of that world are judged")
  f("data.image_size", 32, cu.Int(8, 4096), "EmoShapes image side in pixels")
  f("data.noise_max_std", 0.0, cu.Fraction(),
    "> 0: every image gets Gaussian pixel noise of std U[0, this] and its labels remeasured")
  return f


FIELDS = fields()


def get_config(arg=None):
  if arg:
    raise ValueError(f"configs/evaluate.py takes no preset (got {arg!r}); set fields with --config.field=value")
  return FIELDS.config()
