"""Layout helpers shared by the image datasets: 28×28 images as rows of 784 pixels."""

from __future__ import annotations

import numpy as np

from dvae_jax.data.base import IMAGE_SIDE, NUM_PIXELS


def columns_to_rows(x: np.ndarray) -> np.ndarray:
  """[n, 784] column-major 28×28 images -> [n, 784] row-major."""
  x = x.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 1)
  return np.ascontiguousarray(x.reshape(-1, NUM_PIXELS))
