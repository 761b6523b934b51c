"""Rollout throughput (samples·steps/s) of emojax's one-scan sampler, optionally vs diffusers/PyTorch.

  python -m bench.rollout --config=small --dtype=bf16 --batch=4 --steps=4 --torch

Modes: sde_logprob (Flow-GRPO SDE with log-prob, the GRPO rollout), sde (same noise, no
density), ode (Euler). Each is its own jitted program taking params as an argument; the
returned trajectory (x, x_next, log_prob) is materialised as a training rollout would be.
--torch runs the same SDE rollout with diffusers' SD3Transformer2DModel (same config and
weights) as an eager Python loop under torch.inference_mode().
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from emojax.diffusion.rollout import rollout as run_rollout
from emojax.diffusion import schedule
from emojax.models import mmdit

MODES = {"sde_logprob": ("sde", True), "sde": ("sde", False), "ode": ("ode", False)}


def make_rollout(model, sigmas, method, with_logprob, noise_level):
  def fn(params, x_init, ctx, pooled, key):
    def velocity(x, sigma):
      t = jnp.full((x.shape[0],), sigma * 1000.0, jnp.float32)
      return model.apply({"params": params}, x.astype(model.dtype), ctx, pooled, t)
    return run_rollout(velocity, x_init, sigmas, key, noise_level=noise_level, method=method,
                       with_logprob=with_logprob)
  return fn


def torch_transformer(config, params):
  """diffusers' SD3Transformer2DModel of `config` holding emojax `params` (via to_diffusers_state_dict), fp32."""
  import torch
  from diffusers import SD3Transformer2DModel
  from diffusers.utils import logging as diffusers_logging

  diffusers_logging.set_verbosity_error()
  model = SD3Transformer2DModel(**config.to_dict())
  state = {k: torch.from_numpy(np.array(v)) for k, v in mmdit.to_diffusers_state_dict(
      jax.tree.map(lambda w: np.asarray(w, np.float32), params)).items()}
  model.load_state_dict(state, strict=True)
  return model


def make_torch_rollout(config, params, x_init, ctx, pooled, sigmas, noise_level, dtype_name):
  """The same SDE rollout (with log-prob) with diffusers/PyTorch, as a no-argument callable."""
  import torch

  tdt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
  model = torch_transformer(config, params).to(tdt).eval()
  x0 = torch.from_numpy(np.array(x_init)).permute(0, 3, 1, 2).contiguous()  # NCHW fp32
  ctx_t = torch.from_numpy(np.array(ctx, np.float32)).to(tdt)
  pooled_t = torch.from_numpy(np.array(pooled, np.float32)).to(tdt)
  sig = [float(s) for s in sigmas]
  log_sqrt_2pi = 0.5 * math.log(2 * math.pi)
  gen = torch.Generator().manual_seed(0)

  def run():
    xs, x_nexts, lps = [], [], []
    x = x0
    with torch.inference_mode():
      for s, s1 in zip(sig[:-1], sig[1:]):
        t = torch.full((x.shape[0],), s * 1000.0)  # fp32, as emojax
        v = model(x.to(tdt), ctx_t, pooled_t, t, return_dict=False)[0].float()
        sigma_t = noise_level * math.sqrt(s / (1 - (s1 if s == 1 else s)))
        dt = s1 - s
        mean = x * (1 + sigma_t**2 * dt / (2 * s)) + v * ((1 + sigma_t**2 * (1 - s) / (2 * s)) * dt)
        std = sigma_t * math.sqrt(-dt)
        x_next = mean + std * torch.randn(mean.shape, generator=gen)
        lp = (-(x_next - mean) ** 2 / (2 * std**2) - math.log(std) - log_sqrt_2pi).mean(dim=(1, 2, 3))
        xs.append(x)
        x_nexts.append(x_next)
        lps.append(lp)
        x = x_next
    return x, torch.stack(xs), torch.stack(x_nexts), torch.stack(lps)

  return run


def main():
  p = common.parser(__doc__, batch=8)
  p.add_argument("--steps", type=int, default=10, help="sampling steps T")
  p.add_argument("--shift", type=float, default=3.0)
  p.add_argument("--noise_level", type=float, default=0.7)
  p.add_argument("--modes", default=",".join(MODES), help="subset of " + ",".join(MODES))
  p.add_argument("--torch", action="store_true", help="also time diffusers' PyTorch model")
  p.add_argument("--torch_steps", type=int, default=0,
                 help="time torch on only the first N steps (0: all); for torch's very slow CPU bf16")
  p.add_argument("--torch_threads", default="2",
                 help="comma list of torch.set_num_threads values; 2 = the cores XLA uses (unsuffixed keys), "
                      "others get a _<n>thr suffix")
  p.add_argument("--torch_repeats", type=int, default=0, help="timed torch runs (0: --repeats)")
  a = p.parse_args()

  config = common.get_config(a.config)
  dtype = common.DTYPES[a.dtype]
  model = mmdit.MMDiT(config, dtype=dtype, param_dtype=dtype)
  k_params, k_in, k_roll = jax.random.split(jax.random.key(a.seed), 3)
  params = common.random_params(config, k_params, dtype)
  x_init, ctx, pooled = common.inputs(config, a.batch, a.context_len, k_in)
  ctx, pooled = ctx.astype(dtype), pooled.astype(dtype)
  sigmas = schedule.sd3_sigmas(a.steps, a.shift)
  samples_steps = a.batch * a.steps
  flops_fwd = common.forward_flops(config, a.batch, a.context_len)

  rec = {"bench": "rollout", "config": a.config, "dtype": a.dtype, "batch": a.batch, "steps": a.steps,
         "context_len": a.context_len, "params_m": common.num_params(params) / 1e6,
         "gflop_per_forward": flops_fwd / 1e9}
  compiled, compile_s = {}, {}
  args = (params, x_init, ctx, pooled, k_roll)
  for mode in a.modes.split(","):
    compiled[mode], compile_s[mode] = common.compile_jax(
        make_rollout(model, sigmas, *MODES[mode], a.noise_level), *args)
  if "sde_logprob" in compiled:
    xf = common.xla_flops(compiled["sde_logprob"])  # XLA's cost analysis counts the scan body once
    rec["xla_gflop_per_step"] = None if xf is None else xf / 1e9
  # Modes are timed round-robin so that they share the same background load.
  timing = common.time_interleaved({m: (lambda c=c: common.block(c(*args))) for m, c in compiled.items()},
                                   a.warmup, a.repeats)
  sps = {m: samples_steps / t["median_s"] for m, t in timing.items()}
  rec["samples_steps_per_s"] = sps
  rec["samples_steps_per_s_best"] = {m: samples_steps / t["best_s"] for m, t in timing.items()}
  rec["compile_s"] = compile_s
  rec["gflop_per_s"] = {m: flops_fwd * a.steps / t["median_s"] / 1e9 for m, t in timing.items()}
  if "sde" in sps and "sde_logprob" in sps:
    rec["logprob_overhead_pct"] = (sps["sde"] / sps["sde_logprob"] - 1) * 100

  if a.torch:
    import torch
    t_steps = a.torch_steps or a.steps
    rec["torch_steps"] = t_steps
    run = make_torch_rollout(config, params, x_init, ctx, pooled, sigmas[:t_steps + 1], a.noise_level, a.dtype)
    for threads in [int(n) for n in a.torch_threads.split(",")]:
      torch.set_num_threads(threads)
      t = common.time_calls(run, min(a.warmup, 1), a.torch_repeats or a.repeats)
      tag = "" if threads == 2 else f"_{threads}thr"
      rec["torch_samples_steps_per_s" + tag] = a.batch * t_steps / t["median_s"]
      rec["torch_gflop_per_s" + tag] = flops_fwd * t_steps / t["median_s"] / 1e9
      if "sde_logprob" in sps:
        rec["ratio_vs_torch" + tag] = sps["sde_logprob"] / rec["torch_samples_steps_per_s" + tag]
  rec.update(common.env_info())
  common.emit(rec)


if __name__ == "__main__":
  main()
