"""The colour-emotion model that defines emotion in EmoShapes: (valence, arousal) of images by
Valdez & Mehrabian (1994). EmoShapes labels its images with it, and as the colour judge it is the
evaluator nobody trained (`emojax.rewards.emotion_distance` turns its reading into a reward).

Per pixel, with r, g, b in [0, 1], brightness and saturation are the HSV coordinates

    B = max(r, g, b),    S = (max(r, g, b) - min(r, g, b)) / max(r, g, b)   (S = 0 at black)

These two are independent, so every (B, S) in [0, 1]^2 is a colour. The model's raw scores

    P = 0.69 B + 0.22 S,    R = -0.31 B + 0.60 S

are linear, so their image mean (every pixel weighs its area) equals the score of the mean B
and mean S. Over all colours P spans [0, 0.91] (black .. any pure hue, B = S = 1)
and R spans [-0.31, 0.60] (white .. a fully saturated colour as B -> 0). Each range is mapped
affinely onto [-3, 3], then clipped:

    V = clip(6 P / 0.91 - 3, -3, 3)
    A = clip(6 (R + 0.31) / 0.91 - 3, -3, 3)

Landmarks: black (-3, -0.96), white (1.55, -3), mid grey (-0.73, -1.98),
pure red/green/blue (3, 0.96), darkest vivid colour (-1.55, 3).

Images are float in [-1, 1] (the generator's pixel range) or uint8 in [0, 255]; the
dtype decides. Any leading batch shape; the last three axes are (H, W, 3).
"""
import jax.numpy as jnp
import numpy as np

from emojax.emotion.space import check_va

P_RANGE = (0.0, 0.91)
R_RANGE = (-0.31, 0.60)


def _to_unit(images, xp):
  if images.dtype == xp.uint8:
    return images.astype(xp.float32) / 255.0
  return xp.clip((images.astype(xp.float32) + 1.0) / 2.0, 0.0, 1.0)


def _brightness_saturation(rgb, xp):
  hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
  sat = xp.where(hi > 0, (hi - lo) / xp.maximum(hi, 1e-12), 0.0)
  return hi, sat


PR_FROM_BS = ((0.69, 0.22), (-0.31, 0.60))  # (P, R) = PR_FROM_BS @ (B, S)


def va_from_means(brightness, saturation, xp=np):
  """(V, A) in [-3, 3] from mean brightness and mean saturation in [0, 1]."""
  (pb, ps), (rb, rs) = PR_FROM_BS
  p, r = pb * brightness + ps * saturation, rb * brightness + rs * saturation
  scale = lambda x, lo_hi: xp.clip(6.0 * (x - lo_hi[0]) / (lo_hi[1] - lo_hi[0]) - 3.0, -3.0, 3.0)
  return scale(p, P_RANGE).astype(xp.float32), scale(r, R_RANGE).astype(xp.float32)


def brightness_saturation_for(valence: float, arousal: float) -> tuple[float, float]:
  """The inverse of va_from_means: the mean (brightness, saturation) that reads as (V, A), clipped to
  [0, 1]^2 (corners such as V 3, A -3 need brightness > 1; the clipped colour is the nearest along the
  clipped axis)."""
  check_va(valence, arousal)
  unscale = lambda x, lo_hi: (x + 3.0) * (lo_hi[1] - lo_hi[0]) / 6.0 + lo_hi[0]
  b, s = np.clip(np.linalg.solve(np.array(PR_FROM_BS), [unscale(valence, P_RANGE), unscale(arousal, R_RANGE)]), 0, 1)
  return float(b), float(s)


def colour_error_floor(valence, arousal, resolution: int = 401) -> np.ndarray:
  """The least |V̂ - V| + |Â - A| any image can score at each target: the colour judge reads only mean
  brightness and saturation, so its reachable readings are va_from_means over [0, 1]^2, searched on a
  resolution^2 grid (error of the search < 0.02). Targets outside that set (e.g. V 2.4, A 2.4, which needs
  brightness > 1) keep a positive floor: the part of colour_valence_error + colour_arousal_error no
  generator removes. valence, arousal: same-shaped arrays in [-3, 3]; returns float32 of that shape."""
  v, a = np.broadcast_arrays(np.asarray(valence, np.float32), np.asarray(arousal, np.float32))
  check_va(v, a)
  b, s = np.meshgrid(np.linspace(0, 1, resolution), np.linspace(0, 1, resolution))
  rv, ra = va_from_means(b.ravel(), s.ravel())
  rv, ra = np.unique(np.round(np.stack([rv, ra], -1), 4), axis=0).T  # the clip maps many colours to one reading
  targets, which = np.unique(np.stack([v.ravel(), a.ravel()], -1), axis=0, return_inverse=True)  # a grid repeats
  best = np.array([np.min(np.abs(rv - tv) + np.abs(ra - ta)) for tv, ta in targets], np.float32)
  return best[which.ravel()].reshape(v.shape)


def _judge(images, xp):
  b, s = _brightness_saturation(_to_unit(images, xp), xp)
  return va_from_means(b.mean(axis=(-2, -1)), s.mean(axis=(-2, -1)), xp)


def colour_judge(images):
  """(valence, arousal), each of shape images.shape[:-3], as jnp float32 in [-3, 3]."""
  return _judge(jnp.asarray(images), jnp)


def colour_judge_np(images):
  """colour_judge in numpy, for data generation on the host."""
  return _judge(np.asarray(images), np)


def brightness_saturation_np(images):
  """Per-pixel HSV (brightness, saturation) in [0, 1], shape images.shape[:-1] each."""
  return _brightness_saturation(_to_unit(np.asarray(images), np), np)
