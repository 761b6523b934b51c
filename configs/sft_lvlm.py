"""Supervised fine-tuning of the tiny Qwen2.5-VL emotion judge on EmoShapes (produces the tiny LVLM).

  python -m emojax.train --config=configs/sft_lvlm.py --workdir=/tmp/sft_lvlm          # ~30 min, 2 CPU cores
  python -m emojax.train --config=configs/sft_lvlm.py:smoke --workdir=/tmp/x            # seconds
  python -m emojax.evaluate --config=configs/evaluate.py --config.lvlm=/tmp/sft_lvlm/export

The shipped emojax/assets/lvlm_tiny_sft is this run with --config.data.noise_prob=0, continued for 300
steps with the defaults from its export (--config.model.pretrained; the README has the commands).
`:feedback` teaches a judge the second task (critique and rewrite) with half the rows asking it; the
shipped emojax/assets/lvlm_tiny is that stage and its continuation, then configs/lvlm.py (README).
"""
import ml_collections

from emojax import config_utils as cu


def get_config(arg=None):
  arg = cu.parse_arg(arg, preset="full")
  c = ml_collections.ConfigDict()
  # 500 optimizer steps: about 30 min at 2.8-3.7 s each on a shared 2-core CPU
  cu.run_fields(c, task="sft_lvlm", total_steps=500, checkpoint_every=250, eval_every=250)
  c.batch_size = 32  # global examples per step
  c.export_dtype = "float32"  # dtype of the exported params.safetensors (the tiny model has 1.14M params)
  c.max_prompt_len = 120  # prompt tokens, left-padded (the short judge prompt + 16 image tokens is 117)
  c.target_len = 152  # answer tokens incl. end of turn, right-padded (the longest SFT answer is 148)

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"  # qwen_vl.PRESETS entry, randomly initialised when pretrained is empty
  c.model.pretrained = ""  # LVLM export or transformers directory to start from instead of the preset
  c.model.init_std = 0.02  # std of the random init of kernels and embeddings (transformers' initializer_range)
  c.model.remat = "none"  # recompute vision blocks and decoder layers in the backward (cu.REMATS)
  c.model.scan_layers = False  # decoder layers as one lax.scan in training forwards (compiled once; not with LoRA)
  c.model.dtype = "float32"  # compute dtype of the forward; params, optimizer and loss stay float32

  c.data = cu.lvlm_data(seed=1)  # training images: EmoShapes world 1, half of them noise-augmented

  c.eval = ml_collections.ConfigDict()
  c.eval.seed = 12345  # held-out EmoShapes world seed
  c.eval.num_examples = 128  # held-out images judged at each eval
  c.eval.batch_size = 64  # images per jitted greedy-decoding batch
  c.eval.feedback_examples = 64  # held-out feedback turns answered at each eval (when data.feedback_share > 0)

  c.optim = cu.optimizer(lr=1e-3, grad_clip=1.0, weight_decay=0.0, warmup_steps=50)
  c.mesh = cu.mesh()
  c.sharding = cu.sharding(cu.QWEN_VL_PARAM_RULES)

  if arg.preset == "feedback":  # the second task: the shipped judge also learns to critique and rewrite
    c.model.pretrained = "asset:lvlm_tiny"  # the shipped judge (the README gives the chain that made today's asset)
    c.data.seed = 5  # a world neither the judge's SFT (1) nor its GRPO (3) saw
    c.data.feedback_share = 0.5
    c.max_prompt_len, c.target_len = 216, 240  # the longest feedback question (215 with the image) and answer (239)
    c.total_steps, c.checkpoint_every, c.eval_every = 450, 150, 150
    c.optim = cu.optimizer(lr=5e-4, grad_clip=1.0, weight_decay=0.0, warmup_steps=20)
  elif arg.preset == "smoke":
    c.total_steps, c.batch_size, c.checkpoint_every, c.eval_every = 4, 4, 2, 4
    c.eval.num_examples, c.eval.batch_size = 4, 4
    c.optim.warmup_steps = 0
  elif arg.preset != "full":
    raise ValueError(f"unknown preset {arg.preset!r} for sft_lvlm; use full, feedback or smoke")
  return c


RANGES = {
    **cu.RUN_RANGES, **cu.OPTIM_RANGES, **cu.MESH_RANGES, **cu.SHARDING_RANGES, **cu.LVLM_DATA_RANGES,
    "task": cu.OneOf("sft_lvlm"), "batch_size": cu.Int(1), "export_dtype": cu.OneOf(*cu.DTYPES),
    "max_prompt_len": cu.Int(1), "target_len": cu.Int(1),
    "model.preset": cu.OneOf("tiny"), "model.pretrained": cu.STR, "model.init_std": cu.Positive(),
    "model.remat": cu.OneOf(*cu.REMATS), "model.dtype": cu.OneOf("float32", "bfloat16"), "model.scan_layers": cu.BOOL,
    "eval.seed": cu.Int(0), "eval.num_examples": cu.Int(1), "eval.batch_size": cu.Int(1),
    "eval.feedback_examples": cu.Int(1),
}
