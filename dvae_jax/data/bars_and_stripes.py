"""Bars and stripes (MacKay 2003, a standard benchmark of Boltzmann machines), generated in memory:
``load_dataset("bars_and_stripes:SIDE")`` (``--config.dataset=bars_and_stripes:4``).

A SIDE × SIDE binary image is a *stripes* pattern when every row is all 0 or all 1, a *bars*
pattern when every column is; the all-0 and all-1 images are both, so there are
``2^(SIDE+1) − 2`` distinct patterns. The splits hold patterns drawn uniformly with replacement
(``SIZES``, fixed seeds), so the data distribution is uniform over the patterns and its entropy is
exactly :func:`entropy` = log(2^(SIDE+1) − 2) nats: the test NLL of a perfect model, against which a
trained model's can be judged (the expected NLL of any model is the entropy plus KL(data ‖ model)).

Generated rather than shipped as a file, so the example needs no download and no step before the
training command; :func:`save_npz` writes the same arrays as a file for ``file:`` (the same data,
the same ``Dataset.identity``).
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np

from dvae_jax.data import arrays, download
from dvae_jax.data.base import Dataset

PREFIX = "bars_and_stripes"
USAGE = "bars_and_stripes:SIDE"
MIN_SIDE, MAX_SIDE = 2, 10
SIZES = {"train": 10_000, "valid": 1_000, "test": 1_000}
SEED = 0


def num_patterns(side: int) -> int:
  """``2^(side+1) − 2``: the distinct bars-and-stripes images of ``side`` × ``side``."""
  return 2 ** (side + 1) - 2


def entropy(side: int) -> float:
  """Entropy (nats) of the uniform distribution over the patterns: log(2^(side+1) − 2)."""
  return math.log(num_patterns(side))


def patterns(side: int) -> np.ndarray:
  """[num_patterns(side), side, side] uint8: every pattern once, in a fixed order."""
  bits = (np.arange(2**side)[:, None] >> np.arange(side)) & 1  # [2^side, side], row i = mask i
  stripes = np.broadcast_to(bits[:, :, None], (2**side, side, side))  # row j all bits[i, j]
  bars = stripes.transpose(0, 2, 1)
  return np.unique(np.concatenate([stripes, bars]).astype(np.uint8), axis=0)


def splits(side: int) -> dict[str, np.ndarray]:
  """``{'train', 'valid', 'test'}`` -> [SIZES[split], side, side] uint8 uniform draws (seeded by
  ``(SEED, side, split index)``)."""
  check_side(side)
  table = patterns(side)
  out = {}
  for i, (split, n) in enumerate(SIZES.items()):
    rng = np.random.default_rng([SEED, side, i])
    out[split] = table[rng.integers(len(table), size=n)]
  return out


def save_npz(path: str | os.PathLike, side: int) -> None:
  """Writes :func:`splits` to ``path`` (arrays train / valid / test) for ``file:PATH``."""
  data = splits(side)
  download.atomic_write(pathlib.Path(path), lambda f: np.savez(f, **data))


def check_side(side: int) -> int:
  if not MIN_SIDE <= side <= MAX_SIDE:
    raise ValueError(f"{USAGE} needs SIDE in {MIN_SIDE}..{MAX_SIDE}, got {side}")
  return side


class BarsAndStripes:
  """``bars_and_stripes:SIDE`` (a ``base.Source``).

  Args:
    argument: SIDE, an integer in ``MIN_SIDE..MAX_SIDE``.
    binarization: checked; without effect (the data is binary).
    feature: must be '' (a feature is chosen only for ``tfds:`` data).
  """

  def __init__(self, argument: str, *, binarization: str = "dynamic", feature: str = ""):
    if not argument.isdigit():
      raise ValueError(f"{PREFIX}:{argument} is not of the form {USAGE} (SIDE an integer)")
    if feature:
      raise ValueError(f"data_feature {feature!r} is for tfds: datasets, not {USAGE}")
    self.side = check_side(int(argument))
    self.binarization = arrays.check_binarization(binarization)
    self.name = f"{PREFIX}:{self.side}"

  def load(self, data_dir=None, *, allow_download=None, binarization_seed: int = 0) -> Dataset:
    """See ``base.Source.load``; generated, so no folder and no download."""
    del data_dir, allow_download
    side = self.side
    return arrays.dataset_from_arrays(
      self.name,
      splits(side),
      binarization=self.binarization,
      binarization_seed=binarization_seed,
      source=(
        f"generated: {num_patterns(side)} bars-and-stripes patterns of {side}x{side} drawn "
        f"uniformly (entropy {entropy(side):.4f} nats)"
      ),
      files=(),
      bad_file=str,
    )
