"""Layout judge: does an image show the EmoShapes layout its prompt names?

An untrained, objective check of a generator's samples against the prompt they were made
from: which of the 3x3 cells hold a shape and which kind it is. No trained model is needed
because the world is simple: the border is always background, every shape differs from it by
>= 0.25 * 255 in some channel, and shapes stay inside their own cell. So

  background = per-channel median of the 1-pixel border ring,
  foreground = pixels whose max abs channel difference from the background exceeds
               FOREGROUND, or ~3 std of the border's own noise if that is higher,
  occupied   = cells with >= MIN_PIXELS (scaled with area) foreground pixels that touch
               another foreground pixel (8-neighbourhood), so isolated specks do not count,
  kind       = the SHAPES template (emoshapes.draw_shape, at the world's radii, centred near
               the blob's centroid) of best IoU with the cell's foreground.

`layout_scores` gives cell_acc (occupancy of all B*9 cells as the prompt says), shape_acc
(named cells occupied by the named kind) and exact (the whole image right).
"""
import functools
import re

import numpy as np

from emojax.data.emoshapes import PLACES, SHAPES, draw_shape
from emojax.io.images import to_uint8

FOREGROUND = 32  # half the smallest shape-background gap (0.25 * 255 ~ 64 levels)
NOISE_SCALE = 1.5  # x the border's 90% deviation: ~3 std for Gaussian noise (2.7 if clipped)
MIN_PIXELS = 4  # at size 32, scaled with area; the smallest real shape has 7 pixels
# Templates span exactly the world's radii (x max_r): smaller circles pixelise to squares.
RADII = np.linspace(0.6, 1.0, 9)
OFFSETS = np.linspace(-0.4, 0.4, 3)  # px around the centroid, which pixelisation biases

PLACE_RE = re.compile("|".join(sorted(PLACES, key=len, reverse=True)))  # "at the top left" before "at the top"
_PAIR = re.compile(rf"\b({'|'.join(SHAPES)})\s+({PLACE_RE.pattern})\b")


def parse_layout(prompt: str) -> dict[int, str]:
  """{cell index (row * 3 + col): shape kind} from a neutral or emotional EmoShapes prompt."""
  layout = {}
  for kind, place in _PAIR.findall(prompt):
    cell = PLACES.index(place)
    if layout.get(cell, kind) != kind:
      raise ValueError(f"cell {place!r} named twice in {prompt!r}")
    layout[cell] = kind
  if not layout:
    raise ValueError(f"no '<shape> <place>' pair in {prompt!r}")
  return layout


@functools.lru_cache(maxsize=8)
def _cells(size):
  """Cell of each pixel row/column (by pixel centre), first pixel and pixel extent of each."""
  of = np.minimum(((np.arange(size) + 0.5) * 3 / size).astype(int), 2)
  start = np.searchsorted(of, np.arange(3))
  return of, start, int(np.bincount(of, minlength=3).max())


def read_layout(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(occupied (B, 9) bool, kinds (B, 9) int index into SHAPES, -1 where empty).

  images: (B, S, S, 3) uint8, or float in [-1, 1] (the generator's range).
  """
  images = to_uint8(images).astype(np.int16)
  b, size = images.shape[0], images.shape[1]
  if images.shape[1:] != (size, size, 3) or size < 6:
    raise ValueError(f"expected (B, S, S, 3) images with S >= 6, got {images.shape}")
  ring = np.concatenate([images[:, 0], images[:, -1], images[:, 1:-1, 0], images[:, 1:-1, -1]], axis=1)
  background = np.median(ring, axis=1)
  # Samples are noisy: keep the threshold above the border's own noise. A quantile of the
  # max-channel deviation (not a per-channel MAD) still sees noise clipped at 0 or 255.
  noise = np.quantile(np.abs(ring - background[:, None]).max(-1), 0.9, axis=1)
  threshold = np.maximum(FOREGROUND, NOISE_SCALE * noise)[:, None, None]
  fg = np.abs(images - background[:, None, None]).max(-1) > threshold
  padded = np.pad(fg, ((0, 0), (1, 1), (1, 1)))
  neighbours = sum(padded[:, 1 + dy:1 + dy + size, 1 + dx:1 + dx + size]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
  fg &= neighbours > 0

  of, start, extent = _cells(size)
  cell_of = of[:, None] * 3 + of[None, :]
  counts = np.stack([fg[:, cell_of == c].sum(-1) for c in range(9)], axis=1)
  occupied = counts >= max(2, round(MIN_PIXELS * (size / 32) ** 2))
  kinds = np.full((b, 9), -1)
  if occupied.any():
    idx, cell = np.nonzero(occupied)
    kinds[idx, cell] = _read_kinds(fg, idx, cell, of, start, extent)
  return occupied, kinds


def _read_kinds(fg, idx, cell, of, start, extent):
  """Kind of the blob in each (image idx, cell) by best template IoU; all cells at once."""
  row, col = divmod(cell, 3)
  rows = start[row][:, None] + np.arange(extent)  # (N, extent) pixel rows of the window
  cols = start[col][:, None] + np.arange(extent)
  size = len(of)
  fg = np.pad(fg, ((0, 0), (0, extent), (0, extent)))  # windows may run past the image
  of = np.pad(of, (0, extent), constant_values=3)
  inside = (of[rows] == row[:, None])[:, :, None] & (of[cols] == col[:, None])[:, None, :]
  blob = fg[idx[:, None, None], rows[:, :, None], cols[:, None, :]] & inside
  ys, xs = rows + 0.5, cols + 0.5
  n = blob.sum((1, 2))
  cy = (blob.sum(2) * ys).sum(1) / n
  cx = (blob.sum(1) * xs).sum(1) / n
  oy, ox = (o.ravel() for o in np.meshgrid(OFFSETS, OFFSETS, indexing="ij"))
  shape = (len(idx), len(oy), extent, extent)
  y = np.broadcast_to((ys - cy[:, None])[:, None, :, None] - oy[None, :, None, None], shape)
  x = np.broadcast_to((xs - cx[:, None])[:, None, None, :] - ox[None, :, None, None], shape)
  blob, inside = blob[:, None], inside[:, None]
  max_r = 0.45 * size / 3 - 0.5
  best = np.zeros((len(idx), len(SHAPES)))
  for k, kind in enumerate(SHAPES):
    for r in RADII * max_r:
      template = draw_shape(kind, y, x, r) & inside
      iou = (template & blob).sum((2, 3)) / (template | blob).sum((2, 3))
      best[:, k] = np.maximum(best[:, k], iou.max(1))
  return best.argmax(1)


def named_kinds(prompts) -> np.ndarray:
  """(B, 9) index into SHAPES of the shape each prompt names in each cell, -1 where it names none."""
  want = np.full((len(prompts), 9), -1)
  for i, prompt in enumerate(prompts):
    for cell, kind in parse_layout(prompt).items():
      want[i, cell] = SHAPES.index(kind)
  return want


def layout_scores(images: np.ndarray, prompts) -> dict[str, float]:
  """layout/cell_acc, layout/shape_acc and layout/exact of images against their prompts."""
  occupied, kinds = read_layout(images)
  if len(prompts) != len(occupied):
    raise ValueError(f"{len(occupied)} images but {len(prompts)} prompts")
  want = named_kinds(prompts)
  named = want >= 0
  cell_ok = occupied == named
  shape_ok = occupied & (kinds == want)
  return {
      "layout/cell_acc": float(cell_ok.mean()),
      "layout/shape_acc": float(shape_ok[named].mean()),
      "layout/exact": float(np.all(cell_ok & (shape_ok | ~named), axis=1).mean()),
  }


def kind_confusion(images: np.ndarray, prompts) -> np.ndarray:
  """(5, 6) counts over every shape the prompts name: row = kind named, column = kind read in its
  cell (last column: nothing there). A heavy diagonal means the shapes are drawn as named."""
  _, kinds = read_layout(images)
  want = named_kinds(prompts)
  named = want >= 0
  out = np.zeros((len(SHAPES), len(SHAPES) + 1), np.int64)
  np.add.at(out, (want[named], kinds[named]), 1)  # kinds == -1 (empty) lands in the last column
  return out
