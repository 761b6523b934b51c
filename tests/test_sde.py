"""SDE / CPS / ODE steps and the scan rollout.

Compiles are the cost here (a threefry sampler takes seconds to compile on a busy 2-core
CPU), so steps are jitted once at module level and most checks reuse one signature:
sampling at shape (4, 8, 8, 3) with Python-float sigmas and noise level NOISE.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emojax import diffusion
from emojax.diffusion import cps_step, ode_step, sd3_sigmas, sde_sigma_t, sde_step

SIGMAS = sd3_sigmas(10, 3.0)
NOISE = 0.7
_sde = jax.jit(sde_step, static_argnames="noise_level")
_cps = jax.jit(cps_step, static_argnames="noise_level")
_ode = jax.jit(ode_step)


def _normal(shape=(4, 8, 8, 3), seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _inputs(shape=(4, 8, 8, 3)):
  return _normal(shape, 0), _normal(shape, 1)


def _sigmas(i):
  return float(SIGMAS[i]), float(SIGMAS[i + 1])


def _velocity(x, sigma):
  """A nonlinear stand-in for the model; sigma is a scalar or (B,)."""
  sigma = jnp.reshape(sigma, jnp.shape(sigma) + (1,) * (x.ndim - jnp.ndim(sigma)))
  return jnp.tanh(1.3 * x + sigma) - 0.5 * x


def test_sample_then_score_is_identical():
  x, v = _inputs()
  x_next, lp, mean, std = _sde(v, x, *_sigmas(3), NOISE, key=jax.random.key(1))
  x_next2, lp2, mean2, std2 = _sde(v, x, *_sigmas(3), NOISE, x_next=x_next)
  np.testing.assert_array_equal(x_next2, x_next)
  np.testing.assert_array_equal(lp2, lp)
  np.testing.assert_array_equal(mean2, mean)
  np.testing.assert_array_equal(std2, std)


def test_hand_computed_mean_and_std():
  # σ = 0.5, σ' = 0.25, a = 0.7: σ_t = 0.7, dt = −0.25,
  # mean = x·(1 − 0.49·0.25) + v·(1 + 0.49·0.5)·(−0.25) = 0.8775·x − 0.31125·v, std = 0.35.
  x, v = _inputs()
  assert float(sde_sigma_t(0.5, 0.25, 0.7)) == pytest.approx(0.7)
  _, _, mean, std = _sde(v, x, 0.5, 0.25, NOISE, key=jax.random.key(0))
  np.testing.assert_allclose(mean, 0.8775 * x - 0.31125 * v, rtol=1e-6, atol=1e-6)
  assert float(std) == pytest.approx(0.35)


def test_log_prob_is_gaussian_density_averaged_over_dims():
  x, v = _inputs()
  sigma, sigma_next = _sigmas(2)
  x_next, lp, _, _ = _sde(v, x, sigma, sigma_next, NOISE, key=jax.random.key(2))
  x, v, x_next = (np.asarray(a, np.float64) for a in (x, v, x_next))
  dt = sigma_next - sigma
  sigma_t = NOISE * math.sqrt(sigma / (1 - sigma))
  mean = x * (1 + sigma_t**2 * dt / (2 * sigma)) + v * (1 + sigma_t**2 * (1 - sigma) / (2 * sigma)) * dt
  var = sigma_t**2 * -dt
  density = -0.5 * (x_next - mean) ** 2 / var - 0.5 * np.log(2 * np.pi * var)
  np.testing.assert_allclose(lp, density.reshape(len(x), -1).mean(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("step", [0, 9], ids=["first", "last"])
def test_end_steps_are_finite(step):
  x, v = _inputs()
  outputs = _sde(v, x, *_sigmas(step), NOISE, key=jax.random.key(3))
  for a in outputs:
    assert np.all(np.isfinite(a))


def test_first_step_uses_next_sigma():
  assert SIGMAS[0] == 1
  np.testing.assert_allclose(sde_sigma_t(1.0, SIGMAS[1], NOISE), NOISE * math.sqrt(1 / (1 - SIGMAS[1])), rtol=1e-6)
  np.testing.assert_allclose(sde_sigma_t(SIGMAS[1], SIGMAS[2], NOISE),
                             NOISE * math.sqrt(SIGMAS[1] / (1 - SIGMAS[1])), rtol=1e-6)


def test_gradient_reaches_velocity_not_x_next():
  x, v = _inputs()
  x_next = _normal(seed=2)

  def total(v, x_next):
    return _sde(v, x, *_sigmas(4), NOISE, x_next=x_next)[1].sum()

  g_v, g_x_next = jax.jit(jax.grad(total, argnums=(0, 1)))(v, x_next)
  assert float(jnp.abs(g_v).max()) > 0
  assert float(jnp.abs(g_x_next).max()) == 0


def test_log_prob_scale_is_per_element():
  x, v = _inputs((2, 32, 32, 3))
  _, _, mean, std = _sde(v, x, *_sigmas(5), NOISE, x_next=x)
  _, lp, _, _ = _sde(v, x, *_sigmas(5), NOISE, x_next=mean + std * _normal(x.shape, 3))
  assert lp.shape == (2,)
  assert np.all(np.abs(lp) < 10)  # a sum over the 3072 dims would be in the thousands


def test_per_sample_sigmas_broadcast():
  x, v = _inputs()
  x_next = _normal(seed=4)
  idx = np.array([0, 3, 7, 9])
  sigma, sigma_next = SIGMAS[idx], SIGMAS[idx + 1]
  _, lp, mean, _ = _sde(v, x, sigma, sigma_next, NOISE, x_next=x_next)
  ode = _ode(v, x, sigma, sigma_next)
  for i in range(len(idx)):
    _, lp_i, mean_i, _ = _sde(v[i:i + 1], x[i:i + 1], sigma[i], sigma_next[i], NOISE, x_next=x_next[i:i + 1])
    np.testing.assert_allclose(lp[i], lp_i[0], rtol=1e-6)
    np.testing.assert_allclose(mean[i], mean_i[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ode[i], x[i] + v[i] * (sigma_next[i] - sigma[i]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("step", [sde_step, cps_step])
def test_argument_errors(step):
  x, v = _inputs()
  with pytest.raises(ValueError, match="exactly one"):
    step(v, x, 0.5, 0.4, NOISE)
  with pytest.raises(ValueError, match="exactly one"):
    step(v, x, 0.5, 0.4, NOISE, key=jax.random.key(0), x_next=x)
  with pytest.raises(ValueError, match="noise_level"):
    step(v, x, 0.5, 0.4, 0.0, x_next=x)


def test_ode_step_is_sde_mean_without_noise():
  x, v = _inputs()
  for i in (0, 5, 9):
    _, _, mean, _ = _sde(v, x, *_sigmas(i), 1e-6, x_next=x)
    np.testing.assert_allclose(_ode(v, x, *_sigmas(i)), mean, atol=1e-6)
  np.testing.assert_allclose(_ode(v, x, 0.5, 0.25), x - 0.25 * v, atol=1e-7)


def test_cps_step():
  x, v = _inputs()
  sigma, sigma_next = _sigmas(4)
  x_next, lp, mean, std = _cps(v, x, sigma, sigma_next, NOISE, key=jax.random.key(7))
  sigma_t = sigma_next * math.sin(NOISE * math.pi / 2)
  expected = (1 - sigma_next) * (x - sigma * v) + math.sqrt(sigma_next**2 - sigma_t**2) * (x + (1 - sigma) * v)
  np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-6)
  assert float(std) == pytest.approx(sigma_t)
  np.testing.assert_allclose(lp, -np.mean((np.asarray(x_next) - np.asarray(mean)) ** 2, axis=(1, 2, 3)), rtol=1e-5)
  _, lp2, mean2, _ = _cps(v, x, sigma, sigma_next, NOISE, x_next=x_next)
  np.testing.assert_array_equal(lp2, lp)
  np.testing.assert_array_equal(mean2, mean)


def test_cps_final_step_is_x0_prediction():
  x, v = _inputs()
  x_next, lp, _, std = _cps(v, x, *_sigmas(9), NOISE, key=jax.random.key(8))
  assert float(std) == 0
  np.testing.assert_allclose(x_next, x - SIGMAS[9] * v, atol=1e-6)
  np.testing.assert_array_equal(lp, 0.0)


# Rollout.


def test_ode_rollout_lands_on_x0_for_a_straight_flow():
  # x_σ = (1 − σ)·x0 + σ·x1 has constant velocity x1 − x0, so Euler is exact.
  x0, x1 = _inputs()
  x_final, traj = jax.jit(lambda: diffusion.rollout(lambda x, s: x1 - x0, x1, SIGMAS, jax.random.key(0),
                                                    noise_level=0.0, method="ode"))()
  np.testing.assert_allclose(x_final, x0, atol=1e-5)
  assert traj.log_prob is None
  path = (1 - SIGMAS[1:, None, None, None, None]) * x0 + SIGMAS[1:, None, None, None, None] * x1
  np.testing.assert_allclose(traj.x_next, path, atol=1e-5)


@pytest.mark.parametrize("method", ["sde", "cps"])
def test_stochastic_rollout(method):
  x_init = _normal((3, 4, 4, 2))
  run = jax.jit(lambda with_logprob, key: diffusion.rollout(
      _velocity, x_init, SIGMAS, key, noise_level=NOISE, method=method, with_logprob=with_logprob),
                static_argnums=0)
  x_final, traj = run(True, jax.random.key(11))
  t = len(SIGMAS) - 1
  assert traj.x.shape == traj.x_next.shape == (t, *x_init.shape)
  assert traj.log_prob.shape == (t, 3) and traj.sigma.shape == traj.sigma_next.shape == (t,)
  np.testing.assert_array_equal(traj.x[0], x_init)
  np.testing.assert_array_equal(traj.x[1:], traj.x_next[:-1])
  np.testing.assert_array_equal(traj.x_next[-1], x_final)
  np.testing.assert_array_equal(traj.sigma, SIGMAS[:-1])
  np.testing.assert_array_equal(traj.sigma_next, SIGMAS[1:])

  # On-policy invariant: re-scoring every step at once, as training does ((T·B,) batch,
  # per-sample sigmas), reproduces the rollout's log-probs, so the first ratio is 1.
  step = {"sde": sde_step, "cps": cps_step}[method]

  @jax.jit
  def rescore(traj):
    flat = lambda a: a.reshape(-1, *a.shape[2:])
    sigma = jnp.repeat(traj.sigma, x_init.shape[0])
    sigma_next = jnp.repeat(traj.sigma_next, x_init.shape[0])
    x = flat(traj.x)
    return step(_velocity(x, sigma), x, sigma, sigma_next, NOISE, x_next=flat(traj.x_next))[1]

  log_prob = rescore(traj).reshape(traj.log_prob.shape)
  assert float(jnp.abs(log_prob - traj.log_prob).max()) < 1e-6

  # Without log-prob: same noise, same images. Bitwise equality is not promised, since XLA
  # fuses the two programs differently; another key differs by O(1).
  x_light, traj_light = run(False, jax.random.key(11))
  assert traj_light.log_prob is None
  np.testing.assert_allclose(traj_light.x_next, traj.x_next, rtol=0, atol=2e-6)
  np.testing.assert_allclose(x_light, x_final, rtol=0, atol=2e-6)
  x_other, _ = run(True, jax.random.key(13))
  assert np.abs(x_other - x_final).max() > 0.1


def test_cfg_velocity():
  calls = []

  def apply_fn(x, sigma, cond):
    calls.append(x.shape[0])
    assert sigma.shape == (x.shape[0],)
    return x * cond["scale"][:, None] + sigma[:, None]

  x = jnp.arange(6.0).reshape(3, 2)
  cond = {"scale": jnp.array([1.0, 2.0, 3.0])}
  uncond = {"scale": jnp.zeros(3)}
  v_cond = x * cond["scale"][:, None] + 0.5
  v_uncond = jnp.full_like(x, 0.5)

  np.testing.assert_allclose(diffusion.cfg_velocity(apply_fn, cond, uncond, 1.0)(x, 0.5), v_cond)
  np.testing.assert_allclose(diffusion.cfg_velocity(apply_fn, cond, None, None)(x, 0.5), v_cond)
  assert calls == [3, 3]
  guided = diffusion.cfg_velocity(apply_fn, cond, uncond, 4.5)(x, 0.5)
  np.testing.assert_allclose(guided, v_uncond + 4.5 * (v_cond - v_uncond), rtol=1e-6)
  assert calls[-1] == 6


def test_cfg_velocity_takes_per_sample_sigma():
  """GRPO re-scores each sample at its own timestep: sigma (B,) pairs row b with both of its halves."""
  apply_fn = lambda x, sigma, cond: x * cond["scale"][:, None] + sigma[:, None]
  x = jnp.arange(6.0).reshape(3, 2)
  sigma = jnp.array([0.1, 0.5, 0.9])
  cond, uncond = {"scale": jnp.array([1.0, 2.0, 3.0])}, {"scale": jnp.zeros(3)}
  guided = diffusion.cfg_velocity(apply_fn, cond, uncond, 3.0)(x, sigma)
  v_cond, v_uncond = x * cond["scale"][:, None] + sigma[:, None], jnp.broadcast_to(sigma[:, None], x.shape)
  np.testing.assert_allclose(guided, v_uncond + 3.0 * (v_cond - v_uncond), rtol=1e-6)
  np.testing.assert_allclose(diffusion.cfg_velocity(apply_fn, cond, None, 1.0)(x, sigma), v_cond)


@pytest.mark.parametrize("method", ["sde", "cps"])
def test_sde_window_is_the_stochastic_prefix_then_euler(method):
  """sde_steps=k: the first k steps are the all-stochastic rollout's (same key), the trajectory holds
  only them, and the rest are Euler steps from where they end."""
  x_init = _normal((3, 4, 4, 2))
  t, k = len(SIGMAS) - 1, 3
  full_x, full = jax.jit(lambda: diffusion.rollout(_velocity, x_init, SIGMAS, jax.random.key(5), noise_level=NOISE,
                                                   method=method))()
  x_final, traj = jax.jit(lambda: diffusion.rollout(_velocity, x_init, SIGMAS, jax.random.key(5), noise_level=NOISE,
                                                    method=method, sde_steps=k))()
  assert traj.x.shape == (k, *x_init.shape) and traj.log_prob.shape == (k, 3)
  np.testing.assert_allclose(traj.x_next, full.x_next[:k], rtol=0, atol=1e-6)
  np.testing.assert_allclose(traj.log_prob, full.log_prob[:k], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(traj.sigma_next, SIGMAS[1:k + 1])
  x = traj.x_next[-1]
  for i in range(k, t):
    x = ode_step(_velocity(x, SIGMAS[i]), x, SIGMAS[i], SIGMAS[i + 1])
  np.testing.assert_allclose(x_final, x, rtol=0, atol=1e-5)
  assert float(jnp.abs(x_final - full_x).max()) > 1e-2  # the late steps drew no noise
  with pytest.raises(ValueError, match="sde_steps=0 must be in"):
    diffusion.rollout(_velocity, x_init, SIGMAS, jax.random.key(5), noise_level=NOISE, method=method, sde_steps=0)
