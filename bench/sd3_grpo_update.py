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
"""
import argparse
import pathlib

import jax
import numpy as np

from bench import common

PIPELINE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens" / "sd3_pipeline"


def emojax_update(dtype: str, group: int, grad_accum: int, remat: str):
  """(call, info): a blocking call of the task's jitted train step on one rollout's batch."""
  from configs import generator as generator_cfg
  from emojax.io import assets
  from emojax.tasks.generator_grpo import GeneratorGRPO
  c = generator_cfg.get_config("sd35m")
  c.unlock()
  c.model.pretrained, c.model.resolution, c.mesh.num_devices = str(PIPELINE), 32, 1
  c.model.dtype, c.model.remat = {"fp32": "float32", "bf16": "bfloat16"}[dtype], remat
  c.rl.prompts_per_step, c.rl.group_size, c.rl.grad_accum = 1, group, grad_accum
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
          "emojax_compile_s": compile_s}
  return (lambda: common.block(step(state, batch, rng, constants))), info, task


def torch_update(dtype: str, group: int, grad_accum: int, timesteps: int, context_len: int, task):
  import torch
  from diffusers import SD3Transformer2DModel
  from peft import LoraConfig
  torch.manual_seed(0)
  model = SD3Transformer2DModel.from_pretrained(PIPELINE / "transformer")
  lora = task.config.model.lora
  model.add_adapter(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.target_modules),
                               init_lora_weights="gaussian"))
  params = [p for n, p in model.named_parameters() if "lora" in n]
  for n, p in model.named_parameters():
    p.requires_grad_("lora" in n)
  opt = torch.optim.AdamW(params, lr=3e-4)
  tc, b = model.config, group // grad_accum
  x = torch.randn(grad_accum, timesteps, b, tc.in_channels, 8, 8)
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
  p.add_argument("--group", type=int, default=24, help="rows of the update (one GRPO group)")
  p.add_argument("--grad_accum", type=int, default=8, help="micro-batches")
  p.add_argument("--remat", default="none", help="emojax's joint-block remat (the preset's: full; torch stores all)")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  ours, info, task = emojax_update(a.dtype, a.group, a.grad_accum, a.remat)
  theirs, tinfo = torch_update(a.dtype, a.group, a.grad_accum, info["timesteps"], info["context_len"], task)
  times = common.time_interleaved({"emojax": ours, "torch": theirs}, a.warmup, a.repeats)
  common.emit({"bench": "sd3_grpo_update", "dtype": a.dtype, "grad_accum": a.grad_accum, "remat": a.remat, **info, **tinfo,
               "emojax_update_s": times["emojax"]["median_s"], "torch_update_s": times["torch"]["median_s"],
               "torch_over_emojax": times["torch"]["median_s"] / times["emojax"]["median_s"],
               "times": {k: v["times_s"] for k, v in times.items()}, **common.env_info()})


if __name__ == "__main__":
  main()
