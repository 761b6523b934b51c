"""Procedural preference pairs for the tiny world's PickScore: (caption, preferred, rejected).

The preferred image is the clean EmoShapes render its caption describes; the rejected one is the same
caption rendered wrongly, in the ways a generator hacks an emotion judge or loses the prompt:

  image faults (the picture itself is damaged; `image_fault` is 1):
    grain          per-pixel Gaussian noise, std U(0.05, 0.4)
    colour_noise   per-pixel random colours around a random brightness and saturation, mixed in at
                   U(0.3, 1) (1: pure colour noise, the hacked GRPO columns)
    blocks         a random 4x4 or 8x8 colour grid, upsampled, mixed in at U(0.4, 1)
    checker        two random colours alternating every 1 or 2 pixels, mixed in at U(0.4, 1)
    blur           Gaussian blur, sigma U(1, 2.5) px
  prompt faults (a clean picture of something else; `image_fault` is 0):
    wrong_colours  the same shapes and places, every colour redrawn until the colour words differ
                   (the caption is then always the emotional one, which names the colours)
    missing_shape  one shape left out
    moved_shapes   every shape in another cell

Captions are the emotional prompt (colour words) 70% of the time, else the neutral prompt. A pair is
a pure function of (seed, index); its fault kind is drawn uniformly unless given.
"""
from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

from emojax.data import emoshapes

IMAGE_FAULTS = ("grain", "colour_noise", "blocks", "checker", "blur")
PROMPT_FAULTS = ("wrong_colours", "missing_shape", "moved_shapes")
KINDS = IMAGE_FAULTS + PROMPT_FAULTS
P_EMOTIONAL = 0.7


def _mix(image, other, alpha):
  return np.clip(np.round((1 - alpha) * image.astype(np.float64) + alpha * other), 0, 255).astype(np.uint8)


def _hsv_to_rgb(h, s, v):
  """Vectorised HSV -> RGB in [0, 1] (colorsys' formula)."""
  i = np.floor(h * 6.0).astype(int) % 6
  f = h * 6.0 - np.floor(h * 6.0)
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
  return np.stack([np.choose(i, [row[c] for row in table]) for c in range(3)], -1)


def grain(image, rng, **_):
  std = rng.uniform(0.05, 0.4) * 255
  return np.clip(np.round(image + rng.normal(0.0, std, image.shape)), 0, 255).astype(np.uint8)


def noise_field(h: int, w: int, rng) -> np.ndarray:
  """Pure per-pixel colour noise (float RGB in [0, 255]): random hues, saturation and brightness
  spread +-0.3 around random levels, so it can sit at any mean colour, as a hacked generator's does."""
  s0, v0 = rng.uniform(0.2, 0.8, 2)
  rgb = _hsv_to_rgb(rng.uniform(size=(h, w)), np.clip(rng.uniform(s0 - 0.3, s0 + 0.3, (h, w)), 0, 1),
                    np.clip(rng.uniform(v0 - 0.3, v0 + 0.3, (h, w)), 0, 1))
  return rgb * 255


def colour_noise(image, rng, **_):
  return _mix(image, noise_field(*image.shape[:2], rng), rng.uniform(0.3, 1.0))


def blocks(image, rng, **_):
  n = image.shape[0] // int(rng.choice([4, 8]))
  grid = rng.uniform(0, 255, (n, n, 3))
  k = image.shape[0] // n
  return _mix(image, np.repeat(np.repeat(grid, k, 0), k, 1), rng.uniform(0.4, 1.0))


def checker(image, rng, **_):
  period = int(rng.choice([1, 2]))
  y, x = np.indices(image.shape[:2]) // period
  a, b = rng.uniform(0, 255, (2, 3))
  pattern = np.where(((y + x) % 2 == 0)[..., None], a, b)
  return _mix(image, pattern, rng.uniform(0.4, 1.0))


def blur(image, rng, **_):
  sigma = rng.uniform(1.0, 2.5)
  r = int(np.ceil(3 * sigma))
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  k /= k.sum()
  x = np.pad(image.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
  x = np.apply_along_axis(lambda v: np.convolve(v, k, "valid"), 0, x)
  x = np.apply_along_axis(lambda v: np.convolve(v, k, "valid"), 1, x)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _hsv_colour(rng):
  return np.array(colorsys.hsv_to_rgb(*rng.uniform(size=3)))


def wrong_colours(image, rng, *, background, shapes, caption, size):
  for _ in range(100):
    bg = _hsv_colour(rng)
    new = []
    for sh in shapes:
      c = _hsv_colour(rng)
      while np.abs(c - bg).max() < 0.25:
        c = _hsv_colour(rng)
      new.append(dataclasses.replace(sh, colour=c))
    out, regions = emoshapes.render(bg, new, size)
    if emoshapes.describe(out, regions, new)["emotional_prompt"] != caption:
      return out
  raise RuntimeError("no recolouring changed the colour words in 100 draws")  # never seen: words are coarse


def missing_shape(image, rng, *, background, shapes, size, **_):
  drop = rng.integers(len(shapes))
  keep = [sh for i, sh in enumerate(shapes) if i != drop]
  return emoshapes.render(background, keep, size)[0]


def moved_shapes(image, rng, *, background, shapes, size, **_):
  free = [p for p in range(9) if p not in {sh.place for sh in shapes}]
  places = rng.choice(free, len(shapes), replace=False)  # 1-3 shapes, >= 6 free cells
  return emoshapes.render(background, [dataclasses.replace(sh, place=int(p)) for sh, p in zip(shapes, places)], size)[0]


CORRUPTIONS = {"grain": grain, "colour_noise": colour_noise, "blocks": blocks, "checker": checker, "blur": blur,
               "wrong_colours": wrong_colours, "missing_shape": missing_shape, "moved_shapes": moved_shapes}


def make_pair(seed: int, index: int, size: int = 32, kind: str | None = None) -> dict:
  """{caption, preferred, rejected (uint8 images), kind (index into KINDS), image_fault (0/1)}."""
  background, shapes = emoshapes.sample_layout(np.random.default_rng((seed, index)), size)
  image, regions = emoshapes.render(background, shapes, size)
  words = emoshapes.describe(image, regions, shapes)
  rng = np.random.default_rng((seed, index, 1))
  k = KINDS.index(kind) if kind is not None else int(rng.integers(len(KINDS)))
  name = KINDS[k]
  emotional = name == "wrong_colours" or rng.uniform() < P_EMOTIONAL
  caption = words["emotional_prompt"] if emotional else words["prompt"]
  rejected = CORRUPTIONS[name](image, rng, background=background, shapes=shapes, caption=caption, size=size)
  return {"caption": caption, "preferred": image, "rejected": rejected, "kind": np.int32(k),
          "image_fault": np.int32(name in IMAGE_FAULTS)}


@dataclasses.dataclass(frozen=True)
class PreferencePairsSource(emoshapes.EmoShapesSource):
  """grain RandomAccessDataSource of `num_examples` preference pairs of world `seed`."""
  noun = "pairs"
  make = staticmethod(make_pair)
