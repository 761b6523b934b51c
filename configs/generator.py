"""Generator GRPO on the EmoShapes tiny world: the main job and the README's first command.

  python -m emojax.train --config=configs/generator.py --workdir=/tmp/emojax_generator
  python -m emojax.train --config=configs/generator.py:smoke --workdir=/tmp/x   # seconds, for tests
  python -m emojax.train --config=configs/generator.py:sd35m --workdir=gs://... \
      --config.model.pretrained=SD35M_DIR --config.rewards.lvlm.path=JUDGE_DIR --config.rewards.pickscore.path=PICKSCORE_DIR
"""
import ml_collections

from emojax import config_utils as cu

GENERATOR_GROUPS = ("text", "emotion", "mmdit", "transformer")  # parameter groups: tiny generator's, SD3's


def get_config(arg=None):
  arg = cu.parse_arg(arg, preset="default")
  c = ml_collections.ConfigDict()
  cu.run_fields(c, task="generator_grpo", total_steps=120, checkpoint_every=40, eval_every=40)
  c.export_dtype = "float32"  # dtype of the exported generator (<workdir>/export)

  c.model = ml_collections.ConfigDict()
  c.model.kind = "tiny"  # "tiny": an emojax generator directory (pixel space); "sd3": an SD3 / SD3.5 pipeline
  c.model.pretrained = ""  # tiny: generator directory ("" = the shipped asset); sd3: diffusers pipeline dir or SD3 export
  c.model.resolution = 0  # sd3: image side in pixels (0 = the transformer's sample_size x the VAE factor)
  c.model.max_sequence_length = 256  # sd3: T5 tokens per prompt (diffusers' default)
  c.model.emotion_tokens = 4  # sd3: V-A tokens joining the text context (a tiny generator's config holds its own)
  # parameter groups left untouched: only the V-A embedding learns (training the MMDiT too
  # reward-hacks the colour judge with texture within 40 steps)
  c.model.frozen = ("text", "mmdit")
  # compute dtype of the generator's forward in rollouts and updates; params, optimizer, log-probs, ratios,
  # advantages and the loss stay float32
  c.model.dtype = "float32"
  c.model.remat = "none"  # recompute each MMDiT joint block in the backward (cu.REMATS)
  c.model.scan_layers = False  # identical MMDiT joint blocks as one lax.scan (compiled once; not with LoRA)
  c.model.lora = cu.lora()  # LoRA on the MMDiT's attention (rank 0: off); it trains even with "mmdit" frozen

  c.data = ml_collections.ConfigDict()
  c.data.name = "emoshapes"  # prompts and V-A: "emoshapes" or "emoset_va" (emojax.data.sources)
  c.data.dir = ""  # TFDS data_dir of a prepared dataset ("" with emoshapes: the procedural world)
  c.data.config = ""  # TFDS builder config ("" = the generator's image side)
  c.data.workers = 0  # grain worker processes reading records (0: threads of the main process)
  c.data.seed = 2  # EmoShapes world seed for prompts
  c.data.num_examples = 50_000  # prompts in the world
  c.data.target_mode = "uniform"  # "uniform": random V-A targets; "data": the image's own V-A
  c.data.prompt_field = "prompt"  # "prompt" (neutral, emotion from V-A) or "emotional_prompt"

  c.rl = ml_collections.ConfigDict()
  c.rl.prompts_per_step = 4  # distinct (prompt, V, A) per step
  c.rl.group_size = 8  # samples per prompt (the GRPO group)
  c.rl.num_steps = 8  # SDE sampling steps
  c.rl.shift = 3.0  # SD3 sigma-schedule shift
  c.rl.noise_level = 1.0  # SDE noise level a (Flow-GRPO: 0.7; here arousal moves only at 1.0, README)
  # leading SDE steps (trained); the rest are Euler steps (0 = all SDE): noise a late SDE step injects
  # is never denoised, and in pixel space it is grain that the preference model (rightly) scores as noise
  c.rl.sde_steps = 4
  c.rl.cfg_scale = 1.0  # classifier-free guidance in rollouts and training (1 = off)
  c.rl.shared_init_noise = True  # one initial noise per group: rewards then differ only by the SDE steps' noise
  c.rl.clip_eps = 1e-4  # PPO clip range (log-probs are per-dimension means)
  # weight of the Flow-GRPO KL to the reference generator (0 = no reference); 1.0, not Flow-GRPO's 0.01: at
  # lr 1e-3 the embedding otherwise drifts to where the MMDiT draws grain (eval PickScore/37.5 0.84 -> 0.49)
  c.rl.kl_beta = 1.0
  c.rl.adv_clip = 5.0  # advantages clipped to +-adv_clip
  c.rl.adv_eps = 1e-4  # std floor in group advantages
  # advantages divided by each group's reward std ("group", GRPO) or the batch's pooled within-group std ("batch"):
  # with "group" a target no image reaches, whose rewards differ only by the judge's noise, still gets +-1 advantages
  c.rl.adv_std = "group"
  c.rl.timestep_fraction = 1.0  # fraction of the SDE steps trained per sample
  c.rl.grad_accum = 2  # micro-batches per optimizer update
  c.rl.inner_epochs = 1  # optimizer updates per rollout batch
  c.rl.ratio_tolerance = 1e-5  # warn when the first-epoch ratio deviates from 1 by more
  # the PPO ratio's old log-prob: "rollout" (the sampler's) or "update" (the first update's own forward; in bf16
  # the sampler's and the update's programs round apart by more than clip_eps; sampler_ratio_dev logs the gap)
  c.rl.old_logprob = "rollout"

  c.rewards = ml_collections.ConfigDict()
  # reward name -> weight (emojax.rewards.registry); zero weights are skipped, so
  # --config.rewards.weights.lvlm_emotion=0 --config.rewards.weights.colour_emotion=1 switches judges.
  # lvlm_emotion: the LVLM judge's greedy reading; colour_emotion: the colour judge, which stays the
  # independent evaluator (judge/* metrics) either way
  # pickscore: the preference model's PickScore / rewards.pickscore.scale, a tripwire against painting noise
  # (the KL keeps the pictures); 0.03: on noise-level-1.0 rollouts its spread within a group (0.23) dwarfs the
  # emotion reward's, and at weights 0.1-1 it sets the ranking and pulls the dark column vivid (README, Status)
  c.rewards.weights = ml_collections.ConfigDict({"lvlm_emotion": 1.0, "colour_emotion": 0.0, "pickscore": 0.03})
  # "none", "batch" or "group": z-score each reward over the batch / each group first; "group_axes": "group"
  # with each emotion reward's valence and arousal terms z-scored apart (emojax.rewards.registry.combine)
  c.rewards.normalize = "none"
  # each emotion reward's distance in the V-A plane (rewards.registry.emotion_distance_reward): "l1" (the judges'
  # own 1 - (|dV| + |dA|) / 12) or "l2" (1 - Euclidean / (6 sqrt 2): at targets no image reaches, lowers both axes)
  c.rewards.emotion_distance = "l2"
  c.rewards.lvlm = cu.lvlm_judge()  # the LVLM judge of lvlm_emotion
  # the preference model of pickscore and the eval/pickscore metric; scale 37.5: pickscore_tiny's mean on clean
  # held-out renders (PickScore_v1: 26, as Flow-GRPO), so a clean picture earns about 1 and colour noise about -0.2
  c.rewards.pickscore = cu.preference_model(scale=37.5)

  c.eval = ml_collections.ConfigDict()
  c.eval.seed = 12345  # held-out EmoShapes seed for eval prompts and noise
  # neutral prompts, each sampled at a 3x3 grid of V-A targets: 16 x 9 = 144 images (a 36-image grid's errors
  # move by 0.05-0.10 with the prompts and noise drawn)
  c.eval.num_prompts = 16
  c.eval.num_steps = 8  # ODE steps
  c.eval.at_start = True  # also evaluate the pretrained generator at step 1 (the "before")
  # also log eval/pickscore, eval/pickscore_min_cell (the lowest V-A cell's mean over prompts: a noise column) and
  # eval/clip_iqa with rewards.pickscore's model
  c.eval.preference = True

  # 1e-3 with the KL above; at 1e-4 the embedding (already trained by the supervised V-A stage) barely moves
  # (eval |dA| +3..+12%), at 1e-3 with Flow-GRPO's KL it walks off into grain (README, Status). Decayed linearly
  # to 0 over the last half (60 of 120 steps): where no image reaches the target (V -2.4, A -2.4) the reward is
  # flat and the embedding random-walks; at a constant 1e-3 that cell turned to grain by step 120 on 2 of 5 seeds
  # (eval/pickscore_min_cell)
  c.optim = cu.optimizer(lr=1e-3, grad_clip=1.0, decay_fraction=0.5)
  c.mesh = cu.mesh()
  c.sharding = cu.sharding(cu.MMDIT_PARAM_RULES)

  if arg.preset == "smoke":
    c.total_steps, c.checkpoint_every, c.eval_every = 3, 2, 3
    c.rl.prompts_per_step, c.rl.group_size, c.rl.num_steps, c.rl.sde_steps = 2, 4, 3, 2
    c.eval.num_prompts, c.eval.num_steps = 1, 2
    c.rewards.lvlm.batch_size = 8
  elif arg.preset == "sd35m":
    sd35m(c)
  elif arg.preset != "default":
    raise ValueError(f"unknown preset {arg.preset!r} for generator; use default, smoke or sd35m")
  return c


def sd35m(c):
  """SD3.5-Medium on a pod: Flow-GRPO's public SD3.5-M setting (LoRA r 32, alpha 64 on the joint attention's
  projections, 10 SDE steps in training, 40 ODE steps in evaluation, CFG 4.5, noise level 0.7, group 24, clip
  1e-4, KL 0.01 (EmoFeedback2 states no beta), lr 3e-4, 512 px) with EmoFeedback2's rewards: the Qwen2.5-VL
  emotion judge and PickScore_v1 (scale 26, as Flow-GRPO). The three directories have no default."""
  c.total_steps, c.checkpoint_every, c.eval_every = 1000, 50, 50
  c.model.kind, c.model.resolution, c.model.frozen = "sd3", 512, ("transformer",)
  c.model.dtype, c.model.remat = "bfloat16", "full"
  c.model.lora = cu.lora(rank=32, alpha=64.0)
  c.rl.prompts_per_step, c.rl.group_size, c.rl.grad_accum = 8, 24, 8
  c.rl.num_steps, c.rl.sde_steps, c.rl.cfg_scale, c.rl.noise_level = 10, 0, 4.5, 0.7
  c.rl.shared_init_noise, c.rewards.emotion_distance = False, "l1"
  c.rl.clip_eps, c.rl.kl_beta, c.rl.timestep_fraction = 1e-4, 0.01, 1.0
  c.rl.old_logprob = "update"  # bf16: the sampler's log-probs differ from the update's by ~3e-3 (README)
  c.rewards.weights = ml_collections.ConfigDict({"lvlm_emotion": 1.0, "colour_emotion": 0.0, "pickscore": 1.0})
  c.rewards.lvlm = cu.lvlm_judge(batch_size=16, max_prompt_len=512, max_new_tokens=256)  # 512 px: 324 image tokens
  c.rewards.lvlm.dtype, c.rewards.lvlm.mesh = "bfloat16", "train"  # the 7B judge sharded over the job's mesh
  c.rewards.pickscore = cu.preference_model(scale=26.0, batch_size=32)
  c.rewards.pickscore.iqa_pair = ("Good photo.", "Bad photo.")
  c.eval.num_prompts, c.eval.num_steps = 8, 40
  c.optim = cu.optimizer(lr=3e-4, grad_clip=1.0)


RANGES = {
    **cu.RUN_RANGES, **cu.OPTIM_RANGES, **cu.MESH_RANGES, **cu.SHARDING_RANGES, **cu.lvlm_judge_ranges("rewards.lvlm"),
    "task": cu.OneOf("generator_grpo"), "export_dtype": cu.OneOf(*cu.DTYPES),
    "model.kind": cu.OneOf("tiny", "sd3"), "model.pretrained": cu.STR, "model.frozen": cu.Names(*GENERATOR_GROUPS),
    "model.resolution": cu.Int(0), "model.max_sequence_length": cu.Int(1), "model.emotion_tokens": cu.Int(1),
    "model.dtype": cu.OneOf("float32", "bfloat16"),
    "model.remat": cu.OneOf(*cu.REMATS), "model.scan_layers": cu.BOOL, **cu.lora_ranges("model.lora"),
    "data.name": cu.OneOf("emoshapes", "emoset_va"), "data.dir": cu.STR, "data.config": cu.STR,
    "data.workers": cu.Int(0),
    "data.seed": cu.Int(0), "data.num_examples": cu.Int(1), "data.target_mode": cu.OneOf("uniform", "data"),
    "data.prompt_field": cu.OneOf("prompt", "emotional_prompt"),
    "rl.prompts_per_step": cu.Int(1), "rl.group_size": cu.Int(2), "rl.num_steps": cu.Int(1, 1000),
    "rl.shift": cu.Positive(), "rl.noise_level": cu.Float(0.0, 2.0, lo_open=True), "rl.cfg_scale": cu.Float(0.0),
    "rl.clip_eps": cu.Positive(), "rl.kl_beta": cu.Float(0.0), "rl.adv_clip": cu.Positive(), "rl.adv_eps": cu.Positive(),
    "rl.adv_std": cu.OneOf("group", "batch"),
    "rl.timestep_fraction": cu.Fraction(lo_open=True), "rl.sde_steps": cu.Int(0), "rl.grad_accum": cu.Int(1), "rl.inner_epochs": cu.Int(1),
    "rl.ratio_tolerance": cu.Float(0.0), "rl.shared_init_noise": cu.BOOL, "rl.old_logprob": cu.OneOf("rollout", "update"),
    **cu.preference_model_ranges("rewards.pickscore"),
    "rewards.weights.*": cu.Float(0.0), "rewards.normalize": cu.OneOf("none", "batch", "group", "group_axes"),
    "rewards.emotion_distance": cu.OneOf("l1", "l2"),
    "eval.seed": cu.Int(0), "eval.num_prompts": cu.Int(1), "eval.num_steps": cu.Int(1, 1000), "eval.at_start": cu.BOOL,
    "eval.preference": cu.BOOL,
}
