import colorsys

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import given, settings

from emojax.emotion.space import CATEGORIES, CATEGORY_CENTROIDS, check_va, nearest_category
from emojax.emotion.colour import colour_error_floor, colour_judge, colour_judge_np
from emojax.rewards.emotion_distance import emotion_reward

unit = st.floats(0.0, 1.0)


def solid(rgb, size=4):
  """A uint8 image of one colour given as floats in [0, 1]."""
  return np.full((1, size, size, 3), np.round(np.asarray(rgb) * 255), np.uint8)


def judge(image):
  v, a = colour_judge_np(image)  # numpy: agrees with jnp (tested) and keeps hypothesis fast
  return float(v[0]), float(a[0])


def test_numpy_and_jnp_agree_on_both_dtypes():
  rng = np.random.default_rng(0)
  u8 = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  for images in (u8, u8.astype(np.float32) / 127.5 - 1, rng.uniform(-1, 1, (2, 3, 6, 6, 3))):
    for got, want in zip(colour_judge(images), colour_judge_np(images)):
      assert got.shape == images.shape[:-3]
      np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(colour_judge(u8), colour_judge(u8.astype(np.float32) / 127.5 - 1), atol=1e-5)
  np.testing.assert_allclose(jax.jit(colour_judge)(u8), colour_judge(u8), atol=1e-6)


def test_landmarks_follow_the_documented_rescaling():
  v, a = colour_judge_np(np.concatenate([solid(c) for c in ((0, 0, 0), (1, 1, 1), (1, 0, 0))]))
  np.testing.assert_allclose(v, [-3, 6 * 0.69 / 0.91 - 3, 3], atol=1e-5)
  np.testing.assert_allclose(a, [6 * 0.31 / 0.91 - 3, -3, 6 * 0.60 / 0.91 - 3], atol=1e-5)
  v, a = judge(solid((1 / 255, 0, 0)))  # the most arousing colour: darkest fully saturated
  assert a > 2.99 and v == pytest.approx(6 * 0.22 / 0.91 - 3, abs=0.02)


def test_scores_stay_in_range_and_pixels_weigh_by_area():
  rng = np.random.default_rng(1)
  v, a = colour_judge_np(rng.choice([-1.0, 1.0, 5.0, -7.0], (16, 4, 4, 3)))
  assert np.all(np.abs(v) <= 3) and np.all(np.abs(a) <= 3)
  half = np.concatenate([solid((1, 0, 0)), solid((0, 0, 0))], axis=1)
  np.testing.assert_allclose(colour_judge_np(half), np.mean(
      [colour_judge_np(solid((1, 0, 0))), colour_judge_np(solid((0, 0, 0)))], axis=0), atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(unit, unit)
def test_brighter_grey_is_more_pleasant_and_calmer(g1, g2):
  lo, hi = sorted((g1, g2))
  if round(hi * 255) == round(lo * 255):
    return
  (v_lo, a_lo), (v_hi, a_hi) = judge(solid((lo,) * 3)), judge(solid((hi,) * 3))
  assert v_hi > v_lo and a_hi < a_lo


@settings(max_examples=50, deadline=None)
@given(unit, st.floats(0.2, 1.0), st.floats(0.1, 1.0))
def test_saturated_colour_is_more_arousing_than_grey_of_equal_brightness(hue, value, saturation):
  colour = judge(solid(colorsys.hsv_to_rgb(hue, saturation, value)))
  grey = judge(solid((value,) * 3))
  assert colour[1] > grey[1] and colour[0] > grey[0]


def test_reward_is_bounded_and_decreasing():
  assert float(emotion_reward(1.0, -2.0, 1.0, -2.0)) == 1.0
  assert float(emotion_reward(3.0, 3.0, -3.0, -3.0)) == 0.0
  errors = np.linspace(0, 6, 13)
  r_v = np.asarray(emotion_reward(-3 + errors, 0.0, -3.0, 0.0))
  r_a = np.asarray(emotion_reward(0.0, 3 - errors, 0.0, 3.0))
  for r in (r_v, r_a):
    assert np.all(np.diff(r) < 0) and r.max() == 1.0 and r.min() >= 0.0
  far = np.asarray(emotion_reward(100.0, -100.0, 3.0, -3.0))  # clipped: as bad as V-hat = 3
  assert float(far) == 1.0


def test_invalid_answers_get_the_minimum():
  r = np.asarray(emotion_reward(np.array([0.5, 0.5, np.nan, 3.0]), np.array([0.5, 0.5, 0.0, 3.0]),
                                0.5, 0.5, valid=np.array([True, False, True, True])))
  np.testing.assert_allclose(r, [1.0, 0.0, 0.0, 1 - 5 / 12])
  assert r.min() == 0.0


def test_check_va():
  check_va(-3.0, 3.0)
  check_va(np.zeros(4), np.linspace(-3, 3, 4))
  for v, a, name, bad in ((3.5, 0.0, "valence", "3.5"), (0.0, np.array([0.0, -4.0]), "arousal", "-4.0"),
                          (np.nan, 0.0, "valence", "nan"), (0.0, np.inf, "arousal", "inf")):
    with pytest.raises(ValueError, match=rf"^{name}={bad} is outside \[-3.0, 3.0\]$"):
      check_va(v, a)


def test_categories_and_nearest_centroid():
  assert CATEGORIES == ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear",
                        "sadness")
  v, a = CATEGORY_CENTROIDS.T
  assert np.all(np.abs(CATEGORY_CENTROIDS) <= 3)
  assert np.all(v[:4] > 0) and np.all(v[4:] < 0)
  assert a[CATEGORIES.index("sadness")] < 0 < min(a[CATEGORIES.index("anger")], a[CATEGORIES.index("fear")])
  np.testing.assert_array_equal(nearest_category(v, a), np.arange(8))
  np.testing.assert_array_equal(jax.jit(nearest_category)(v + 0.1, a - 0.1), np.arange(8))
  assert nearest_category(np.zeros((2, 3)), np.zeros((2, 3))).shape == (2, 3)
  assert int(nearest_category(-2.5, -2.5)) == CATEGORIES.index("sadness")


def test_colour_error_floor_bounds_every_image():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 4, 4, 3)).astype(np.uint8)
  images[:32] = images[:32, :1, :1]  # flat colours too
  v, a = colour_judge_np(images)
  assert colour_error_floor(v, a).max() < 0.02  # what an image reads is reachable (up to the search grid)
  target_v, target_a = rng.uniform(-3, 3, 64), rng.uniform(-3, 3, 64)
  floor = colour_error_floor(target_v, target_a)
  assert np.all(np.abs(v - target_v) + np.abs(a - target_a) >= floor - 0.02)
  # V -2.4, A -2.4 needs saturation < 0: the best is grey with brightness 0.132 (V -2.4, A -1.23)
  assert float(colour_error_floor(-2.4, -2.4)) == pytest.approx(1.1745, abs=0.01)
  assert colour_error_floor(np.zeros((2, 3)), np.zeros((2, 3))).shape == (2, 3)
  with pytest.raises(ValueError, match="outside"):
    colour_error_floor(3.5, 0.0)
