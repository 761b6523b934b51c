"""The tiny world's preference model (PickScore's objective on procedural pairs; emojax/assets/pickscore_tiny).

  python -m emojax.train --config=configs/pretrain_preference.py --workdir=/tmp/pickscore
  python -m emojax.train --config=configs/pretrain_preference.py:smoke --workdir=/tmp/x   # seconds
"""
from emojax import config_utils as cu

PRESETS = {"full": "the shipped preference model's training", "smoke": "a few tiny steps, seconds, for tests"}


def fields() -> cu.Fields:
  f = cu.run_fields(task="pretrain_preference", total_steps=3000, checkpoint_every=500, eval_every=500)
  f("batch_size", 64, cu.Int(2), "global preference pairs per step")
  f("preference_weight", 1.0, cu.Float(0.0),
    "weight of PickScore's pairwise preference loss beside the contrastive one")
  f("iqa_weight", 0.5, cu.Float(0.0), "weight of the quality antonym-pair loss")
  f("iqa_pair", ("a clean picture", "a noisy picture"), cu.Names(),
    "CLIP-IQA antonyms the text tower learns (positive first)")

  f("model.width", 128, cu.Int(8), "hidden size of both towers")
  f("model.heads", 4, cu.Int(1), "attention heads of both towers")
  f("model.text_layers", 3, cu.Int(1), "text tower layers")
  f("model.vision_layers", 4, cu.Int(1), "vision tower layers")
  f("model.patch_size", 4, cu.Int(1), "vision patch side (32 px images: 64 patches + the class token)")
  f("model.projection_dim", 128, cu.Int(1), "joint embedding size")
  f("model.max_text_length", 64, cu.Int(3, 512),
    "tokens per caption incl. <|startoftext|> / <|endoftext|> (longer ones are cut)")
  f("model.init_std", 0.02, cu.Positive(), "std of the random init of kernels and embeddings")

  f("tokenizer.vocab_size", 512, cu.Int(260), "byte-level BPE vocabulary (256 bytes, 2 specials, merges)")
  f("tokenizer.num_captions", 5000, cu.Int(1), "training-world examples whose two captions train the BPE")

  f("data.seed", 4, cu.Int(0), "EmoShapes world of the training pairs")
  f("data.num_examples", 500_000, cu.Int(1), "pairs in that world")
  f("data.image_size", 32, cu.Int(8, 1024), "image side in pixels")

  f("eval.seed", 54321, cu.Int(0), "held-out world of the evaluation pairs")
  f("eval.per_kind", 100, cu.Int(1), "held-out pairs per fault kind (and pure-noise images)")
  f("eval.batch_size", 100, cu.Int(1), "images per jitted scoring batch")

  f.include("optim", cu.optimizer_fields(lr=1e-3, grad_clip=1.0, weight_decay=1e-4, warmup_steps=200, decay_steps=1000))
  f.include("mesh", cu.mesh_fields())
  f.include("sharding", cu.sharding_fields())
  return f


FIELDS = fields()


def get_config(arg=None):
  preset, c = cu.preset_config(arg, FIELDS, PRESETS, "pretrain_preference")
  if preset == "smoke":
    c.total_steps, c.checkpoint_every, c.eval_every, c.batch_size = 3, 2, 3, 8
    c.model.width, c.model.text_layers, c.model.vision_layers = 32, 1, 1
    c.tokenizer.num_captions, c.eval.per_kind, c.eval.batch_size = 200, 4, 8
    c.optim.warmup_steps, c.optim.decay_steps = 0, 0
  return c
