import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emojax import rl

# Jitted: op-by-op dispatch compiles every primitive separately, which is slower here.
group_advantages = jax.jit(rl.group_advantages, static_argnames=("group_size", "eps", "adv_clip", "std_scope"))
clipped_policy_loss = jax.jit(rl.clipped_policy_loss, static_argnames="clip_eps")
flow_kl, k3_kl = jax.jit(rl.flow_kl), jax.jit(rl.k3_kl)
masked_mean = jax.jit(rl.masked_mean, static_argnames="axis")
aggregate_token_loss = jax.jit(rl.aggregate_token_loss, static_argnames="mode")


def test_group_advantages_are_group_z_scores():
  rewards = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0, -1.0, 0.0, 0.0, 5.0], np.float32)
  adv, stats = group_advantages(rewards, group_size=4, eps=1e-4)
  groups = rewards.reshape(3, 4)
  expected = (groups - groups.mean(1, keepdims=True)) / (groups.std(1, keepdims=True) + 1e-4)
  expected[1] = 0.0
  np.testing.assert_allclose(adv, expected.reshape(-1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(adv).reshape(3, 4).sum(1), 0.0, atol=1e-5)
  assert float(stats["zero_std_ratio"]) == pytest.approx(1 / 3)
  assert float(stats["reward_mean"]) == pytest.approx(rewards.mean())
  assert float(stats["reward_std"]) == pytest.approx(rewards.std(), rel=1e-5)


def test_batch_std_scope_keeps_a_nearly_flat_group_small():
  # group 0 differs only by 0.002 (a judge's noise at a target nothing reaches); group 1 by a real 1.0
  rewards = np.array([0.500, 0.502, 0.500, 0.502, 0.0, 1.0, 0.0, 1.0], np.float32)
  per_group, _ = group_advantages(rewards, group_size=4)
  pooled, _ = group_advantages(rewards, group_size=4, std_scope="batch")
  assert float(np.abs(per_group).min()) > 0.9  # each group's own std: both about +-1 (eps 1e-4 vs std 1e-3)
  centred = rewards.reshape(2, 4) - rewards.reshape(2, 4).mean(1, keepdims=True)
  expected = centred / (np.sqrt((centred ** 2).mean()) + 1e-4)
  np.testing.assert_allclose(pooled, expected.reshape(-1), rtol=1e-5, atol=1e-6)
  assert float(np.abs(pooled[:4]).max()) < 0.005 and float(np.abs(pooled[4:]).min()) > 1.0
  with pytest.raises(ValueError, match="std_scope"):
    rl.group_advantages(rewards, 4, std_scope="prompt")


def test_zero_std_group_is_exactly_zero():
  # 0.1 is not representable; a float mean of identical values can still differ from them.
  adv, stats = group_advantages(np.full(6, 0.1, np.float32), group_size=3)
  np.testing.assert_array_equal(adv, 0.0)
  assert float(stats["zero_std_ratio"]) == 1.0


def test_advantages_are_clipped():
  rewards = np.array([0.0] * 99 + [1.0], np.float32)  # the outlier's z-score is ~9.95
  adv, _ = group_advantages(rewards, group_size=100, adv_clip=5.0)
  assert float(adv[-1]) == 5.0
  assert float(jnp.abs(adv).max()) <= 5.0


def test_group_size_must_divide_batch():
  with pytest.raises(ValueError, match="groups of 4"):
    group_advantages(np.zeros(6, np.float32), group_size=4)


def test_on_policy_loss_is_minus_advantage():
  logp = jnp.array([-1.0, 0.5, 2.0, 0.0])
  adv = jnp.array([1.0, -2.0, 0.5, 0.0])
  loss, stats = clipped_policy_loss(logp, logp, adv, clip_eps=1e-4)
  np.testing.assert_allclose(loss, -adv)
  assert float(stats["ratio_mean"]) == 1.0
  assert float(stats["ratio_max_dev"]) == 0.0
  assert float(stats["clip_frac_high"]) == float(stats["clip_frac_low"]) == 0.0
  assert float(stats["approx_kl"]) == 0.0


def test_gradient_vanishes_only_on_the_clipped_side():
  eps = 0.2
  old = jnp.zeros(4)
  # ratio 1.5 with A > 0 and ratio 0.5 with A < 0 are clipped (no gradient); ratio 1.5 with
  # A < 0 and ratio 0.5 with A > 0 are not (the pessimistic unclipped term wins).
  logp = jnp.log(jnp.array([1.5, 0.5, 1.5, 0.5]))
  adv = jnp.array([1.0, -1.0, -1.0, 1.0])
  grad = jax.grad(lambda lp: clipped_policy_loss(lp, old, adv, eps)[0].sum())(logp)
  np.testing.assert_array_equal(grad[:2], 0.0)
  np.testing.assert_allclose(grad[2:], [1.5, -0.5], rtol=1e-6)  # d(−A·e^lp)/dlp = −A·ratio
  _, stats = clipped_policy_loss(logp, old, adv, eps)
  assert float(stats["clip_frac_high"]) == float(stats["clip_frac_low"]) == 0.5
  assert float(stats["ratio_max_dev"]) == pytest.approx(0.5)
  np.testing.assert_allclose(stats["approx_kl"], np.mean(0.5 * np.log([1.5, 0.5, 1.5, 0.5]) ** 2), rtol=1e-6)


def test_token_level_loss_broadcasts_advantages_and_masks_stats():
  logp = jnp.array([[0.0, 0.1, 5.0], [0.0, -0.1, 0.0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 1]], jnp.float32)
  loss, stats = clipped_policy_loss(logp, jnp.zeros_like(logp), jnp.array([1.0, -1.0]), 0.05, mask=mask)
  assert loss.shape == (2, 3)
  np.testing.assert_allclose(loss[0, 0], -1.0)
  np.testing.assert_allclose(loss[1, 0], 1.0)
  assert float(stats["clip_frac_high"]) == pytest.approx(1 / 5)  # the masked e^5 is ignored
  assert float(stats["clip_frac_low"]) == pytest.approx(1 / 5)


def test_flow_kl():
  mean = np.ones((2, 4, 4, 3), np.float32)
  mean_ref = mean.copy()
  mean_ref[1] -= 0.5
  sigma_t = jnp.array([0.5, 0.25])
  np.testing.assert_allclose(flow_kl(mean, mean_ref, sigma_t), [0.0, 0.25 / (2 * 0.0625)], rtol=1e-6)
  np.testing.assert_allclose(flow_kl(mean, mean_ref, 0.5), [0.0, 0.25 / 0.5], rtol=1e-6)


def test_k3_kl():
  lp = jnp.array([-3.0, -1.0, -0.2, 0.0, -1e-7])
  np.testing.assert_array_equal(k3_kl(lp, lp), 0.0)
  ref = lp + jnp.array([2.0, -1.5, 1e-7, -1e-8, 0.3])
  kl = k3_kl(lp, ref)
  assert np.all(np.asarray(kl) >= 0)
  d = np.asarray(ref - lp, np.float64)
  np.testing.assert_allclose(kl, np.expm1(d) - d, rtol=1e-5, atol=1e-12)


def test_masked_mean():
  x = jnp.array([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  assert float(masked_mean(x, mask)) == pytest.approx(2.0)
  np.testing.assert_allclose(masked_mean(x, mask, axis=-1), [1.5, 3.0])
  np.testing.assert_allclose(masked_mean(x, jnp.zeros_like(mask), axis=-1), [0.0, 0.0])


def test_aggregation_modes_on_ragged_masks():
  per_token = jnp.array([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 1], [1, 0, 0, 0]])
  # Every sequence weighs the same: (1 + 4) / 2; every token weighs the same: (4 + 4) / 5.
  assert float(aggregate_token_loss(per_token, mask, "sequence_mean")) == pytest.approx(2.5)
  assert float(aggregate_token_loss(per_token, mask, "token_mean")) == pytest.approx(1.6)
  full = jnp.ones_like(mask)
  assert float(aggregate_token_loss(per_token, full, "sequence_mean")) == pytest.approx(
      float(aggregate_token_loss(per_token, full, "token_mean")))
  with pytest.raises(ValueError):
    aggregate_token_loss(per_token, mask, "sum")
