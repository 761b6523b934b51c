"""Images on the host: [-1, 1] floats -> uint8 pixels, sample grids as PNG, dataset images read and squared."""
from __future__ import annotations

import numpy as np


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats (any shape) -> uint8, rounded as a saved PNG is; uint8 input passes through."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.round((np.clip(images.astype(np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def save_grid(images, path: str, ncol: int, scale: int = 2) -> None:
  """Images (N, H, W, 3) in [-1, 1] or uint8 -> one PNG of ncol columns, 1-pixel white gaps, upscaled."""
  from PIL import Image
  imgs = to_uint8(images)
  n, h, w, _ = imgs.shape
  nrow = -(-n // ncol)
  grid = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, 3), 255, np.uint8)
  for i, im in enumerate(imgs):
    r, c = divmod(i, ncol)
    grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = im
  Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def load_square(path, size: int, box=None) -> np.ndarray:
  """uint8 (size, size, 3) of an image file: optionally cropped to box (x1, y1, x2, y2 pixels, clipped to the
  image), then centre-cropped to a square and resized bicubically. Raises OSError / ValueError on a bad file."""
  from PIL import Image
  with Image.open(path) as im:
    im = im.convert("RGB")
    if box is not None:
      w, h = im.size
      x1, y1, x2, y2 = (int(round(v)) for v in box)
      x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
      if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {tuple(box)} lies outside the {w}x{h} image")
      im = im.crop((x1, y1, x2, y2))
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(im.resize((size, size), Image.BICUBIC), np.uint8)
