"""Flow-matching pretraining of the tiny EmoShapes generator (produces emojax/assets/generator_tiny).

The shipped asset is one workdir, run and then resumed three times with overrides:

  python -m emojax.train --config=configs/pretrain_generator.py --workdir=/tmp/pretrain_gen
  # low-sigma detail: half the sigmas uniform
  python -m emojax.train --config=configs/pretrain_generator.py --workdir=/tmp/pretrain_gen \\
      --config.total_steps=3600 --config.uniform_sigma_frac=0.5 --config.resume_changes=uniform_sigma_frac
  # layout: shape pixels weighted, pooled text dropped half the time so the token context must say where
  python -m emojax.train --config=configs/pretrain_generator.py --workdir=/tmp/pretrain_gen \\
      --config.total_steps=6400 --config.shape_weight=10 --config.uniform_sigma_frac=0.25 \\
      --config.caption.p_drop_pooled=0.5 --config.optim.learning_rate=1e-3 --config.optim.decay_steps=600 \\
      --config.resume_changes=shape_weight,uniform_sigma_frac,caption.p_drop_pooled,optim.learning_rate
  # shape kinds: the background near each shape weighted like it, so outlines pay and blocks do not;
  # the raw weights are exported (the EMA still draws blocks ~1000 steps after the switch)
  python -m emojax.train --config=configs/pretrain_generator.py --workdir=/tmp/pretrain_gen \\
      --config.total_steps=10000 --config.shape_weight=5 --config.shape_margin=2 --config.uniform_sigma_frac=0.25 \\
      --config.caption.p_drop_pooled=0.5 --config.optim.learning_rate=1e-3 --config.optim.decay_steps=600 \\
      --config.export_weights=params --config.resume_changes=shape_weight,shape_margin
  # the supervised V-A stage (a new workdir): text encoder and MMDiT frozen, the V-A embedding learns each
  # neutral caption's exact (V, A); 1500 steps, about 17 minutes; its export is the shipped asset
  python -m emojax.train --config=configs/pretrain_generator.py:va --workdir=/tmp/pretrain_va \\
      --config.model.init_from=/tmp/pretrain_gen/export
  python -m emojax.train --config=configs/pretrain_generator.py:smoke --workdir=/tmp/x   # seconds
"""
import ml_collections

from emojax import config_utils as cu


def get_config(arg=None):
  arg = cu.parse_arg(arg, preset="full")
  c = ml_collections.ConfigDict()
  # 3000 optimizer steps: about 75 minutes on 2 free CPU cores
  cu.run_fields(c, task="pretrain_generator", total_steps=3000, checkpoint_every=200, eval_every=400)
  c.batch_size = 64  # global images per step
  c.ema_decay = 0.999  # EMA decay cap (warmed up as (1+t)/(10+t))
  c.export_weights = "ema"  # weights evaluated and exported: "ema", or "params" (raw; sharper after the lr decay)
  c.export_dtype = "float16"  # dtype of the exported params.safetensors
  c.logit_mean = 1.0986  # SD3 logit-normal sigma density: mean; ln(3) = the sampling schedule's shift 3
  c.logit_std = 1.0  # SD3 logit-normal sigma density: std
  c.shape_weight = 0.0  # extra loss weight on shape pixels (1 + w there, renormalised per image): makes layout matter
  c.shape_margin = 0  # px of background around each shape weighted like it (0: shape pixels only, which paints blocks)
  c.uniform_sigma_frac = 0.0  # share of samples with sigma ~ U(0, 1) instead (logit-normal puts ~1% below 0.1)

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"  # MMDiT / text encoder preset (of a random init)
  c.model.init_from = ""  # generator directory to start from instead of a random init ("" = random)
  c.model.frozen = ("emotion",)  # parameter groups left untouched (the V-A stage: ("text", "mmdit"))
  c.model.num_emotion_tokens = 4  # V-A tokens appended to the text context (zero, frozen here)
  c.model.max_text_length = 176  # byte ids per prompt incl. BOS/EOS (at most 44 words)

  c.caption = ml_collections.ConfigDict()
  c.caption.p_empty = 0.1  # caption dropout for classifier-free guidance
  c.caption.p_neutral = 0.3  # neutral prompt (shapes only); the rest get the emotional prompt
  c.caption.p_drop_pooled = 0.0  # pooled text vector replaced by the empty prompt's: forces the token context to carry the prompt

  c.data = ml_collections.ConfigDict()
  c.data.seed = 1  # EmoShapes world seed (eval uses another)
  c.data.num_examples = 200_000  # size of the procedural training set

  c.eval = ml_collections.ConfigDict()
  c.eval.seed = 12345  # held-out EmoShapes seed for the sample grid
  c.eval.num_prompts = 32  # held-out emotional prompts sampled at each eval
  c.eval.num_steps = 20  # ODE steps
  c.eval.shift = 3.0  # SD3 schedule shift
  c.eval.cfg_scale = 3.0  # classifier-free guidance scale
  c.eval.source = "emotional"  # "emotional": held-out emotional prompts; "grid": neutral prompts x a V-A grid (the V-A stage)

  c.optim = cu.optimizer(lr=6e-4, grad_clip=1.0, weight_decay=0.0, warmup_steps=200, decay_steps=1000)
  c.mesh = cu.mesh()
  c.sharding = cu.sharding(cu.MMDIT_PARAM_RULES)

  if arg.preset == "va":
    c.total_steps, c.checkpoint_every, c.eval_every = 1500, 250, 250
    c.model.frozen = ("text", "mmdit")
    c.caption.p_neutral = 0.9  # the rest stay empty captions: V-A alone must also carry colour
    c.eval.source, c.eval.num_prompts, c.eval.cfg_scale = "grid", 16, 1.0  # the main job's eval grid and guidance
    c.optim = cu.optimizer(lr=2e-3, grad_clip=1.0, weight_decay=0.0, warmup_steps=100, decay_steps=400)
  elif arg.preset == "smoke":
    c.total_steps, c.batch_size, c.checkpoint_every, c.eval_every = 4, 8, 2, 4
    c.optim.warmup_steps, c.optim.decay_steps = 0, 2
    c.eval.num_prompts, c.eval.num_steps = 8, 2
  elif arg.preset != "full":
    raise ValueError(f"unknown preset {arg.preset!r} for pretrain_generator; use full, va or smoke")
  return c


RANGES = {
    **cu.RUN_RANGES, **cu.OPTIM_RANGES, **cu.MESH_RANGES, **cu.SHARDING_RANGES,
    "task": cu.OneOf("pretrain_generator"), "batch_size": cu.Int(1), "ema_decay": cu.Fraction(),
    "export_weights": cu.OneOf("ema", "params"), "export_dtype": cu.OneOf(*cu.DTYPES),
    "logit_mean": cu.Float(), "logit_std": cu.Positive(), "shape_weight": cu.Float(0.0), "shape_margin": cu.Int(0, 16),
    "uniform_sigma_frac": cu.Fraction(),
    "model.preset": cu.OneOf("tiny"), "model.init_from": cu.STR, "model.frozen": cu.Names("text", "emotion", "mmdit"), "model.num_emotion_tokens": cu.Int(1), "model.max_text_length": cu.Int(3),
    "caption.p_empty": cu.Fraction(), "caption.p_neutral": cu.Fraction(), "caption.p_drop_pooled": cu.Fraction(),
    "data.seed": cu.Int(0), "data.num_examples": cu.Int(1),
    "eval.seed": cu.Int(0), "eval.num_prompts": cu.Int(1), "eval.num_steps": cu.Int(1, 1000), "eval.shift": cu.Positive(),
    "eval.cfg_scale": cu.Float(0.0), "eval.source": cu.OneOf("emotional", "grid"),
}
