"""One generator GRPO update at SD3 scale's shape (configs/generator.py:sd35m: LoRA r 32 on the eight attention
projections, CFG 4.5, 10 SDE timesteps, KL to the LoRA-off reference): emojax's jitted update vs the same update
in PyTorch with diffusers' SD3Transformer2DModel and a peft adapter, same process, same CPU.

  python -m bench.sd3_grpo_update --dtype=fp32
  python -m bench.sd3_grpo_update --dtype=bf16 --group=24 --grad_accum=8

Both sides use the small random-weight pipeline tests/goldens/sd3_pipeline/ (latents (B, 8, 8, 16), 2 joint blocks).
emojax: `GeneratorGRPO` on the sd35m preset (one prompt, --group rows, --grad_accum micro-batches), one rollout and
its rewards computed once, then its jitted `train_step` timed (policy + reference forwards at every timestep, the
backward, AdamW on LoRA and the V-A embedding). PyTorch: the same work as Flow-GRPO writes it, eager: per
micro-batch and timestep, the CFG forward of the adapted transformer (rows [cond; uncond]), the SDE mean and
log-prob in fp32, the clipped loss, the reference forward with the adapter disabled under no_grad, the flow KL,
backward; then AdamW on the adapter (--dtype=bf16: torch.autocast on the CPU). Inputs are random tensors of the
same shapes (the speed does not depend on their values). Times: medians of --repeats after --warmup, round-robin.

--width=real (python -m bench.sd3_grpo_update --width=real [--dtype=bf16]) times the same update with the transformer
widened to bench/mmdit_train.py's shape: a random-weight copy of the pipeline is written to a temporary directory
with transformer/ replaced by 2 joint blocks of width 1536 (24 heads x 64, rms qk-norm, dual attention in block 0,
the last block context-pre-only), patch 2, 16 channels, a 32x32 latent (256 image tokens; 128 px through the small
VAE) and pos_embed_max_size 384 (SD3.5-M's; --pos_embed_max_size); the T5 length is 140, so the transformer sees
16 CLIP + 140 T5 + 4 V-A tokens = 160 text tokens on both sides. Real-size: the blocks' width, heads, head dim, MLP,
qk-norm, dual attention, the token counts, LoRA r 32 on the same projections, CFG, the reference forward, the
clipped loss and the KL. Not real-size: 2 of SD3.5-M's 24 blocks; joint_attention_dim stays 48 and
pooled_projection_dim 40 (SD3Pipeline requires them to equal the small pipeline's T5 width and CLIP pooled widths,
which are kept with its VAE, tokenizers and scheduler), so the context embedder is 48 -> 1536 instead of
4096 -> 1536 and the pooled embedder 40 -> 1536 instead of 2048 -> 1536 (together < 1% of a forward at SD3.5-M
width). Defaults shrink to what fits a few minutes on 2 cores: --group=2 --grad_accum=1 --num_steps=2 (every step
trained: 2 timesteps), rollout/decode chunks 1. Differences from --width=small: the torch side also gets the 4
V-A tokens in its context (small: 272 tokens against emojax's 276).
"""
import argparse
import dataclasses
import os
import pathlib
import shutil
import tempfile

import jax
import numpy as np

from bench import common

PIPELINE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens" / "sd3_pipeline"
# --width=real: bench/mmdit_train.py's transformer shape (joint / pooled dims stay the small pipeline's)
REAL = dict(num_layers=2, attention_head_dim=64, num_attention_heads=24, caption_projection_dim=1536,
            dual_attention_layers=(0,), qk_norm="rms_norm", patch_size=2, in_channels=16, out_channels=16)
# per --width: group, grad_accum, rl.num_steps, T5 max_sequence_length (None: the preset's)
WIDTH_DEFAULTS = {"small": (24, 8, None, None), "real": (2, 1, 2, 140)}


def real_width_pipeline(directory: str, latent: int, pos_embed_max_size: int, seed: int = 0):
  """Writes a copy of PIPELINE to `directory` whose transformer/ is REAL-shaped with random weights
  (common.random_params); the VAE, text encoders, tokenizers and scheduler are the small pipeline's. -> config."""
  from emojax.io import hf_weights
  from emojax.models import mmdit
  from emojax.pipelines import tiny
  shutil.copytree(PIPELINE, directory, ignore=shutil.ignore_patterns("transformer"))
  small = mmdit.MMDiTConfig.from_json(PIPELINE / "transformer" / "config.json")
  config = dataclasses.replace(small, **REAL, sample_size=latent, pos_embed_max_size=pos_embed_max_size)
  state = mmdit.to_diffusers_state_dict(jax.device_get(common.random_params(config, jax.random.key(seed))))
  hf_weights.write_pretrained(os.path.join(directory, "transformer"), "diffusion_pytorch_model", state,
                              {**tiny.DIFFUSERS_TRANSFORMER, **config.to_dict()})
  return config


def emojax_update(dtype: str, group: int, grad_accum: int, remat: str, pipeline=PIPELINE, real: bool = False,
                  num_steps: int | None = None, max_sequence_length: int | None = None, remat_timesteps: str = "preset"):
  """(call, info): a blocking call of the task's jitted train step on one rollout's batch."""
  from configs import generator as generator_cfg
  from emojax.io import assets
  from emojax.tasks.generator_grpo import GeneratorGRPO
  c = generator_cfg.get_config("sd35m")
  c.unlock()
  # real: resolution 0 = the transformer's sample_size x the VAE factor
  c.model.pretrained, c.model.resolution, c.mesh.num_devices = str(pipeline), 0 if real else 32, 1
  c.model.dtype, c.model.remat = {"fp32": "float32", "bf16": "bfloat16"}[dtype], remat
  c.rl.prompts_per_step, c.rl.group_size, c.rl.grad_accum = 1, group, grad_accum
  if num_steps is not None:
    c.rl.num_steps = num_steps
  if max_sequence_length is not None:
    c.model.max_sequence_length = max_sequence_length
  if remat_timesteps != "preset":
    c.rl.remat_timesteps = remat_timesteps == "on"
  if real:  # the preset's 6 / 24 chunks do not divide a small group
    c.rl.rollout_chunks = c.rl.decode_chunks = 1
  c.rewards.weights = {"colour_emotion": 1.0}  # an in-graph reward: no judge needed for the batch
  c.rewards.lvlm.path, c.rewards.pickscore.path = assets.asset_dir("lvlm_tiny"), assets.asset_dir("pickscore_tiny")
  c.eval.preference = False
  task = GeneratorGRPO(c)
  rng = jax.random.key(0)
  state = jax.device_put(task.initial_state(rng, None))
  constants = jax.device_put(task.constants())
  batch = jax.device_put(task.host_batch(next(iter(task.make_loader(0, 1)))))
  batch = {**batch, **jax.jit(task.experience)(state, batch, rng, constants)}
  step, compile_s = common.compile_jax(task.train_step, state, batch, rng, constants)
  info = {"rows": group, "timesteps": task.hp.train_timesteps, "context_len": int(batch["text"]["context"].shape[1]),
          "emojax_compile_s": compile_s, "remat_timesteps": bool(task.hp.remat_timesteps)}
  return (lambda: common.block(step(state, batch, rng, constants))), info, task


def torch_update(dtype: str, group: int, grad_accum: int, timesteps: int, context_len: int, task, pipeline=PIPELINE):
  import torch
  from diffusers import SD3Transformer2DModel
  from peft import LoraConfig
  torch.manual_seed(0)
  model = SD3Transformer2DModel.from_pretrained(pathlib.Path(pipeline) / "transformer")
  lora = task.config.model.lora
  model.add_adapter(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.target_modules),
                               init_lora_weights="gaussian"))
  params = [p for n, p in model.named_parameters() if "lora" in n]
  for n, p in model.named_parameters():
    p.requires_grad_("lora" in n)
  opt = torch.optim.AdamW(params, lr=3e-4)
  tc, b = model.config, group // grad_accum
  side = task.policy.image_shape[0]  # the latent side (8 on the small pipeline)
  x = torch.randn(grad_accum, timesteps, b, tc.in_channels, side, side)
  x_next = x + 0.01 * torch.randn_like(x)
  ctx = torch.randn(2 * b, context_len, tc.joint_attention_dim)
  pooled = torch.randn(2 * b, tc.pooled_projection_dim)
  sigmas = torch.linspace(1.0, 0.1, timesteps + 1)
  adv, old_lp = torch.randn(grad_accum, b), torch.zeros(grad_accum, timesteps, b)
  g, a, eps, beta = task.config.rl.cfg_scale, task.config.rl.noise_level, task.config.rl.clip_eps, task.config.rl.kl_beta
  autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

  def velocity(xt, sigma):
    with autocast:
      v = model(hidden_states=torch.cat([xt, xt]), encoder_hidden_states=ctx, pooled_projections=pooled,
                timestep=torch.full((2 * b,), float(sigma) * 1000)).sample.float()
    v_c, v_u = v.chunk(2)
    return v_u + g * (v_c - v_u)

  def step():
    opt.zero_grad(set_to_none=True)
    for m in range(grad_accum):
      for t in range(timesteps):
        s, s_next = sigmas[t], sigmas[t + 1]
        dt = s_next - s
        sig_t = a * torch.sqrt(s / (1 - (s_next if s == 1 else s)))
        xt, xn = x[m, t], x_next[m, t]
        mean_of = lambda v: xt * (1 + sig_t ** 2 * dt / (2 * s)) + v * (1 + sig_t ** 2 * (1 - s) / (2 * s)) * dt
        std = sig_t * torch.sqrt(-dt)
        mean = mean_of(velocity(xt, s))
        lp = (-((xn - mean) ** 2) / (2 * std ** 2) - torch.log(std) - 0.9189385).mean((1, 2, 3))
        ratio = torch.exp(lp - old_lp[m, t])
        loss = torch.maximum(-adv[m] * ratio, -adv[m] * ratio.clamp(1 - eps, 1 + eps)).mean()
        with torch.no_grad():
          model.disable_adapters()
          mean_ref = mean_of(velocity(xt, s))
          model.enable_adapters()
        kl = (((mean - mean_ref) ** 2).mean((1, 2, 3)) / (2 * sig_t ** 2)).mean()
        ((loss + beta * kl) / (grad_accum * timesteps)).backward()
    opt.step()

  return step, {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
  p.add_argument("--width", default="small", choices=sorted(WIDTH_DEFAULTS),
                 help="small: the 16-wide test pipeline; real: its transformer widened to mmdit_train's shape")
  p.add_argument("--group", type=int, default=None, help="rows of the update (one GRPO group); small 24, real 2")
  p.add_argument("--grad_accum", type=int, default=None, help="micro-batches; small 8, real 1")
  p.add_argument("--num_steps", type=int, default=None,
                 help="rl.num_steps, all trained (timesteps per row); small: the preset's 10, real 2")
  p.add_argument("--max_sequence_length", type=int, default=None, help="T5 tokens; small: the preset's 256, real 140")
  p.add_argument("--pos_embed_max_size", type=int, default=384, help="real: the transformer's pos-embed grid")
  p.add_argument("--remat", default="none", help="emojax's joint-block remat (the preset's: full; torch stores all)")
  p.add_argument("--remat_timesteps", default="preset", choices=("preset", "on", "off"),
                 help="emojax's rl.remat_timesteps (the preset's: on, one more forward per timestep; torch: off)")
  p.add_argument("--torch_threads", default="2", help="comma list of torch.set_num_threads values, each timed in the "
                 "same rounds; 2 gives the unsuffixed keys, others _<n>thr")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  group, grad_accum, num_steps, max_len = (
      given if given is not None else default for given, default in
      zip((a.group, a.grad_accum, a.num_steps, a.max_sequence_length), WIDTH_DEFAULTS[a.width]))
  real = a.width == "real"
  with tempfile.TemporaryDirectory(prefix="sd3_real_width_") as tmp:
    pipeline, extra = PIPELINE, {}
    if real:
      pipeline = os.path.join(tmp, "pipeline")
      tc = real_width_pipeline(pipeline, latent=32, pos_embed_max_size=a.pos_embed_max_size)
      extra = {"layers": tc.num_layers, "transformer_width": tc.inner_dim, "image_tokens": (32 // tc.patch_size) ** 2,
               "joint_attention_dim": tc.joint_attention_dim, "pooled_projection_dim": tc.pooled_projection_dim,
               "pos_embed_max_size": tc.pos_embed_max_size}
    ours, info, task = emojax_update(a.dtype, group, grad_accum, a.remat, pipeline, real, num_steps, max_len,
                                     a.remat_timesteps)
    # real: the transformer's whole context (text + the V-A tokens emojax appends); small: as it always was
    ctx_len = info["context_len"] + (task.policy.emotion_tokens if real else 0)
    theirs, tinfo = torch_update(a.dtype, group, grad_accum, info["timesteps"], ctx_len, task, pipeline)
    import torch

    def with_threads(n):
      def call():
        torch.set_num_threads(n)
        theirs()
      return call

    threads = [int(n) for n in a.torch_threads.split(",") if n]
    tags = {n: "" if n == 2 else f"_{n}thr" for n in threads}
    calls = {"emojax": ours, **{"torch" + tags[n]: with_threads(n) for n in threads}}
    times = common.time_interleaved(calls, a.warmup, a.repeats)
  rec = {"bench": "sd3_grpo_update", "width": a.width, "dtype": a.dtype, "grad_accum": grad_accum, "remat": a.remat,
         **info, **extra, "torch_context_len": ctx_len, **tinfo, "torch_threads": threads[0] if len(threads) == 1 else threads,
         "emojax_update_s": times["emojax"]["median_s"]}
  for n in threads:
    rec[f"torch_update{tags[n]}_s"] = times["torch" + tags[n]]["median_s"]
    rec[f"torch_over_emojax{tags[n]}"] = times["torch" + tags[n]]["median_s"] / times["emojax"]["median_s"]
  if len(threads) > 1:
    rec["torch_best_over_emojax"] = min(rec[f"torch_update{tags[n]}_s"] for n in threads) / rec["emojax_update_s"]
  if real:  # policy forward + its backward (frozen weights: activations only, ~1 forward) + reference, CFG rows
    fwd = common.forward_flops(tc, 2 * group // grad_accum, ctx_len)  # one CFG forward of a micro-batch
    rec["gflop_update_est"] = 3 * fwd * grad_accum * info["timesteps"] / 1e9
    rec["emojax_gflop_per_s_est"] = rec["gflop_update_est"] / rec["emojax_update_s"]
  rec["times"] = {k: v["times_s"] for k, v in times.items()}
  common.emit({**rec, **common.env_info()})


if __name__ == "__main__":
  main()
