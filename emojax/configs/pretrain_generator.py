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
from emojax import config_utils as cu

PRESETS = {
    "full": "flow-matching pretraining of text encoder and MMDiT from a random init",
    "va": "the supervised V-A stage: only the V-A embedding learns",
    "smoke": "a few tiny steps, seconds, for tests",
}


def fields() -> cu.Fields:
  f = cu.run_fields(task="pretrain_generator", total_steps=3000, checkpoint_every=200, eval_every=400)
  f("batch_size", 64, cu.Int(1), "global images per step")
  f("ema_decay", 0.999, cu.Fraction(), "EMA decay cap (warmed up as (1+t)/(10+t))")
  f("export_weights", "ema", cu.OneOf("ema", "params"),
    'weights evaluated and exported: "ema" (the moving average) or "params" (the raw weights)')
  f("export_dtype", "float16", cu.OneOf(*cu.DTYPES), "dtype of the exported params.safetensors")
  f("logit_mean", 1.0986, cu.Float(), "SD3 logit-normal sigma density: mean; ln(3) = the sampling schedule's shift 3")
  f("logit_std", 1.0, cu.Positive(), "SD3 logit-normal sigma density: std")
  f("shape_weight", 0.0, cu.Float(0.0),
    "extra loss weight on shape pixels (1 + w there, renormalised per image): makes layout matter")
  f("shape_margin", 0, cu.Int(0, 16),
    "px of background around each shape weighted like it (0: shape pixels only), so outlines count too")
  f("uniform_sigma_frac", 0.0, cu.Fraction(),
    "share of samples with sigma ~ U(0, 1) instead (logit-normal puts ~1% below 0.1)")

  f("model.preset", "tiny", cu.OneOf("tiny"), "MMDiT / text encoder preset (of a random init)")
  f("model.init_from", "", cu.STR, 'generator directory to start from instead of a random init ("" = random)')
  f("model.frozen", ("emotion",), cu.Names("text", "emotion", "mmdit"),
    'parameter groups left untouched (the V-A stage: ("text", "mmdit"))')
  f("model.num_emotion_tokens", 4, cu.Int(1), "V-A tokens appended to the text context (zero, frozen here)")
  f("model.max_text_length", 176, cu.Int(3), "byte ids per prompt incl. BOS/EOS (at most 44 words)")

  f("caption.p_empty", 0.1, cu.Fraction(), "caption dropout for classifier-free guidance")
  f("caption.p_neutral", 0.3, cu.Fraction(), "neutral prompt (shapes only); the rest get the emotional prompt")
  f("caption.p_drop_pooled", 0.0, cu.Fraction(),
    "pooled text vector replaced by the empty prompt's: forces the token context to carry the prompt")

  f("data.seed", 1, cu.Int(0), "EmoShapes world seed (eval uses another)")
  f("data.num_examples", 200_000, cu.Int(1), "size of the procedural training set")

  f("eval.seed", 12345, cu.Int(0), "held-out EmoShapes seed for the sample grid")
  f("eval.num_prompts", 32, cu.Int(1), "held-out emotional prompts sampled at each eval")
  f("eval.num_steps", 20, cu.Int(1, 1000), "ODE steps")
  f("eval.shift", 3.0, cu.Positive(), "SD3 schedule shift")
  f("eval.cfg_scale", 3.0, cu.Float(0.0), "classifier-free guidance scale")
  f("eval.source", "emotional", cu.OneOf("emotional", "grid"),
    '"emotional": held-out emotional prompts; "grid": neutral prompts x a V-A grid (the V-A stage)')

  f.include("optim", cu.optimizer_fields(lr=6e-4, grad_clip=1.0, weight_decay=0.0, warmup_steps=200, decay_steps=1000))
  f.include("mesh", cu.mesh_fields())
  f.include("sharding", cu.sharding_fields("mmdit"))
  return f


FIELDS = fields()


def get_config(arg=None):
  preset, c = cu.preset_config(arg, FIELDS, PRESETS, "pretrain_generator")
  if preset == "va":
    c.total_steps, c.checkpoint_every, c.eval_every = 1500, 250, 250
    c.model.frozen = ("text", "mmdit")
    c.caption.p_neutral = 0.9  # the rest stay empty captions: V-A alone must also carry colour
    c.eval.source, c.eval.num_prompts, c.eval.cfg_scale = "grid", 16, 1.0  # the main job's eval grid and guidance
    c.optim = cu.optimizer(lr=2e-3, grad_clip=1.0, weight_decay=0.0, warmup_steps=100, decay_steps=400)
  elif preset == "smoke":
    c.total_steps, c.batch_size, c.checkpoint_every, c.eval_every = 4, 8, 2, 4
    c.optim.warmup_steps, c.optim.decay_steps = 0, 2
    c.eval.num_prompts, c.eval.num_steps = 8, 2
  return c
