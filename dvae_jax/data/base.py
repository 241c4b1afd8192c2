"""What every dataset source gives and what its failures are: :class:`Dataset`, the two errors, and
the :class:`Source` contract that ``load_dataset`` calls (math.md §6)."""

from __future__ import annotations

import os
from typing import NamedTuple, Protocol

import numpy as np

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE


class DataNotFoundError(FileNotFoundError):
  """No location holds the files of a dataset (and downloading was impossible or forbidden)."""


class DataFileError(ValueError):
  """A dataset file exists but cannot be used (unreadable, wrong arrays, shapes, values or MD5)."""


class Dataset(NamedTuple):
  """A dataset's three splits as NumPy arrays of examples flattened to rows (row-major).

  ``num_pixels`` = prod(``example_shape``): 784 for the 28×28 images of the built-in datasets.

  Attributes:
    name: the dataset's name (one of ``DATASETS`` for the built-in ones, ``PREFIX:ARGUMENT`` for
      the others, e.g. ``file:/abs/path.npz``).
    train: [n_train, num_pixels]; uint8 in {0, 1}, or float32 probabilities in [0, 1] when
      ``dynamic_binarization`` (binarize each batch with ``binarize``).
    valid: [n_valid, num_pixels] uint8 in {0, 1}.
    test: [n_test, num_pixels] uint8 in {0, 1}.
    dynamic_binarization: whether ``train`` holds grey values to be binarized per batch.
    source: the file(s) the data came from (paths on this machine, joined by ', '), or how it was
      made (a generated set).
    files: the same paths, one per entry (see ``provenance``).
    example_shape: the shape of one example before flattening (rows are its row-major order).
    identity: MD5 of the arrays' content (``checks.content_md5``) for data outside the built-in
      datasets, whose names already fix their content (checked against the published checksums);
      '' for those. A run records it, so that a resume on other data is refused.
  """

  name: str
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  dynamic_binarization: bool
  source: str
  files: tuple[str, ...] = ()
  example_shape: tuple[int, ...] = (IMAGE_SIDE, IMAGE_SIDE)
  identity: str = ""

  @property
  def num_pixels(self) -> int:
    """Values per example (the data dimension, a struct's ``num_pixels``)."""
    return int(self.train.shape[1])

  @property
  def train_mean(self) -> np.ndarray:
    """[num_pixels] float32 training-set pixel means (the ``mean_x`` of math.md §5)."""
    return self.train.astype(np.float64).mean(axis=0).astype(np.float32)


class Source(Protocol):
  """Where one dataset comes from and how it is read: what ``load_dataset(name, ...)`` calls.

  A new kind of data (an array file, a tensorflow-datasets dataset) is one module defining a
  Source and registering it (``dvae_jax.data.registry``); the datasets of the papers are
  ``files.FileSource`` instances (``mnist``, ``omniglot``, ``caltech``).
  """

  name: str

  def load(
    self,
    data_dir: str | os.PathLike | None,
    *,
    allow_download: bool | None,
    binarization_seed: int,
  ) -> Dataset:
    """The dataset's splits, checked.

    Args:
      data_dir: the folder named by the user (``--data_dir``), or None for the search path.
      allow_download: whether missing files may be downloaded (None: the default of
        ``locate.downloads_allowed``).
      binarization_seed: seed of any one-off binarization of grey validation / test images.

    Raises:
      DataNotFoundError: the data is nowhere it is looked for; the message says how to provide it.
      DataFileError: the data found cannot be used; the message names the file and the problem.
    """
    ...
