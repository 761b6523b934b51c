"""Reward registry: lookup errors, weighted combination, and the noise-robust judge reward."""
import jax.numpy as jnp
import numpy as np
import pytest

from emojax.rewards import emotion_distance, registry


def _batch(v, a):
  return {"valence": jnp.asarray(v, jnp.float32), "arousal": jnp.asarray(a, jnp.float32)}


def test_unknown_reward_names_the_registered_ones():
  with pytest.raises(ValueError, match="unknown reward 'nope'; registered: .*colour_emotion"):
    registry.get("nope")


def test_combine_is_the_weighted_sum_and_zscore_normalises():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (6, 8, 8, 3)), jnp.float32)
  batch = _batch(rng.uniform(-3, 3, 6), rng.uniform(-3, 3, 6))
  r, _ = registry.get("colour_emotion")(images, batch)
  total, logs = registry.combine(images, batch, {"colour_emotion": 2.0})
  np.testing.assert_allclose(total, 2.0 * r, rtol=1e-6)
  z, _ = registry.combine(images, batch, {"colour_emotion": 1.0}, normalize="batch")
  np.testing.assert_allclose([z.mean(), z.std()], [0.0, 1.0], atol=1e-4)
  g, _ = registry.combine(images, batch, {"colour_emotion": 1.0}, normalize="group", group_size=3)
  g = np.asarray(g).reshape(2, 3)
  np.testing.assert_allclose([g.mean(1), g.std(1)], [[0.0, 0.0], [1.0, 1.0]], atol=1e-4)  # per group, not per batch
  with pytest.raises(ValueError, match="normalize='yes'"):
    registry.combine(images, batch, {"colour_emotion": 1.0}, normalize="yes")
  assert set(logs) >= {"reward/colour_emotion", "colour_emotion/v_abs_err", "colour_emotion/a_abs_err"}
  with pytest.raises(ValueError, match="no rewards configured"):
    registry.combine(images, batch, {})


def test_group_axes_zscores_valence_and_arousal_apart():
  """One group where valence errors spread widely and arousal errors barely: "group" ranks by valence
  alone, "group_axes" gives arousal an equal say; unnormalised, the axes' mean is the reward."""
  images = jnp.zeros((4, 8, 8, 3), jnp.float32)
  v_err, a_err = np.array([0.0, 2.0, 4.0, 6.0]), np.array([0.3, 0.2, 0.1, 0.0])

  def fake(images, batch):
    return 1.0 - (jnp.asarray(v_err) + jnp.asarray(a_err)) / 12.0, {"v_abs_err": jnp.asarray(v_err),
                                                                     "a_abs_err": jnp.asarray(a_err)}
  registry._REGISTRY["_axes_test"] = fake
  try:
    group, _ = registry.combine(images, {}, {"_axes_test": 1.0}, normalize="group", group_size=4)
    axes, _ = registry.combine(images, {}, {"_axes_test": 1.0}, normalize="group_axes", group_size=4)
  finally:
    del registry._REGISTRY["_axes_test"]
  z = lambda x: (x - x.mean()) / x.std()
  np.testing.assert_allclose(group, z(-(v_err + a_err)), atol=1e-4)
  np.testing.assert_allclose(axes, (z(-v_err) + z(-a_err)) / 2, atol=1e-4)
  assert np.argmax(group) == 0 and np.allclose(axes, 0.0, atol=1e-4)  # opposite axes cancel when balanced


def test_emotion_distance_l2_prefers_lowering_both_axes():
  """At a corner the colour model cannot reach (V -2.4, A -2.4), the judge's L1 reward ranks the image that zeroes
  the valence error and leaves arousal at its worst reachable value (the L1 optimum, errors 0 / 1.17) above the
  nearest reachable reading (0.44 / 0.98, the L2 optimum, lower on both axes than the first's worse one); "l2"
  ranks them the other way. Unparsed rows get 0 either way, and an unknown distance is refused."""
  from emojax.emotion import colour
  b, s = np.meshgrid(np.linspace(0, 1, 201), np.linspace(0, 1, 201))
  v, a = colour.va_from_means(b, s)
  ev, ea = np.abs(v + 2.4).ravel(), np.abs(a + 2.4).ravel()
  i1, i2 = np.argmin(ev + ea), np.argmin(np.hypot(ev, ea))
  assert ev[i1] < 0.05 and ea[i1] > 1.1 and ev[i2] > 0.3 and ea[i2] < ea[i1] - 0.1
  extras = {"v_abs_err": jnp.asarray([ev[i1], ev[i2], 0.0]), "a_abs_err": jnp.asarray([ea[i1], ea[i2], 0.0]),
            "parsed": jnp.asarray([1.0, 1.0, 0.0])}
  l1 = np.asarray(emotion_distance.emotion_distance_reward(extras, "l1"))
  l2 = np.asarray(emotion_distance.emotion_distance_reward(extras, "l2"))
  assert l1[0] > l1[1] and l2[1] > l2[0] and l1[2] == 0.0 and l2[2] == 0.0
  far = emotion_distance.emotion_distance_reward({"v_abs_err": jnp.asarray([9.0]), "a_abs_err": jnp.asarray([9.0])}, "l2")
  assert float(far[0]) == pytest.approx(0.0, abs=1e-6)  # an answer far outside [-3, 3] scores the minimum, not < 0
  np.testing.assert_allclose(l2[:2], 1 - np.hypot(ev[[i1, i2]], ea[[i1, i2]]) / (6 * np.sqrt(2)), rtol=1e-6)

  def fake(images, batch):
    return 1.0 - (extras["v_abs_err"] + extras["a_abs_err"]) / 12.0, dict(extras)
  registry._REGISTRY["_dist_test"] = fake
  try:
    images = jnp.zeros((3, 8, 8, 3), jnp.float32)
    total, logs = registry.combine(images, {}, {"_dist_test": 2.0}, emotion_distance="l2")
    with pytest.raises(ValueError, match="emotion_distance"):
      registry.combine(images, {}, {"_dist_test": 1.0}, emotion_distance="l3")
  finally:
    del registry._REGISTRY["_dist_test"]
  np.testing.assert_allclose(total, 2.0 * l2, rtol=1e-6)
  np.testing.assert_allclose(logs["reward/_dist_test"], l2, rtol=1e-6)


def test_smooth_reward_does_not_pay_for_pixel_noise():
  """A red/cyan checkerboard is maximally saturated per pixel but grey once averaged: the
  per-pixel judge calls it high-arousal, the block-averaged reward does not."""
  board = np.indices((16, 16)).sum(0) % 2
  img = np.where(board[..., None], [1.0, -1.0, -1.0], [-1.0, 1.0, 1.0])[None].astype(np.float32)
  grey = np.zeros_like(img)
  target = _batch([0.0], [3.0])
  per_pixel, px = registry.get("colour_emotion")(jnp.asarray(img), target)
  smooth, sm = registry.get("colour_emotion_smooth")(jnp.asarray(img), target)
  smooth_grey, _ = registry.get("colour_emotion_smooth")(jnp.asarray(grey), target)
  assert float(px["a_abs_err"][0]) + 2.0 < float(sm["a_abs_err"][0])  # per pixel: "aroused"; smooth: grey
  assert float(per_pixel[0]) > float(smooth[0])
  np.testing.assert_allclose(smooth, smooth_grey, atol=1e-5)
