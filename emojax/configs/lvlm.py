"""LVLM GRPO: the SFT tiny judge sharpened by multi-task rewards on EmoShapes.

  python -m emojax.train --config=configs/lvlm.py --workdir=/tmp/lvlm_grpo   # from the shipped SFT judge, ~10 min
  python -m emojax.train --config=configs/lvlm.py --workdir=/tmp/lvlm_grpo --config.model.pretrained=/tmp/sft/export
  python -m emojax.train --config=configs/lvlm.py:feedback --workdir=/tmp/lvlm_feedback  # both tasks, from lvlm_tiny
  python -m emojax.train --config=configs/lvlm.py:smoke --workdir=/tmp/x     # seconds
  python -m emojax.train --config=configs/lvlm.py:qwen25vl_7b --workdir=gs://... --config.model.pretrained=QWEN_DIR
"""
from emojax import config_utils as cu

LVLM_GROUPS = ("visual", "language_model", "lm_head")  # top-level parameter groups (lm_head: untied only)
PRESETS = {
    "default": "the shipped SFT judge sharpened on the judge task",
    "feedback": "both tasks (judge, critique and rewrite) from the shipped two-task LVLM",
    "smoke": "a few tiny steps, seconds, for tests",
    "feedback_smoke": "smoke on feedback rows only",
    "qwen25vl_7b": "Qwen2.5-VL-7B-Instruct (or its SFT export) on a pod",
}


def fields() -> cu.Fields:
  f = cu.run_fields(task="lvlm_grpo", total_steps=80, checkpoint_every=40, eval_every=40)
  f("export_dtype", "float32", cu.OneOf(*cu.DTYPES), "dtype of the exported params.safetensors")
  f("max_prompt_len", 120, cu.Int(1),
    "prompt tokens, left-padded (the short judge prompt + 16 image tokens is 117)")

  f("images_per_step", 4, cu.Int(1), "distinct images per step (global batch rows; x group_size sampled answers)")
  f("group_size", 8, cu.Int(2), "sampled answers per image (the GRPO group)")
  f("temperature", 0.7, cu.Float(0.0, lo_open=True),
    "rollout temperature, also of every scored log-prob (lower keeps sampled answers in format)")
  f("top_p", 1.0, cu.Fraction(lo_open=True), "nucleus mass of rollouts (1 = full distribution)")
  f("max_new_tokens", 152, cu.Int(1), "answer tokens incl. end of turn (the longest SFT answer is 148)")
  f("clip_eps", 0.2, cu.Positive(), "token-level PPO clip range of the ratio")
  f("kl_beta", 0.04, cu.Float(0.0), "weight of the k3 KL to the SFT judge (0 = no reference model)")
  f("aggregation", "sequence_mean", cu.OneOf("sequence_mean", "token_mean"),
    '"sequence_mean" (GRPO) or "token_mean" (DAPO) over answer tokens')
  f("inner_epochs", 1, cu.Int(1), "optimizer updates per sampled batch")
  f("rescore_old", True, cu.BOOL, "re-score sampled answers with the training scorer for the ratio's old log-probs")
  f("grad_accum", 1, cu.Int(1), "micro-batches per update (images_per_step must divide by it)")
  f("adv_eps", 1e-4, cu.Positive(), "std floor in group advantages")
  f("adv_clip", 5.0, cu.Positive(), "advantages clipped to +-adv_clip")
  f("ratio_tolerance", 1e-5, cu.Float(0.0), "warn when the first-iteration ratio deviates from 1 by more")

  f("model.pretrained", "", cu.STR,
    'the SFT judge: DIR/export of configs/sft_lvlm.py; "" = the shipped emojax/assets/lvlm_tiny_sft')
  f("model.frozen", ("visual",), cu.Names(*LVLM_GROUPS),
    "top-level parameter groups left untouched (vision tower: SFT taught it colour)")
  # LoRA on the decoder's attention and MLP (rank 0: off); freeze "language_model" to train the adapters alone
  f.include("model.lora", cu.lora_fields(alpha=64.0, targets=cu.QWEN_LORA_TARGETS))
  f("model.remat", "none", cu.OneOf(*cu.REMATS),
    "recompute vision blocks and decoder layers in the backward (cu.REMATS)")
  f("model.scan_layers", False, cu.BOOL,
    "decoder layers as one lax.scan in training forwards (compiled once; LoRA adapters stacked alike)")
  f("model.attention", "auto", cu.OneOf(*cu.ATTENTIONS),
    "the vision blocks' and decoder layers' attention kernel (auto: by backend and length; docs/attention.md)")
  f("model.logprob_chunk", 0, cu.Int(0),
    "answer tokens per lm_head chunk when scoring, bounding the logits' memory (0 or >= max_new_tokens: all at once)")
  f("model.dtype", "float32", cu.OneOf("float32", "bfloat16"),
    "compute dtype of sampling and scoring, and storage of the frozen groups; trainable params, optimizer, "
    "log-probs and loss stay float32")
  f("model.allow_shipped", True, cu.BOOL,
    'pretrained "" means the shipped tiny SFT judge (real-scale presets: False, "" is an error)')

  # training images: EmoShapes world 3 (SFT used 1), half noise-augmented
  f.include("data", cu.lvlm_data_fields(seed=3))

  f("rewards.weights.*", {"format": 1.0, "valence": 1.0, "arousal": 1.0, "category": 1.0}, cu.Float(0.0),
    "multitask component -> weight")
  f("rewards.eps", 1.0, cu.Positive(), "V/A reward max(0, 1 - |err| / eps): zero beyond eps (a sixth of [-3, 3])")

  # the feedback task (rows of data.feedback_share): what a rewrite achieves, rendered and judged
  f("feedback.generator", "", cu.STR, 'generator directory rendering the rewrites; "" = the shipped generator_tiny')
  f.include("feedback.judge", cu.lvlm_judge_fields())  # the frozen LVLM judge reading the renders
  f("feedback.num_steps", 20, cu.Int(1, 1000), "ODE steps per render (as emojax.generate)")
  f("feedback.shift", 3.0, cu.Positive(), "SD3 sigma-schedule shift of the renders")
  f("feedback.cfg_scale", 1.0, cu.Float(0.0), "classifier-free guidance of the renders (1 = off)")
  f("feedback.batch_size", 32, cu.Int(1), "images per jitted render batch (the last one padded)")
  f("feedback.renders", 2, cu.Int(1), "images per rewrite, their rewards averaged (noise shared within a group)")
  f("feedback.noise_seed", 0, cu.Int(0), "key the render noise folds from")
  f("feedback.weights.*", {"format": 1.0, "content": 1.0, "valence": 1.0, "arousal": 1.0}, cu.Float(0.0),
    "feedback component -> weight")
  f("feedback.eps", 1.0, cu.Positive(), "V/A reward max(0, 1 - |err| / eps) of the render's judged reading")

  f("eval.seed", 12345, cu.Int(0), "held-out EmoShapes world seed (as SFT's eval)")
  f("eval.num_examples", 64, cu.Int(1), "held-out images judged greedily at each eval")
  f("eval.batch_size", 64, cu.Int(1), "images per jitted greedy-decoding batch")
  f("eval.at_start", True, cu.BOOL, 'also evaluate the SFT judge at step 1 (the "before", keys *_start)')
  f("eval.feedback_examples", 32, cu.Int(1),
    "held-out feedback turns rewritten, rendered and judged at each eval (feedback task)")

  f.include("optim", cu.optimizer_fields(lr=5e-5, grad_clip=1.0, weight_decay=0.0, warmup_steps=10))
  f.include("mesh", cu.mesh_fields())
  f.include("sharding", cu.sharding_fields("qwen_vl"))
  return f


FIELDS = fields()


def get_config(arg=None):
  preset, c = cu.preset_config(arg, FIELDS, PRESETS, "lvlm")
  if preset in ("feedback", "feedback_smoke"):  # both tasks, from the shipped two-task LVLM
    c.model.pretrained = "asset:lvlm_tiny"
    c.data = cu.lvlm_data(seed=8)  # a world no earlier stage trained on
    c.data.feedback_share = 0.5
    c.max_prompt_len, c.max_new_tokens = 216, 240  # the longest feedback question (215 with the image) and answer (239)
    c.total_steps, c.checkpoint_every, c.eval_every = 60, 30, 30
  if preset in ("smoke", "feedback_smoke"):
    c.total_steps, c.checkpoint_every, c.eval_every = 2, 2, 2
    c.images_per_step, c.group_size, c.max_new_tokens, c.grad_accum = 2, 4, 24, 2
    c.eval.num_examples, c.eval.batch_size, c.eval.at_start, c.eval.feedback_examples = 2, 2, False, 2
    c.optim.warmup_steps = 0
    c.feedback.num_steps, c.feedback.batch_size, c.feedback.renders = 2, 4, 1
  if preset == "feedback_smoke":
    c.max_new_tokens, c.data.feedback_share = 240, 1.0
  elif preset == "qwen25vl_7b":
    qwen25vl_7b(c)
  return c


def qwen25vl_7b(c):
  """Qwen2.5-VL-7B-Instruct (or its SFT export) on a pod. EmoFeedback2 states no GRPO hyperparameters for its LVLM;
  these are DeepSeekMath GRPO's (KL beta 0.04, lr 1e-6, token-level clip 0.2) with TRL's group of 8 and a
  sampling temperature of 1; bf16 compute, every layer rematerialised, the decoder scanned, all but the vision
  tower trained. Images are EmoShapes renders at 448 px (256 merged image tokens) until real datasets are read."""
  c.total_steps, c.checkpoint_every, c.eval_every = 500, 50, 50
  c.model.pretrained, c.model.allow_shipped = "", False
  c.model.dtype, c.model.remat, c.model.scan_layers = "bfloat16", "full", True  # 28 decoder layers compiled once
  c.model.logprob_chunk = 64  # 64 answer tokens' 152k-wide logits at a time
  c.images_per_step, c.group_size, c.grad_accum = 64, 8, 16
  c.temperature, c.max_prompt_len, c.max_new_tokens = 1.0, 512, 512
  c.clip_eps, c.kl_beta = 0.2, 0.04
  c.data.image_size = 448
  c.eval.num_examples, c.eval.batch_size = 256, 32
  c.optim = cu.optimizer(lr=1e-6, grad_clip=1.0, weight_decay=0.0, warmup_steps=10)
