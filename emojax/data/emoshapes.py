"""EmoShapes: a procedural world of coloured shapes whose emotion is defined by colour.

An example is a size x size RGB image of 1-3 shapes, each inside its own cell of a 3x3 grid
(so shapes never overlap and the image border is always background), on a plain
background. Colours are drawn uniformly in HSV, so images cover the whole brightness x
saturation square and all hues. Valence and arousal are the colour judge's scores of the
image itself, the category is the nearest centroid in V-A space.

`prompt` names the shapes and where they are; `emotional_prompt` adds colour adjectives
measured on the pixels of each shape and of the background:

  prompt:            "a circle at the top left and a star in the center"
  emotional_prompt:  "a bright vivid warm circle at the top left and a dark grey star in
                      the center, on a dim muted cool background"
"""
import colorsys
import dataclasses
import functools
import operator

import numpy as np

from emojax.emotion.space import nearest_category
from emojax.emotion.colour import brightness_saturation_np, va_from_means

SHAPES = ("circle", "square", "triangle", "star", "ring")
PLACES = ("at the top left", "at the top", "at the top right", "on the left", "in the center",
          "on the right", "at the bottom left", "at the bottom", "at the bottom right")
BRIGHTNESS_WORDS = ("dark", "dim", "bright")  # mean HSV value in thirds of [0, 1]
SATURATION_WORDS = ("muted", "soft", "vivid")  # mean HSV saturation in thirds of [0, 1]
GREY_SATURATION = 0.1  # below this, hue is invisible: say "grey" and no warmth
BACKGROUND_PREFIX = ", on a "  # emotional prompts end in ", on a {words} background"


def colour_words(pixels):
  """Adjectives for uint8 RGB pixels (..., 3), e.g. "bright vivid warm" or "dark grey"."""
  pixels = np.asarray(pixels, np.uint8).reshape(-1, 3)
  b, s = brightness_saturation_np(pixels)
  return _words(b.mean(), s.mean(), pixels.mean(axis=0))


def _words(brightness, saturation, mean_rgb):
  hue = colorsys.rgb_to_hsv(*(mean_rgb / 255.0))[0] * 360
  return colour_adjectives(brightness, saturation, warm=hue < 75 or hue >= 300)  # red..yellow, magenta: warm


def colour_adjectives(brightness: float, saturation: float, warm: bool) -> str:
  """Adjectives for a region of mean HSV brightness and saturation in [0, 1], e.g. "bright vivid warm"."""
  words = [BRIGHTNESS_WORDS[min(int(brightness * 3), 2)]]
  if saturation < GREY_SATURATION:
    return " ".join(words + ["grey"])
  return " ".join(words + [SATURATION_WORDS[min(int(saturation * 3), 2)], "warm" if warm else "cool"])


def _polygon(y, x, vy, vx):
  """Even-odd point-in-polygon test of pixel centres (y, x) against vertices (vy, vx)."""
  inside = np.zeros(y.shape, bool)
  for i in range(len(vy)):
    y0, x0, y1, x1 = vy[i - 1], vx[i - 1], vy[i], vx[i]
    crosses = (y0 > y) != (y1 > y)
    x_cross = x0 + (y - y0) * (x1 - x0) / np.where(crosses, y1 - y0, 1.0)
    inside ^= crosses & (x < x_cross)
  return inside


def draw_shape(kind, y, x, r):
  """Mask of a shape centred at the origin that fits in the square of half-side r."""
  d2 = y * y + x * x
  if kind == "circle":
    return d2 <= r * r
  if kind == "ring":
    return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
  if kind == "square":
    return np.maximum(np.abs(y), np.abs(x)) <= 0.8 * r
  radius = np.full(3, r) if kind == "triangle" else np.tile([r, 0.45 * r], 5)  # star: 5 points
  angle = -np.pi / 2 + 2 * np.pi * np.arange(len(radius)) / len(radius)
  return _polygon(y, x, radius * np.sin(angle), radius * np.cos(angle))


@functools.lru_cache(maxsize=8)
def _pixel_centres(size):
  return np.mgrid[:size, :size] + 0.5


def _hsv_colour(rng):
  return np.array(colorsys.hsv_to_rgb(*rng.uniform(size=3)))


def join_phrases(phrases):
  return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


@dataclasses.dataclass(frozen=True)
class Shape:
  kind: str
  place: int  # cell index row * 3 + col
  colour: np.ndarray  # RGB in [0, 1]
  offset: np.ndarray  # (dy, dx) jitter of the centre, in cells
  scale: float  # radius as a fraction of the largest that fits the cell


def sample_layout(rng, size: int = 32) -> tuple[np.ndarray, list[Shape]]:
  """(background RGB, shapes) of one example: 1-3 shapes in distinct cells, each visible on the
  background (some channel differs by >= 0.25)."""
  background = _hsv_colour(rng)
  shapes = []
  for place in np.sort(rng.choice(9, rng.integers(1, 4), replace=False)):
    kind = SHAPES[rng.integers(len(SHAPES))]
    colour = _hsv_colour(rng)
    while np.abs(colour - background).max() < 0.25:  # keep every shape visible
      colour = _hsv_colour(rng)
    offset = rng.uniform(-0.05, 0.05, 2)
    shapes.append(Shape(kind, int(place), colour, offset, float(rng.uniform(0.6, 1.0))))
  return background, shapes


def render(background, shapes: list[Shape], size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 image (size, size, 3), regions (size, size): 0 background, k the k-th shape)."""
  cell = size / 3
  max_r = 0.45 * cell - 0.5  # with the jitter, shapes keep off the cell borders
  colours = np.empty((size, size, 3))
  colours[:] = background
  regions = np.zeros((size, size), np.int32)
  y, x = _pixel_centres(size)
  for k, shape in enumerate(shapes, 1):
    cy, cx = (np.array(divmod(shape.place, 3)) + 0.5 + shape.offset) * cell
    mask = draw_shape(shape.kind, y - cy, x - cx, shape.scale * max_r)
    colours[mask] = shape.colour
    regions[mask] = k
  return np.round(colours * 255).astype(np.uint8), regions


def describe(image, regions, shapes: list[Shape]) -> dict:
  """An image's labels: prompt, emotional_prompt (colour words measured on its pixels), V, A, category."""
  b, s = brightness_saturation_np(image)
  valence, arousal = va_from_means(b.mean(), s.mean())  # = colour_judge_np(image)
  # Mean brightness, saturation and RGB of each region (background first) describe it.
  labels, n = regions.ravel(), len(shapes) + 1
  per_pixel = np.column_stack([b.ravel(), s.ravel(), image.reshape(-1, 3)])
  sums = np.stack([np.bincount(labels, weights, n) for weights in per_pixel.T], axis=1)
  means = sums / np.maximum(np.bincount(labels, None, n), 1)[:, None]
  words = [_words(m[0], m[1], m[2:]) for m in means]
  names = [(sh.kind, PLACES[sh.place]) for sh in shapes]
  return dict(
      prompt=join_phrases([f"a {kind} {place}" for kind, place in names]),
      emotional_prompt=join_phrases([f"a {w} {kind} {place}" for w, (kind, place) in zip(words[1:], names)])
      + f"{BACKGROUND_PREFIX}{words[0]} background",
      valence=np.float32(valence),
      arousal=np.float32(arousal),
      category=np.int32(nearest_category(valence, arousal)),
  )


def make_example(seed: int, index: int, size: int = 32) -> dict:
  """The example at `index` of the world `seed`; a pure function of (seed, index, size)."""
  background, shapes = sample_layout(np.random.default_rng((seed, index)), size)
  image, regions = render(background, shapes, size)
  return dict(image=image,
              shape_mask=(regions > 0).astype(np.uint8),  # (size, size): 1 on shape pixels, 0 on background
              **describe(image, regions, shapes))


@dataclasses.dataclass(frozen=True)
class EmoShapesSource:
  """grain RandomAccessDataSource of `num_examples` EmoShapes examples of world `seed` (subclasses
  change what one index makes by overriding `make`)."""
  seed: int
  num_examples: int
  size: int = 32
  noun = "examples"  # in the out-of-range message
  make = staticmethod(make_example)  # (seed, index, size) -> record

  def __len__(self):
    return self.num_examples

  def __getitem__(self, index):
    index = operator.index(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} {self.noun}")
    return self.make(self.seed, index, self.size)
