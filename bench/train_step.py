"""GRPO generator update throughput (transitions/s) on random weights and a synthetic rollout.

  python -m bench.train_step --config=small --batch=2 --timesteps=2
  python -m bench.train_step --config=small --batch=2 --timesteps=2 --remat=dots_no_batch   # or full

One jitted update: value_and_grad of a scan over K timesteps of [policy forward -> sde_step
scoring the stored x_next -> clipped_policy_loss; frozen reference forward -> flow_kl], then an
optax adamw update (params and optimizer state donated and carried between calls). This is the
core of emojax.rl.generator_step.micro_loss/update without the text encoder, classifier-free
guidance (which doubles every forward), rewards or rollout: the full train step needs the
pretrained asset, so it is not benchmarked here. One transition = one (sample, timestep) pair.
"""
import jax
import jax.numpy as jnp
import optax

from bench import common
from emojax.diffusion import schedule
from emojax.diffusion.sde import sde_sigma_t, sde_step
from emojax.models import mmdit
from emojax.rl.grpo import clipped_policy_loss, flow_kl


def make_fns(model, noise_level, clip_eps, kl_beta, optimizer):
  def velocity(params, x, sigma, ctx, pooled):
    t = jnp.full((x.shape[0],), sigma * 1000.0, jnp.float32)
    return model.apply({"params": params}, x.astype(model.dtype), ctx, pooled, t)

  def sample(params, batch, key):
    """Rollout-like transitions at the batch's K (x, sigma): (x_next, log_prob), each (K, B, ...)."""
    def per_t(_, s):
      v = velocity(params, s["x"], s["sigma"], batch["ctx"], batch["pooled"])
      return None, sde_step(v, s["x"], s["sigma"], s["sigma_next"], noise_level, key=s["key"])[:2]
    keys = jax.random.split(key, batch["x"].shape[0])
    return jax.lax.scan(per_t, None, {**_steps(batch), "key": keys})[1]

  def loss_fn(params, ref_params, batch):
    def per_t(total, s):
      v = velocity(params, s["x"], s["sigma"], batch["ctx"], batch["pooled"])
      _, lp, mean, _ = sde_step(v, s["x"], s["sigma"], s["sigma_next"], noise_level, x_next=s["x_next"])
      pl, st = clipped_policy_loss(lp, s["log_prob"], batch["advantages"], clip_eps)
      v_ref = jax.lax.stop_gradient(velocity(ref_params, s["x"], s["sigma"], batch["ctx"], batch["pooled"]))
      _, _, mean_ref, _ = sde_step(v_ref, s["x"], s["sigma"], s["sigma_next"], noise_level, x_next=s["x_next"])
      kl = flow_kl(mean, mean_ref, sde_sigma_t(s["sigma"], s["sigma_next"], noise_level)).mean()
      return total + pl.mean() + kl_beta * kl, (st["ratio_max_dev"], kl)
    total, (dev, kl) = jax.lax.scan(per_t, 0.0, _steps(batch))
    return total / dev.shape[0], {"ratio_dev": dev.max(), "kl": kl.mean()}

  def update(params, opt_state, ref_params, batch):
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, ref_params, batch)
    updates, opt_state = optimizer.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss, **aux}

  return sample, update


def _steps(batch):
  return {k: batch[k] for k in ("x", "x_next", "sigma", "sigma_next", "log_prob") if k in batch}


def main():
  p = common.parser(__doc__, batch=4, repeats=3)
  p.add_argument("--timesteps", type=int, default=2, help="K trained timesteps per sample")
  p.add_argument("--steps", type=int, default=10, help="sampling steps T the K timesteps are drawn from")
  p.add_argument("--noise_level", type=float, default=0.7)
  p.add_argument("--clip_eps", type=float, default=1e-4)
  p.add_argument("--kl_beta", type=float, default=0.04)
  p.add_argument("--lr", type=float, default=1e-5)
  p.add_argument("--remat", default="none", help="joint-block rematerialisation: none or a mmdit.REMAT_POLICIES key")
  p.add_argument("--scan_layers", action="store_true", help="run identical joint blocks as one lax.scan")
  a = p.parse_args()

  config = common.get_config(a.config)
  dtype = common.DTYPES[a.dtype]  # compute dtype; params and optimizer state stay fp32
  model = mmdit.MMDiT(config, dtype=dtype, param_dtype=jnp.float32, remat=a.remat, scan_layers=a.scan_layers)
  k_params, k_in, k_x = jax.random.split(jax.random.key(a.seed), 3)
  params = common.random_params(config, k_params)
  ref_params = jax.tree.map(jnp.copy, params)
  _, ctx, pooled = common.inputs(config, a.batch, a.context_len, k_in)
  s, k, b = config.sample_size, a.timesteps, a.batch
  sigmas = schedule.sd3_sigmas(a.steps)
  idx = jnp.linspace(0, a.steps - 1, k).round().astype(jnp.int32)  # spread over the trajectory
  k_x, k_sample = jax.random.split(k_x)
  batch = {
      "x": jax.random.normal(k_x, (k, b, s, s, config.in_channels)),
      "sigma": jnp.asarray(sigmas)[idx], "sigma_next": jnp.asarray(sigmas)[idx + 1],
      "ctx": ctx.astype(dtype), "pooled": pooled.astype(dtype),
      "advantages": jnp.linspace(-1.0, 1.0, b),
  }
  optimizer = optax.adamw(a.lr, weight_decay=1e-4)
  opt_state = optimizer.init(params)
  sample, update = make_fns(model, a.noise_level, a.clip_eps, a.kl_beta, optimizer)
  batch["x_next"], batch["log_prob"] = jax.jit(sample)(params, batch, k_sample)  # on-policy transitions

  step, compile_s = common.compile_jax(update, params, opt_state, ref_params, batch, donate_argnums=(0, 1))
  state = {"params": params, "opt_state": opt_state}

  def call():
    state["params"], state["opt_state"], m = step(state["params"], state["opt_state"], ref_params, batch)
    return common.block(m)

  first = {k: float(v) for k, v in call().items()}  # the on-policy update: ratio_dev must be ~0
  t = common.time_calls(call, max(a.warmup - 1, 0), a.repeats)
  flops_fwd = common.forward_flops(config, b, a.context_len)
  flops_step = 4 * flops_fwd * k  # policy fwd + bwd (~2x fwd) + reference fwd, per timestep

  rec = {"bench": "train_step", "config": a.config, "dtype": a.dtype, "batch": b, "timesteps": k,
         "context_len": a.context_len, "params_m": common.num_params(params) / 1e6,
         "transitions_per_s": b * k / t["median_s"], "step_s": t["median_s"], "times_s": t["times_s"],
         "compile_s": compile_s, "gflop_per_step_est": flops_step / 1e9,
         "gflop_per_s_est": flops_step / t["median_s"] / 1e9,
         "first_ratio_dev": first["ratio_dev"], "first_loss": first["loss"], "remat": a.remat,
         "scan_layers": a.scan_layers}
  mem = step.memory_analysis()  # XLA's buffer assignment of the compiled update
  if mem is not None:
    rec.update({f"xla_{k}_mb": getattr(mem, f"{k}_size_in_bytes") / 2**20
                for k in ("argument", "output", "temp", "generated_code")})
  rec.update(common.env_info())
  common.emit(rec)


if __name__ == "__main__":
  main()
