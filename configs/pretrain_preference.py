"""The tiny world's preference model (PickScore's objective on procedural pairs; emojax/assets/pickscore_tiny).

  python -m emojax.train --config=configs/pretrain_preference.py --workdir=/tmp/pickscore
  python -m emojax.train --config=configs/pretrain_preference.py:smoke --workdir=/tmp/x   # seconds
"""
import ml_collections

from emojax import config_utils as cu


def get_config(arg=None):
  arg = cu.parse_arg(arg, preset="full")
  c = ml_collections.ConfigDict()
  cu.run_fields(c, task="pretrain_preference", total_steps=3000, checkpoint_every=500, eval_every=500)
  c.batch_size = 64  # global preference pairs per step
  c.preference_weight = 1.0  # weight of PickScore's pairwise preference loss beside the contrastive one
  c.iqa_weight = 0.5  # weight of the quality antonym-pair loss
  c.iqa_pair = ("a clean picture", "a noisy picture")  # CLIP-IQA antonyms the text tower learns (positive first)

  c.model = ml_collections.ConfigDict()
  c.model.width = 128  # hidden size of both towers
  c.model.heads = 4  # attention heads of both towers
  c.model.text_layers = 3  # text tower layers
  c.model.vision_layers = 4  # vision tower layers
  c.model.patch_size = 4  # vision patch side (32 px images: 64 patches + the class token)
  c.model.projection_dim = 128  # joint embedding size
  c.model.max_text_length = 64  # tokens per caption incl. <|startoftext|> / <|endoftext|> (longer ones are cut)
  c.model.init_std = 0.02  # std of the random init of kernels and embeddings

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.vocab_size = 512  # byte-level BPE vocabulary (256 bytes, 2 specials, merges)
  c.tokenizer.num_captions = 5000  # training-world examples whose two captions train the BPE

  c.data = ml_collections.ConfigDict()
  c.data.seed = 4  # EmoShapes world of the training pairs
  c.data.num_examples = 500_000  # pairs in that world
  c.data.image_size = 32  # image side in pixels

  c.eval = ml_collections.ConfigDict()
  c.eval.seed = 54321  # held-out world of the evaluation pairs
  c.eval.per_kind = 100  # held-out pairs per fault kind (and pure-noise images)
  c.eval.batch_size = 100  # images per jitted scoring batch

  c.optim = cu.optimizer(lr=1e-3, grad_clip=1.0, weight_decay=1e-4, warmup_steps=200, decay_steps=1000)
  c.mesh = cu.mesh()
  c.sharding = cu.sharding()

  if arg.preset == "smoke":
    c.total_steps, c.checkpoint_every, c.eval_every, c.batch_size = 3, 2, 3, 8
    c.model.width, c.model.text_layers, c.model.vision_layers = 32, 1, 1
    c.tokenizer.num_captions, c.eval.per_kind, c.eval.batch_size = 200, 4, 8
    c.optim.warmup_steps, c.optim.decay_steps = 0, 0
  elif arg.preset != "full":
    raise ValueError(f"unknown preset {arg.preset!r} for pretrain_preference; use full or smoke")
  return c


RANGES = {
    **cu.RUN_RANGES, **cu.OPTIM_RANGES, **cu.MESH_RANGES, **cu.SHARDING_RANGES,
    "task": cu.OneOf("pretrain_preference"), "batch_size": cu.Int(2), "preference_weight": cu.Float(0.0),
    "iqa_weight": cu.Float(0.0), "iqa_pair": cu.Names(),
    "model.width": cu.Int(8), "model.heads": cu.Int(1), "model.text_layers": cu.Int(1), "model.vision_layers": cu.Int(1),
    "model.patch_size": cu.Int(1), "model.projection_dim": cu.Int(1), "model.max_text_length": cu.Int(3, 512),
    "model.init_std": cu.Positive(),
    "tokenizer.vocab_size": cu.Int(260), "tokenizer.num_captions": cu.Int(1),
    "data.seed": cu.Int(0), "data.num_examples": cu.Int(1), "data.image_size": cu.Int(8, 1024),
    "eval.seed": cu.Int(0), "eval.per_kind": cu.Int(1), "eval.batch_size": cu.Int(1),
}
