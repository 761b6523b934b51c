"""LVLM GRPO: the SFT tiny judge sharpened by multi-task rewards on EmoShapes.

  python -m emojax.train --config=configs/lvlm.py --workdir=/tmp/lvlm_grpo   # from the shipped SFT judge, ~10 min
  python -m emojax.train --config=configs/lvlm.py --workdir=/tmp/lvlm_grpo --config.model.pretrained=/tmp/sft/export
  python -m emojax.train --config=configs/lvlm.py:feedback --workdir=/tmp/lvlm_feedback  # both tasks, from lvlm_tiny
  python -m emojax.train --config=configs/lvlm.py:smoke --workdir=/tmp/x     # seconds
  python -m emojax.train --config=configs/lvlm.py:qwen25vl_7b --workdir=gs://... --config.model.pretrained=QWEN_DIR
"""
import ml_collections

from emojax import config_utils as cu

LVLM_GROUPS = ("visual", "language_model", "lm_head")  # top-level parameter groups (lm_head: untied only)


def get_config(arg=None):
  arg = cu.parse_arg(arg, preset="default")
  c = ml_collections.ConfigDict()
  # 80 GRPO steps of about 5 s each on 2 CPU cores: ~7 min plus evaluations
  cu.run_fields(c, task="lvlm_grpo", total_steps=80, checkpoint_every=40, eval_every=40)
  c.export_dtype = "float32"  # dtype of the exported params.safetensors
  c.max_prompt_len = 120  # prompt tokens, left-padded (the short judge prompt + 16 image tokens is 117)

  c.images_per_step = 4  # distinct images per step (global batch rows; x group_size sampled answers)
  c.group_size = 8  # sampled answers per image (the GRPO group)
  c.temperature = 0.7  # rollout temperature, also of every scored log-prob; at 1.0 a quarter of samples break format
  c.top_p = 1.0  # nucleus mass of rollouts (1 = full distribution)
  c.max_new_tokens = 152  # answer tokens incl. end of turn (the longest SFT answer is 148)
  c.clip_eps = 0.2  # token-level PPO clip range of the ratio
  c.kl_beta = 0.04  # weight of the k3 KL to the SFT judge (0 = no reference model)
  c.aggregation = "sequence_mean"  # "sequence_mean" (GRPO) or "token_mean" (DAPO) over answer tokens
  c.inner_epochs = 1  # optimizer updates per sampled batch
  c.rescore_old = True  # re-score sampled answers with the training scorer for the ratio's old log-probs
  c.grad_accum = 1  # micro-batches per update (images_per_step must divide by it)
  c.adv_eps = 1e-4  # std floor in group advantages
  c.adv_clip = 5.0  # advantages clipped to +-adv_clip
  c.ratio_tolerance = 1e-5  # warn when the first-iteration ratio deviates from 1 by more

  c.model = ml_collections.ConfigDict()
  c.model.pretrained = ""  # the SFT judge: DIR/export of configs/sft_lvlm.py; "" = the shipped emojax/assets/lvlm_tiny_sft
  c.model.frozen = ("visual",)  # top-level parameter groups left untouched (vision tower: SFT taught it colour)
  # LoRA on the decoder's attention and MLP (rank 0: off); freeze "language_model" to train the adapters alone
  c.model.lora = cu.lora(alpha=64.0, targets=cu.QWEN_LORA_TARGETS)
  c.model.remat = "none"  # recompute vision blocks and decoder layers in the backward (cu.REMATS)
  c.model.scan_layers = False  # decoder layers as one lax.scan in training forwards (compiled once; not with LoRA)
  c.model.dtype = "float32"  # compute dtype of sampling and scoring; params, optimizer, log-probs and loss stay float32
  c.model.allow_shipped = True  # pretrained "" means the shipped tiny SFT judge (real-scale presets: False, "" is an error)

  c.data = cu.lvlm_data(seed=3)  # training images: EmoShapes world 3 (SFT used 1), half noise-augmented

  c.rewards = ml_collections.ConfigDict()
  c.rewards.weights = ml_collections.ConfigDict(
      {"format": 1.0, "valence": 1.0, "arousal": 1.0, "category": 1.0})  # multitask component -> weight
  c.rewards.eps = 1.0  # V/A reward max(0, 1 - |err| / eps): zero beyond eps (a sixth of [-3, 3])

  # the feedback task (rows of data.feedback_share): what a rewrite achieves, rendered and judged
  c.feedback = ml_collections.ConfigDict()
  c.feedback.generator = ""  # generator directory rendering the rewrites; "" = the shipped generator_tiny
  c.feedback.judge = cu.lvlm_judge()  # the frozen LVLM judge reading the renders ("" = the shipped lvlm_tiny)
  c.feedback.num_steps = 20  # ODE steps per render (as emojax.generate)
  c.feedback.shift = 3.0  # SD3 sigma-schedule shift of the renders
  c.feedback.cfg_scale = 1.0  # classifier-free guidance of the renders (1 = off)
  c.feedback.batch_size = 32  # images per jitted render batch (the last one padded)
  c.feedback.renders = 2  # images per rewrite, their rewards averaged (noise shared within a group)
  c.feedback.noise_seed = 0  # key the render noise folds from
  c.feedback.weights = ml_collections.ConfigDict(
      {"format": 1.0, "content": 1.0, "valence": 1.0, "arousal": 1.0})  # feedback component -> weight
  c.feedback.eps = 1.0  # V/A reward max(0, 1 - |err| / eps) of the render's judged reading

  c.eval = ml_collections.ConfigDict()
  c.eval.seed = 12345  # held-out EmoShapes world seed (as SFT's eval)
  c.eval.num_examples = 64  # held-out images judged greedily at each eval
  c.eval.batch_size = 64  # images per jitted greedy-decoding batch
  c.eval.at_start = True  # also evaluate the SFT judge at step 1 (the "before", keys *_start)
  c.eval.feedback_examples = 32  # held-out feedback turns rewritten, rendered and judged at each eval (feedback task)

  c.optim = cu.optimizer(lr=5e-5, grad_clip=1.0, weight_decay=0.0, warmup_steps=10)
  c.mesh = cu.mesh()
  c.sharding = cu.sharding(cu.QWEN_VL_PARAM_RULES)

  if arg.preset in ("feedback", "feedback_smoke"):  # both tasks, from the shipped two-task LVLM
    c.model.pretrained = "asset:lvlm_tiny"
    c.data = cu.lvlm_data(seed=8)  # a world no earlier stage trained on
    c.data.feedback_share = 0.5
    c.max_prompt_len, c.max_new_tokens = 216, 240  # the longest feedback question (215 with the image) and answer (239)
    c.total_steps, c.checkpoint_every, c.eval_every = 60, 30, 30
  if arg.preset in ("smoke", "feedback_smoke"):
    c.total_steps, c.checkpoint_every, c.eval_every = 2, 2, 2
    c.images_per_step, c.group_size, c.max_new_tokens, c.grad_accum = 2, 4, 24, 2
    c.eval.num_examples, c.eval.batch_size, c.eval.at_start, c.eval.feedback_examples = 2, 2, False, 2
    c.optim.warmup_steps = 0
    c.feedback.num_steps, c.feedback.batch_size, c.feedback.renders = 2, 4, 1
  if arg.preset == "feedback_smoke":
    c.max_new_tokens, c.data.feedback_share = 240, 1.0
  elif arg.preset == "qwen25vl_7b":
    qwen25vl_7b(c)
  elif arg.preset not in ("default", "smoke", "feedback"):
    raise ValueError(f"unknown preset {arg.preset!r} for lvlm; use default, feedback, smoke, feedback_smoke or "
                     "qwen25vl_7b")
  return c


def qwen25vl_7b(c):
  """Qwen2.5-VL-7B-Instruct (or its SFT export) on a pod. EmoFeedback2 states no GRPO hyperparameters for its LVLM;
  these are DeepSeekMath GRPO's (KL beta 0.04, lr 1e-6, token-level clip 0.2) with TRL's group of 8 and a
  sampling temperature of 1; bf16 compute, every layer rematerialised, the decoder scanned, all but the vision
  tower trained. Images are EmoShapes renders at 448 px (256 merged image tokens) until real datasets are read."""
  c.total_steps, c.checkpoint_every, c.eval_every = 500, 50, 50
  c.model.pretrained, c.model.allow_shipped = "", False
  c.model.dtype, c.model.remat, c.model.scan_layers = "bfloat16", "full", True  # 28 decoder layers compiled once
  c.images_per_step, c.group_size, c.grad_accum = 64, 8, 16
  c.temperature, c.max_prompt_len, c.max_new_tokens = 1.0, 512, 512
  c.clip_eps, c.kl_beta = 0.2, 0.04
  c.data.image_size = 448
  c.eval.num_examples, c.eval.batch_size = 256, 32
  c.optim = cu.optimizer(lr=1e-6, grad_clip=1.0, weight_decay=0.0, warmup_steps=10)


RANGES = {
    **cu.RUN_RANGES, **cu.OPTIM_RANGES, **cu.MESH_RANGES, **cu.SHARDING_RANGES, **cu.LVLM_DATA_RANGES,
    "task": cu.OneOf("lvlm_grpo"), "export_dtype": cu.OneOf(*cu.DTYPES), "max_prompt_len": cu.Int(1),
    "images_per_step": cu.Int(1), "group_size": cu.Int(2), "temperature": cu.Float(0.0, lo_open=True),
    "top_p": cu.Fraction(lo_open=True), "max_new_tokens": cu.Int(1), "clip_eps": cu.Positive(), "kl_beta": cu.Float(0.0),
    "aggregation": cu.OneOf("sequence_mean", "token_mean"), "inner_epochs": cu.Int(1), "rescore_old": cu.BOOL,
    "grad_accum": cu.Int(1), "adv_eps": cu.Positive(), "adv_clip": cu.Positive(), "ratio_tolerance": cu.Float(0.0),
    "model.pretrained": cu.STR, "model.frozen": cu.Names(*LVLM_GROUPS),
    "model.remat": cu.OneOf(*cu.REMATS), "model.dtype": cu.OneOf("float32", "bfloat16"), "model.scan_layers": cu.BOOL, "model.allow_shipped": cu.BOOL,
    **cu.lora_ranges("model.lora"),
    "rewards.weights.*": cu.Float(0.0), "rewards.eps": cu.Positive(),
    "eval.seed": cu.Int(0), "eval.num_examples": cu.Int(1), "eval.batch_size": cu.Int(1), "eval.at_start": cu.BOOL,
    "eval.feedback_examples": cu.Int(1), "feedback.generator": cu.STR, **cu.lvlm_judge_ranges("feedback.judge"),
    "feedback.num_steps": cu.Int(1, 1000), "feedback.shift": cu.Positive(), "feedback.cfg_scale": cu.Float(0.0),
    "feedback.batch_size": cu.Int(1), "feedback.renders": cu.Int(1), "feedback.noise_seed": cu.Int(0),
    "feedback.weights.*": cu.Float(0.0), "feedback.eps": cu.Positive(),
}
