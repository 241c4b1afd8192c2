"""OMNIGLOT (28×28), math.md §6: grey training images, binarized dynamically each batch
(``batching.binarize``); validation and test images binarized once with a fixed seed.

1,345 training images are the validation set: the last ones of Burda's ``chardata.mat``, a fixed
uniform draw for the rebuilt stand-in ``omniglot_28x28_rebuilt.npz``, whose training images are
sorted by alphabet (see :func:`omniglot_validation_rows`).
"""

from __future__ import annotations

import pathlib

import numpy as np

from dvae_jax.data import checks
from dvae_jax.data.base import NUM_PIXELS, Dataset
from dvae_jax.data.batching import binarize_once
from dvae_jax.data.files import FileSource
from dvae_jax.data.images import columns_to_rows

NAME = "omniglot"
OMNIGLOT_NUM_VALID = 1_345  # math.md §6: the last 1,345 training images.
OMNIGLOT_SPLIT_SEED = 0  # the rebuilt stand-in's validation draw: one split for every run and user


def omniglot_validation_rows(num_train: int, from_chardata: bool) -> np.ndarray:
  """Sorted indices of the 1,345 OMNIGLOT training images held out for validation.

  For Burda's ``chardata.mat`` the last 1,345 (math.md §6). The rebuilt stand-in stores its
  training images sorted by alphabet, character and drawer, so its last 1,345 would be three
  alphabets only, none of them left in training (its validation NLL came out ≈ 11 nats below the
  test NLL): there the validation rows are a fixed uniform draw without replacement (seed
  ``OMNIGLOT_SPLIT_SEED``), the same for every run.
  """
  if num_train <= OMNIGLOT_NUM_VALID:
    raise ValueError(
      f"omniglot needs more than {OMNIGLOT_NUM_VALID} training images, got {num_train}"
    )
  if from_chardata:
    return np.arange(num_train - OMNIGLOT_NUM_VALID, num_train)
  rng = np.random.default_rng(OMNIGLOT_SPLIT_SEED)
  return np.sort(rng.choice(num_train, OMNIGLOT_NUM_VALID, replace=False))


class Omniglot(FileSource):
  name = NAME
  files = ("chardata.mat", "omniglot_28x28_rebuilt.npz")
  how_to_provide = (
    "Burda et al.'s chardata.mat (IWAE 28x28 OMNIGLOT, keys data/testdata) or "
    "omniglot_28x28_rebuilt.npz (arrays train/test, uint8 0..255)"
  )
  npz = {
    "omniglot_28x28_rebuilt.npz": checks.NpzSpec(
      "grey",
      {
        "train": ((24345, NUM_PIXELS), "0b6966faeb2891fa0f357939e8886415"),
        "test": ((8115, NUM_PIXELS), "cb9222d4942388f97e3673977ac26a9c"),
      },
      "14e5e79d1879952d64151403605cc304",
    )
  }

  def read(self, paths: list[pathlib.Path], seed: int) -> Dataset:
    (path,) = paths
    if path.suffix == ".mat":
      import scipy.io  # only needed for a user-supplied chardata.mat

      mat = scipy.io.loadmat(path)
      # chardata.mat stores one image per column, each column-major: x.T gives column-major rows.
      train = columns_to_rows(np.asarray(mat["data"], np.float32).T)
      test = columns_to_rows(np.asarray(mat["testdata"], np.float32).T)
    else:
      with np.load(path) as f:
        train = f["train"].astype(np.float32) / 255.0
        test = f["test"].astype(np.float32) / 255.0
    if train.min() < 0 or train.max() > 1 or test.min() < 0 or test.max() > 1:
      raise ValueError(f"omniglot images in {path} are not grey values in [0, 1]")
    rows = omniglot_validation_rows(train.shape[0], from_chardata=path.suffix == ".mat")
    is_valid = np.zeros(train.shape[0], bool)
    is_valid[rows] = True
    valid = train[is_valid]
    train = np.ascontiguousarray(train[~is_valid])
    return Dataset(
      NAME,
      train=train,
      valid=binarize_once(valid, seed, 0),
      test=binarize_once(test, seed, 1),
      dynamic_binarization=True,
      source=str(path),
      files=(str(path),),
    )


SOURCE = Omniglot()
