"""Valence-arousal space and the 8 Mikels emotion categories of EmoSet.

V and A are both on [-3, 3]: -3 is the most unpleasant / calmest, +3 the most pleasant /
most aroused. Categories are assigned by the nearest centroid in this plane.
"""
import jax
import jax.numpy as jnp
import numpy as np

VA_MIN, VA_MAX = -3.0, 3.0

CATEGORIES = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")

# (V, A) per category, in CATEGORIES order, placed loosely after Russell's circumplex (1980:
# pleased/glad ~15 deg, excited ~50, astonished ~70, angry ~100, afraid ~115, sad ~210,
# content/relaxed ~320) and by word ratings such as the NRC VAD lexicon for what the
# circumplex lacks (disgust: unpleasant, the least aroused of anger/fear/disgust). Radii
# are spread so the eight nearest-centroid regions all hold EmoShapes images; the colour
# model reaches little of the pleasant-and-aroused corner, so excitement stays rare there.
CATEGORY_CENTROIDS = np.array([
    (2.4, 0.2),    # amusement: pleasant, mildly aroused
    (0.6, 2.2),    # awe: aroused astonishment, mildly pleasant
    (1.8, -1.8),   # contentment: pleasant, calm
    (2.4, 1.8),    # excitement: pleasant, aroused
    (-1.0, 2.6),   # anger: aroused more than unpleasant
    (-2.0, 0.2),   # disgust: unpleasant, moderately aroused
    (-2.0, 1.8),   # fear: unpleasant and aroused
    (-1.6, -1.8),  # sadness: unpleasant, calm
], dtype=np.float32)


def check_va(v, a):
  """Raises ValueError unless every value of v and a is finite and in [VA_MIN, VA_MAX]."""
  for name, x in (("valence", v), ("arousal", a)):
    x = np.asarray(x, dtype=np.float64)
    bad = ~(np.isfinite(x) & (x >= VA_MIN) & (x <= VA_MAX))
    if bad.any():
      raise ValueError(f"{name}={float(x[bad].flat[0])} is outside [{VA_MIN}, {VA_MAX}]")


def nearest_category(v, a):
  """Index into CATEGORIES of the centroid nearest to (v, a); broadcasts; numpy or jnp."""
  xp = jnp if isinstance(v, jax.Array) or isinstance(a, jax.Array) else np
  v, a = xp.asarray(v)[..., None], xp.asarray(a)[..., None]
  c = xp.asarray(CATEGORY_CENTROIDS)
  return xp.argmin((v - c[:, 0]) ** 2 + (a - c[:, 1]) ** 2, axis=-1).astype(xp.int32)
