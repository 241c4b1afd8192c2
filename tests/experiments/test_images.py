"""Tests of experiments/images.py: grid layout and PNG output."""

import numpy as np
import pytest
from PIL import Image

from experiments import images


def test_tile_places_each_image_in_its_cell():
  rng = np.random.default_rng(0)
  x = rng.random((5, 784)).astype(np.float32)
  grid = images.tile(x, num_cols=2, pad=1)
  assert grid.shape == (3 * 29 + 1, 2 * 29 + 1) and grid.dtype == np.uint8
  for i in range(5):
    r, c = divmod(i, 2)
    cell = grid[1 + 29 * r : 1 + 29 * r + 28, 1 + 29 * c : 1 + 29 * c + 28]
    # Ink is black on white: value v is drawn as 255 * (1 - v).
    np.testing.assert_array_equal(cell, np.round(255 * (1 - x[i].reshape(28, 28))).astype(np.uint8))
  # The unused sixth cell and the borders stay white.
  assert (grid[1 + 58 :, 1 + 29 :] == 255).all() and (grid[0] == 255).all()


def test_tile_rejects_empty_input():
  with pytest.raises(ValueError, match="at least one image"):
    images.tile(np.zeros((0, 784)), 3)


def test_interleave_and_png_roundtrip(tmp_path):
  a, b = np.zeros((3, 784)), np.ones((3, 784))
  both = images.interleave(a, b)
  assert both.shape == (6, 784) and both[0::2].max() == 0 and both[1::2].min() == 1
  with pytest.raises(ValueError, match="shape mismatch"):
    images.interleave(a, b[:2])
  grid = images.tile(both, 2)
  images.save_png(tmp_path / "g.png", grid)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid)
  assert [p.name for p in tmp_path.iterdir()] == ["g.png"]
