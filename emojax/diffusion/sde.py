"""One reverse step of a rectified flow: Flow-GRPO SDE, CPS, and Euler ODE.

Conventions shared by every step here:
  * x is at noise level `sigma`, the step goes to `sigma_next < sigma`, dt = sigma_next - sigma.
  * `sigma`, `sigma_next` are Python floats, 0-d arrays or (B,) arrays; (B,) values
    broadcast over x's trailing dims.
  * Arithmetic is float32 whatever the input dtypes (bf16 overflows in the mean).
  * A stochastic step samples when given `key` and scores when given `x_next`; the same code
    computes the log-prob in both modes, so scoring a step's own sample reproduces its
    log-prob bit for bit. The returned x_next is always stop-gradient; mean and log_prob are
    differentiable in `velocity` (and `x`).
  * log_prob has shape (B,): the per-element log-density averaged over all non-batch dims.
"""
import math
import numbers

import jax
import jax.numpy as jnp

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _per_sample(value, ndim):
  """Float32 scalar or (B,) -> broadcastable against a rank-`ndim` batch."""
  value = jnp.asarray(value, jnp.float32)
  if value.ndim == 1:
    value = value.reshape(value.shape + (1,) * (ndim - 1))
  elif value.ndim > 1:
    raise ValueError(f"expected a scalar or (B,) value, got shape {value.shape}")
  return value


def _mean_over_non_batch(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def _check_noise_level(noise_level):
  # Traced values cannot be checked; a = 0 then gives std 0 and a non-finite log-prob.
  if isinstance(noise_level, numbers.Real) and not noise_level > 0:
    raise ValueError(f"noise_level must be > 0 (use ode_step for a = 0), got {noise_level}")


def _sample_or_score(mean, std, key, x_next):
  """x_next ~ N(mean, std²) given key, else the given x_next; float32, stop-gradient."""
  if (key is None) == (x_next is None):
    raise ValueError("pass exactly one of key (sample) or x_next (score)")
  if x_next is None:
    x_next = mean + std * jax.random.normal(key, mean.shape, jnp.float32)
  return jax.lax.stop_gradient(jnp.asarray(x_next, jnp.float32))


def sde_sigma_t(sigma, sigma_next, noise_level):
  """Flow-GRPO noise scale σ_t = a·sqrt(σ / (1 − σ̃)), before the sqrt(−dt) factor.

  σ̃ = σ, except σ̃ = sigma_next where σ == 1 (the first step of an SD3 schedule, where
  sigma_next is the schedule's second sigma), so the first step stays finite. Shapes as
  given (scalar or (B,)); this is the σ_t of the generator KL.
  """
  sigma = jnp.asarray(sigma, jnp.float32)
  sigma_tilde = jnp.where(sigma == 1, jnp.asarray(sigma_next, jnp.float32), sigma)
  return noise_level * jnp.sqrt(sigma / (1 - sigma_tilde))


def sde_step(velocity, x, sigma, sigma_next, noise_level, key=None, x_next=None):
  """Flow-GRPO SDE step with its Gaussian log-prob.

    σ_t = sde_sigma_t(σ, σ', a)
    mean = x·(1 + σ_t²·dt/(2σ)) + v·(1 + σ_t²·(1 − σ)/(2σ))·dt
    std = σ_t·sqrt(−dt)
    x' = mean + std·ε                        (sample mode, given key)
    log_prob = mean_dims log N(x'; mean, std²)

  Exactly one of `key` / `x_next` must be given (else ValueError). A Python `noise_level`
  must be > 0 (ValueError); a = 0 is `ode_step`.

  Returns:
    (x_next, log_prob, mean, std): x_next and mean float32 of x's shape, x_next
    stop-gradient; log_prob (B,); std broadcastable against x (scalar or (B, 1, ...)).
  """
  _check_noise_level(noise_level)
  v = jnp.asarray(velocity, jnp.float32)
  x = jnp.asarray(x, jnp.float32)
  sigma_t = _per_sample(sde_sigma_t(sigma, sigma_next, noise_level), x.ndim)
  sigma, sigma_next = _per_sample(sigma, x.ndim), _per_sample(sigma_next, x.ndim)
  dt = sigma_next - sigma
  mean = (x * (1 + sigma_t**2 * dt / (2 * sigma))
          + v * ((1 + sigma_t**2 * (1 - sigma) / (2 * sigma)) * dt))
  std = sigma_t * jnp.sqrt(-dt)
  x_next = _sample_or_score(mean, std, key, x_next)
  log_density = -((x_next - mean) ** 2) / (2 * std**2) - jnp.log(std) - _LOG_SQRT_2PI
  return x_next, _mean_over_non_batch(log_density), mean, std


def cps_step(velocity, x, sigma, sigma_next, noise_level, key=None, x_next=None):
  """Coefficient-preserving sampling (CPS) step.

    σ_t = σ'·sin(aπ/2);  x̂0 = x − σ·v;  x̂1 = x + (1 − σ)·v
    mean = (1 − σ')·x̂0 + sqrt(σ'² − σ_t²)·x̂1;  std = σ_t;  x' = mean + std·ε
    log_prob = −mean_dims (x' − mean)²       (no normaliser: std cancels in ratios)

  Final step (σ' = 0): std = 0, so x' = mean = x̂0 deterministically and log_prob stays
  finite (0 on its own sample, with zero gradient there). The step explores nothing, so
  leave it out of the policy loss. Exactly one of key / x_next; a Python `noise_level` must
  be > 0.

  Returns (x_next, log_prob, mean, std) as in `sde_step`.
  """
  _check_noise_level(noise_level)
  v = jnp.asarray(velocity, jnp.float32)
  x = jnp.asarray(x, jnp.float32)
  sigma, sigma_next = _per_sample(sigma, x.ndim), _per_sample(sigma_next, x.ndim)
  std = sigma_next * jnp.sin(noise_level * jnp.pi / 2)
  x0_hat = x - sigma * v
  x1_hat = x + (1 - sigma) * v
  # σ'² − σ_t² = σ'²·cos²(aπ/2) ≥ 0; the clamp only absorbs rounding.
  mean = (1 - sigma_next) * x0_hat + jnp.sqrt(jnp.maximum(sigma_next**2 - std**2, 0)) * x1_hat
  x_next = _sample_or_score(mean, std, key, x_next)
  return x_next, -_mean_over_non_batch((x_next - mean) ** 2), mean, std


def ode_step(velocity, x, sigma, sigma_next):
  """Deterministic Euler step x + v·dt (noise level 0), float32."""
  x = jnp.asarray(x, jnp.float32)
  dt = _per_sample(sigma_next, x.ndim) - _per_sample(sigma, x.ndim)
  return x + jnp.asarray(velocity, jnp.float32) * dt
