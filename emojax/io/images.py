"""Generated images on the host: [-1, 1] floats -> uint8 pixels, and sample grids as PNG."""
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
