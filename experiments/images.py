"""PNG grids of 28×28 images (model samples, reconstructions) with pillow."""

from __future__ import annotations

import os
import pathlib

import numpy as np

IMAGE_SIDE = 28


def tile(images: np.ndarray, num_cols: int, *, pad: int = 1) -> np.ndarray:
  """Tiles images into one grid image.

  Args:
    images: [n, 784] (or [n, 28, 28]) values in [0, 1].
    num_cols: images per row.
    pad: pixels of (white) border between and around images.

  Returns:
    [rows * (28 + pad) + pad, num_cols * (28 + pad) + pad] uint8 grey image (255 = white). Ink
    (value 1) is drawn black on white.
  """
  images = np.asarray(images, dtype=np.float32).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
  if images.shape[0] == 0 or num_cols < 1:
    raise ValueError(
      f"need at least one image and num_cols >= 1, got {images.shape[0]}, {num_cols}"
    )
  n = images.shape[0]
  num_rows = -(-n // num_cols)
  cell = IMAGE_SIDE + pad
  grid = np.ones((num_rows * cell + pad, num_cols * cell + pad), np.float32)
  for i in range(n):
    r, c = divmod(i, num_cols)
    grid[
      pad + r * cell : pad + r * cell + IMAGE_SIDE, pad + c * cell : pad + c * cell + IMAGE_SIDE
    ] = 1.0 - np.clip(images[i], 0.0, 1.0)
  return np.round(255 * grid).astype(np.uint8)


def save_png(path: str | os.PathLike, grid: np.ndarray) -> None:
  """Writes a uint8 [H, W] image as PNG (atomically: temporary file, then rename)."""
  from PIL import Image

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  Image.fromarray(np.ascontiguousarray(grid, np.uint8)).save(tmp, format="PNG")
  os.replace(tmp, path)


def interleave(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
  """[2n, 784]: original i followed by its reconstruction, for side-by-side grids."""
  originals = np.asarray(originals).reshape(originals.shape[0], -1)
  reconstructions = np.asarray(reconstructions).reshape(reconstructions.shape[0], -1)
  if originals.shape != reconstructions.shape:
    raise ValueError(f"shape mismatch: {originals.shape} vs {reconstructions.shape}")
  out = np.empty((2 * originals.shape[0], originals.shape[1]), np.float32)
  out[0::2], out[1::2] = originals, reconstructions
  return out
