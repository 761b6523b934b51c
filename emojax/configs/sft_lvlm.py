"""Supervised fine-tuning of the tiny Qwen2.5-VL emotion judge on EmoShapes (produces the tiny LVLM).

  python -m emojax.train --config=configs/sft_lvlm.py --workdir=/tmp/sft_lvlm          # ~30 min, 2 CPU cores
  python -m emojax.train --config=configs/sft_lvlm.py:smoke --workdir=/tmp/x            # seconds
  python -m emojax.evaluate --config=configs/evaluate.py --config.lvlm=/tmp/sft_lvlm/export

The shipped emojax/assets/lvlm_tiny_sft is this run with --config.data.noise_prob=0, continued for 300
steps with the defaults from its export (--config.model.pretrained; the README has the commands).
`:feedback` teaches a judge the second task (critique and rewrite) with half the rows asking it; the
shipped emojax/assets/lvlm_tiny is that stage and its continuation, then configs/lvlm.py (README).
"""
from emojax import config_utils as cu

PRESETS = {
    "full": "the judge task from a random init",
    "feedback": "the second task (critique and rewrite) taught to the shipped judge",
    "smoke": "a few tiny steps, seconds, for tests",
}


def fields() -> cu.Fields:
  f = cu.run_fields(task="sft_lvlm", total_steps=500, checkpoint_every=250, eval_every=250)
  f("batch_size", 32, cu.Int(1), "global examples per step")
  f("export_dtype", "float32", cu.OneOf(*cu.DTYPES),
    "dtype of the exported params.safetensors (the tiny model has 1.14M params)")
  f("max_prompt_len", 120, cu.Int(1), "prompt tokens, left-padded (the short judge prompt + 16 image tokens is 117)")
  f("target_len", 152, cu.Int(1), "answer tokens incl. end of turn, right-padded (the longest SFT answer is 148)")

  f("model.preset", "tiny", cu.OneOf("tiny"), "qwen_vl.PRESETS entry, randomly initialised when pretrained is empty")
  f("model.pretrained", "", cu.STR, "LVLM export or transformers directory to start from instead of the preset")
  f("model.init_std", 0.02, cu.Positive(),
    "std of the random init of kernels and embeddings (transformers' initializer_range)")
  f("model.remat", "none", cu.OneOf(*cu.REMATS),
    "recompute vision blocks and decoder layers in the backward (cu.REMATS)")
  f("model.scan_layers", False, cu.BOOL,
    "decoder layers as one lax.scan in training forwards (compiled once; LoRA adapters stacked alike)")
  f("model.attention", "auto", cu.OneOf(*cu.ATTENTIONS),
    "the vision blocks' and decoder layers' attention kernel (auto: by backend and length; docs/attention.md)")
  f("model.dtype", "float32", cu.OneOf("float32", "bfloat16"),
    "compute dtype of the forward; params, optimizer and loss stay float32")

  f.include("data", cu.lvlm_data_fields(seed=1))  # training images: EmoShapes world 1, half of them noise-augmented

  f("eval.seed", 12345, cu.Int(0), "held-out EmoShapes world seed")
  f("eval.num_examples", 128, cu.Int(1), "held-out images judged at each eval")
  f("eval.batch_size", 64, cu.Int(1), "images per jitted greedy-decoding batch")
  f("eval.feedback_examples", 64, cu.Int(1),
    "held-out feedback turns answered at each eval (when data.feedback_share > 0)")

  f.include("optim", cu.optimizer_fields(lr=1e-3, grad_clip=1.0, weight_decay=0.0, warmup_steps=50))
  f.include("mesh", cu.mesh_fields())
  f.include("sharding", cu.sharding_fields("qwen_vl"))
  return f


FIELDS = fields()


def get_config(arg=None):
  preset, c = cu.preset_config(arg, FIELDS, PRESETS, "sft_lvlm")
  if preset == "feedback":  # the second task: the shipped judge also learns to critique and rewrite
    c.model.pretrained = "asset:lvlm_tiny"  # the shipped judge
    c.data.seed = 5  # a world neither the judge's SFT (1) nor its GRPO (3) saw
    c.data.feedback_share = 0.5
    c.max_prompt_len, c.target_len = 216, 240  # the longest feedback question (215 with the image) and answer (239)
    c.total_steps, c.checkpoint_every, c.eval_every = 450, 150, 150
    c.optim = cu.optimizer(lr=5e-4, grad_clip=1.0, weight_decay=0.0, warmup_steps=20)
  elif preset == "smoke":
    c.total_steps, c.batch_size, c.checkpoint_every, c.eval_every = 4, 4, 2, 4
    c.eval.num_examples, c.eval.batch_size = 4, 4
    c.optim.warmup_steps = 0
  return c
