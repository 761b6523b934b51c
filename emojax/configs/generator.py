"""Generator GRPO on the EmoShapes tiny world: the main job and the README's first command.

  python -m emojax.train --config=configs/generator.py --workdir=/tmp/emojax_generator
  python -m emojax.train --config=configs/generator.py:smoke --workdir=/tmp/x   # seconds, for tests
  python -m emojax.train --config=configs/generator.py:sd35m --workdir=gs://... \
      --config.model.pretrained=SD35M_DIR --config.rewards.lvlm.path=JUDGE_DIR --config.rewards.pickscore.path=PICKSCORE_DIR
"""
from emojax import config_utils as cu

GENERATOR_GROUPS = ("text", "emotion", "mmdit", "transformer")  # parameter groups: tiny generator's, SD3's
PRESETS = {
    "default": "the main job: the tiny generator's V-A embedding trained by GRPO",
    "smoke": "a few tiny steps, seconds, for tests",
    "sd35m": "SD3.5-Medium with LoRA on a pod, Flow-GRPO's public setting with EmoFeedback2's rewards",
    "sd35m_1gpu": "sd35m on one 80 GB GPU: Flow-GRPO's one-GPU setting (8 images a group), judge on the same device",
}


def fields() -> cu.Fields:
  f = cu.run_fields(task="generator_grpo", total_steps=120, checkpoint_every=40, eval_every=40)
  f("export_dtype", "float32", cu.OneOf(*cu.DTYPES), "dtype of the exported generator (<workdir>/export)")

  f("model.kind", "tiny", cu.OneOf("tiny", "sd3"),
    '"tiny": an emojax generator directory (pixel space); "sd3": an SD3 / SD3.5 pipeline')
  f("model.pretrained", "", cu.STR,
    'tiny: generator directory ("" = the shipped asset); sd3: diffusers pipeline dir or SD3 export')
  f("model.resolution", 0, cu.Int(0), "sd3: image side in pixels (0 = the transformer's sample_size x the VAE factor)")
  f("model.max_sequence_length", 256, cu.Int(1), "sd3: T5 tokens per prompt (diffusers' default)")
  f("model.emotion_tokens", 4, cu.Int(1),
    "sd3: V-A tokens joining the text context (a tiny generator's config holds its own)")
  f("model.frozen", ("text", "mmdit"), cu.Names(*GENERATOR_GROUPS),
    "parameter groups left untouched (default: the V-A embedding alone learns, so texture cannot fool the judge)")
  f("model.dtype", "float32", cu.OneOf("float32", "bfloat16"),
    "compute dtype of the generator's forward in rollouts and updates, and storage of the frozen groups; "
    "trainable params, optimizer, log-probs, ratios, advantages and the loss stay float32")
  f("model.remat", "none", cu.OneOf(*cu.REMATS), "recompute each MMDiT joint block in the backward (cu.REMATS)")
  f("model.scan_layers", False, cu.BOOL, "identical MMDiT joint blocks as one lax.scan (compiled once; LoRA stacked alike)")
  f("model.attention", "auto", cu.OneOf(*cu.ATTENTIONS),
    "the MMDiT's and text encoder's attention kernel (auto: by backend and length; docs/attention.md)")
  # LoRA on the MMDiT's attention (rank 0: off); it trains even with "mmdit" frozen
  f.include("model.lora", cu.lora_fields())

  f("data.name", "emoshapes", cu.OneOf("emoshapes", "emoset_va"),
    'prompts and V-A: "emoshapes" or "emoset_va" (emojax.data.sources)')
  f("data.dir", "", cu.STR, 'TFDS data_dir of a prepared dataset ("" with emoshapes: the procedural world)')
  f("data.config", "", cu.STR, 'TFDS builder config ("" = the generator\'s image side)')
  f("data.workers", 0, cu.Int(0), "grain worker processes reading records (0: threads of the main process)")
  f("data.seed", 2, cu.Int(0), "EmoShapes world seed for prompts")
  f("data.num_examples", 50_000, cu.Int(1), "prompts in the world")
  f("data.target_mode", "uniform", cu.OneOf("uniform", "data"),
    '"uniform": random V-A targets; "data": the image\'s own V-A')
  f("data.prompt_field", "prompt", cu.OneOf("prompt", "emotional_prompt"),
    '"prompt" (neutral, emotion from V-A) or "emotional_prompt"')

  f("rl.prompts_per_step", 4, cu.Int(1), "distinct (prompt, V, A) per step")
  f("rl.group_size", 8, cu.Int(2), "samples per prompt (the GRPO group)")
  f("rl.num_steps", 8, cu.Int(1, 1000), "SDE sampling steps")
  f("rl.rollout_chunks", 1, cu.Int(1), "the rollout's generator forwards take the batch in this many sequential parts")
  f("rl.decode_chunks", 1, cu.Int(1), "the decode of the rollout's samples (SD3: the VAE) likewise")
  f("rl.remat_timesteps", False, cu.BOOL,
    "the update recomputes each trained timestep's forward in its backward (stores one timestep at a time)")
  f("rl.shift", 3.0, cu.Positive(), "SD3 sigma-schedule shift")
  f("rl.noise_level", 1.0, cu.Float(0.0, 2.0, lo_open=True),
    "SDE noise level a: how far rollouts of one group spread (Flow-GRPO: 0.7)")
  f("rl.sde_steps", 4, cu.Int(0),
    "leading SDE steps (trained); the rest are Euler steps (0 = all SDE): noise a late SDE step injects is never "
    "denoised")
  f("rl.cfg_scale", 1.0, cu.Float(0.0), "classifier-free guidance in rollouts and training (1 = off)")
  f("rl.shared_init_noise", True, cu.BOOL,
    "one initial noise per group: rewards then differ only by the SDE steps' noise")
  f("rl.clip_eps", 1e-4, cu.Positive(), "PPO clip range (log-probs are per-dimension means)")
  f("rl.kl_beta", 1.0, cu.Float(0.0),
    "weight of the Flow-GRPO KL to the reference generator (0 = no reference); high, to hold the embedding near "
    "the pretrained one")
  f("rl.adv_clip", 5.0, cu.Positive(), "advantages clipped to +-adv_clip")
  f("rl.adv_eps", 1e-4, cu.Positive(), "std floor in group advantages")
  f("rl.adv_std", "group", cu.OneOf("group", "batch"),
    'advantages divided by each group\'s reward std ("group", GRPO) or the batch\'s pooled within-group std '
    '("batch": a group whose rewards differ only by judge noise gets small advantages)')
  f("rl.timestep_fraction", 1.0, cu.Fraction(lo_open=True), "fraction of the SDE steps trained per sample")
  f("rl.grad_accum", 2, cu.Int(1), "micro-batches per optimizer update")
  f("rl.inner_epochs", 1, cu.Int(1), "optimizer updates per rollout batch")
  f("rl.ratio_tolerance", 1e-5, cu.Float(0.0), "warn when the first-epoch ratio deviates from 1 by more")
  f("rl.old_logprob", "rollout", cu.OneOf("rollout", "update"),
    'the PPO ratio\'s old log-prob: "rollout" (the sampler\'s) or "update" (the first update\'s own forward, for '
    "when the two programs round apart, e.g. in bf16; sampler_ratio_dev logs the gap)")

  f("rewards.weights.*", {"lvlm_emotion": 1.0, "colour_emotion": 0.0, "pickscore": 0.03}, cu.Float(0.0),
    "reward name -> weight (emojax.rewards.registry; zero weights are skipped): lvlm_emotion, the LVLM judge's "
    "reading; colour_emotion, the colour judge (always the independent evaluator, judge/*); pickscore, "
    "PickScore / rewards.pickscore.scale, kept small: a tripwire against painting noise, not a ranking")
  f("rewards.normalize", "none", cu.OneOf("none", "batch", "group", "group_axes"),
    '"none", "batch" or "group": z-score each reward over the batch / each group first; "group_axes": "group" '
    "with each emotion reward's valence and arousal terms z-scored apart (emojax.rewards.registry.combine)")
  f("rewards.emotion_distance", "l2", cu.OneOf("l1", "l2"),
    "each emotion reward's distance in the V-A plane (rewards.registry.emotion_distance_reward): \"l1\" (the "
    "judges' own 1 - (|dV| + |dA|) / 12) or \"l2\" (1 - Euclidean / (6 sqrt 2): pulls both axes together)")
  f.include("rewards.lvlm", cu.lvlm_judge_fields())  # the LVLM judge of lvlm_emotion
  # the preference model of pickscore and eval/pickscore; scale: about the tiny model's PickScore of a clean
  # render, so a clean picture earns about 1
  f.include("rewards.pickscore", cu.preference_model_fields(scale=37.5))

  f("eval.seed", 12345, cu.Int(0), "held-out EmoShapes seed for eval prompts and noise")
  f("eval.num_prompts", 16, cu.Int(1),
    "neutral prompts, each sampled at a 3x3 grid of V-A targets (16 x 9 = 144 images)")
  f("eval.num_steps", 8, cu.Int(1, 1000), "ODE steps")
  f("eval.at_start", True, cu.BOOL, 'also evaluate the pretrained generator at step 1 (the "before")')
  f("eval.preference", True, cu.BOOL,
    "also log eval/pickscore, eval/pickscore_min_cell (the lowest V-A cell's mean over prompts) and eval/clip_iqa "
    "with rewards.pickscore's model")

  # decayed linearly to 0 over the last half of the run, so the embedding settles where a target's reward is flat
  f.include("optim", cu.optimizer_fields(lr=1e-3, grad_clip=1.0, decay_fraction=0.5))
  f.include("mesh", cu.mesh_fields())
  f.include("sharding", cu.sharding_fields("mmdit"))
  return f


FIELDS = fields()


def get_config(arg=None):
  preset, c = cu.preset_config(arg, FIELDS, PRESETS, "generator")
  if preset == "smoke":
    c.total_steps, c.checkpoint_every, c.eval_every = 3, 2, 3
    c.rl.prompts_per_step, c.rl.group_size, c.rl.num_steps, c.rl.sde_steps = 2, 4, 3, 2
    c.eval.num_prompts, c.eval.num_steps = 1, 2
    c.rewards.lvlm.batch_size = 8
  elif preset == "sd35m":
    sd35m(c)
  elif preset == "sd35m_1gpu":
    sd35m_1gpu(c)
  return c


def sd35m(c):
  """SD3.5-Medium on a pod: Flow-GRPO's public SD3.5-M setting (LoRA r 32, alpha 64 on the joint attention's
  projections, 10 SDE steps in training, 40 ODE steps in evaluation, CFG 4.5, noise level 0.7, group 24, clip
  1e-4, KL 0.01 (EmoFeedback2 states no beta), lr 3e-4, 512 px) with EmoFeedback2's rewards: the Qwen2.5-VL
  emotion judge and PickScore_v1 (scale 26, as Flow-GRPO). The three directories have no default."""
  c.total_steps, c.checkpoint_every, c.eval_every = 1000, 50, 50
  c.model.kind, c.model.resolution, c.model.frozen = "sd3", 512, ("transformer",)
  c.model.dtype, c.model.remat, c.model.scan_layers = "bfloat16", "full", True
  c.model.lora = cu.lora(rank=32, alpha=64.0)
  c.rl.prompts_per_step, c.rl.group_size, c.rl.grad_accum = 8, 24, 8
  c.rl.rollout_chunks, c.rl.decode_chunks = 6, 24  # on 8 devices: 4 rows a device per forward, 1 per decode
  c.rl.remat_timesteps = True
  c.rl.num_steps, c.rl.sde_steps, c.rl.cfg_scale, c.rl.noise_level = 10, 0, 4.5, 0.7
  c.rl.shared_init_noise, c.rewards.emotion_distance = False, "l1"
  c.rl.clip_eps, c.rl.kl_beta, c.rl.timestep_fraction = 1e-4, 0.01, 1.0
  c.rl.old_logprob = "update"  # bf16: the sampler's and the update's programs round apart
  c.rewards.weights = {"lvlm_emotion": 1.0, "colour_emotion": 0.0, "pickscore": 1.0}
  c.rewards.lvlm = cu.lvlm_judge(batch_size=16, max_prompt_len=512, max_new_tokens=256)  # 512 px: 324 image tokens
  c.rewards.lvlm.dtype, c.rewards.lvlm.mesh = "bfloat16", "train"  # the 7B judge sharded over the job's mesh
  c.rewards.pickscore = cu.preference_model(scale=26.0, batch_size=32)
  c.rewards.pickscore.iqa_pair = ("Good photo.", "Bad photo.")
  c.eval.num_prompts, c.eval.num_steps = 8, 40
  c.optim = cu.optimizer(lr=3e-4, grad_clip=1.0)


def sd35m_1gpu(c):
  """sd35m on one device, as Flow-GRPO's one-GPU SD3.5-M recipe: groups of 8 images, 8 images a forward and a
  train micro-batch, gradients accumulated over 4 micro-batches (32 images an update: 4 prompts a step). The 7B
  judge and PickScore share the device with the policy; the text encoders run from host memory."""
  sd35m(c)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.num_devices = 1, 1, 1, 1
  c.rl.prompts_per_step, c.rl.group_size, c.rl.grad_accum = 4, 8, 4
  c.rl.rollout_chunks, c.rl.decode_chunks = 4, 8  # 8 rows a forward (16 with CFG), 4 images a decode
  c.rewards.lvlm.mesh = "replicated"  # one device: the judge's whole weights beside the policy
