"""Sampling a whole trajectory as one `lax.scan`, and classifier-free guidance."""
import numbers
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from emojax.diffusion import sde

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class Trajectory:
  """Time-major record of a rollout; T = number of steps.

  x: (T, B, ...) input of each step; x_next: (T, B, ...) its output (x_next[t] == x[t + 1]);
  log_prob: (T, B), or None for the ODE and for rollouts without log-prob;
  sigma, sigma_next: (T,) the step's noise levels.
  """
  x: jax.Array
  x_next: jax.Array
  log_prob: Optional[jax.Array]
  sigma: jax.Array
  sigma_next: jax.Array


def rollout(velocity_fn: VelocityFn, x_init, sigmas, key, *, noise_level,
            method: str = "sde", with_logprob: bool = True, sde_steps: int | None = None):
  """Integrates x_init from sigmas[0] down to sigmas[-1].

  Args:
    velocity_fn: (x, sigma) -> v, sigma a float32 scalar; closes over params, conditioning
      and guidance.
    x_init: (B, ...) noise at sigmas[0].
    sigmas: (T + 1,) decreasing schedule, e.g. `sd3_sigmas(T)`.
    key: PRNG key; step t draws its noise from `jax.random.split(key, T)[t]`.
    noise_level: the SDE/CPS noise level a (ignored by "ode").
    method: "sde" (Flow-GRPO), "cps" or "ode" (Euler).
    with_logprob: record log-probs. False skips the density but draws the same noise, so
      the images match the with-log-prob rollout of the same key (up to float rounding:
      XLA fuses the two programs differently, ~1 ulp per step on CPU). The ODE never has
      log-probs.
    sde_steps: with "sde"/"cps", only the first sde_steps steps are stochastic and the rest
      Euler steps (None = all). Noise injected late is never denoised: in pixel space, or
      with few steps, a stochastic last step leaves its noise in the image. The Trajectory
      then records the stochastic steps only (the ones with a density), and those steps
      match the all-stochastic rollout of the same key.

  Returns:
    (x_final float32 (B, ...), Trajectory).
  """
  if method not in ("sde", "cps", "ode"):
    raise ValueError(f"unknown rollout method {method!r}")
  sigmas = jnp.asarray(sigmas, jnp.float32)
  num_steps = sigmas.shape[0] - 1
  step_fn = {"sde": sde.sde_step, "cps": sde.cps_step}.get(method)
  with_logprob = with_logprob and step_fn is not None
  k = num_steps if sde_steps is None or step_fn is None else int(sde_steps)
  if not 1 <= k <= num_steps:
    raise ValueError(f"sde_steps={sde_steps} must be in [1, {num_steps}] (the number of steps)")

  def body(x, step):
    sigma, sigma_next, step_key = step
    v = velocity_fn(x, sigma)
    if step_fn is None:
      x_next, log_prob = sde.ode_step(v, x, sigma, sigma_next), None
    else:
      x_next, log_prob, _, _ = step_fn(v, x, sigma, sigma_next, noise_level, key=step_key)
      # Without log-prob, XLA prunes the density; the mean and noise are the same.
      log_prob = log_prob if with_logprob else None
    return x_next, (x, x_next, log_prob)

  def ode_body(x, step):
    sigma, sigma_next = step
    return sde.ode_step(velocity_fn(x, sigma), x, sigma, sigma_next), None

  steps = (sigmas[:k], sigmas[1:k + 1], jax.random.split(key, num_steps)[:k])
  x, (xs, x_nexts, log_probs) = jax.lax.scan(body, jnp.asarray(x_init, jnp.float32), steps)
  if k < num_steps:
    x, _ = jax.lax.scan(ode_body, x, (sigmas[k:-1], sigmas[k + 1:]))
  return x, Trajectory(xs, x_nexts, log_probs, sigmas[:k], sigmas[1:k + 1])


def _per_sample(sigma, x) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])


def cfg_velocity(apply_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
                 cond, uncond, scale) -> VelocityFn:
  """Classifier-free guidance as a `velocity_fn`: v = v_u + scale·(v_c − v_u).

  `apply_fn(x, sigma_batch, cond_pytree) -> v` receives sigma (not sigma·1000) broadcast to
  (batch,); sigma may be a scalar (a rollout step) or per sample (batch,) (GRPO re-scoring). Conditioned and
  unconditioned halves run as one forward on the interleaved batch [c_0, u_0, c_1, u_1, ...] (every leaf of
  cond/uncond has batch as dim 0): sample i's two rows stay where row i is, so a batch-sharded rollout stays
  sharded (a concatenation [cond; uncond] would move rows across devices, and XLA replicates it instead).
  A Python `scale` of 1 or None skips the unconditioned half.
  """
  if scale is None or (isinstance(scale, numbers.Real) and scale == 1):
    return lambda x, sigma: apply_fn(x, _per_sample(sigma, x), cond)
  pair = lambda c, u: jnp.stack([c, u], 1).reshape(c.shape[0] * 2, *c.shape[1:])
  both = jax.tree.map(pair, cond, uncond)

  def velocity_fn(x, sigma):
    sig = _per_sample(sigma, x)
    v = apply_fn(pair(x, x), pair(sig, sig), both)
    v = v.reshape(x.shape[0], 2, *v.shape[1:])
    v_cond, v_uncond = v[:, 0], v[:, 1]
    return v_uncond + scale * (v_cond - v_uncond)

  return velocity_fn
