"""Caltech-101 Silhouettes (28×28), Marlin et al.'s split 1 (math.md §6): stored column-major with
the object 0 on a background of 1; returned upright with the object as 1 (``1 - x``, as most
papers do)."""

from __future__ import annotations

import pathlib

import numpy as np

from dvae_jax.data import checks
from dvae_jax.data.base import NUM_PIXELS, Dataset
from dvae_jax.data.files import FileSource
from dvae_jax.data.images import columns_to_rows

NAME = "caltech101_silhouettes"


class CaltechSilhouettes(FileSource):
  name = NAME
  files = ("caltech101_silhouettes_28.npz", "caltech101_silhouettes_28_split1.mat")
  how_to_provide = (
    "caltech101_silhouettes_28.npz (arrays train/valid/test) or Marlin's "
    "caltech101_silhouettes_28_split1.mat (keys train_data/val_data/test_data)"
  )
  npz = {
    "caltech101_silhouettes_28.npz": checks.NpzSpec(
      "binary",
      {
        "train": ((4100, NUM_PIXELS), "bbbab85396cbe456fb248038690f93a6"),
        "valid": ((2264, NUM_PIXELS), "23edf155ca2bad268a36e717e6d0021c"),
        "test": ((2307, NUM_PIXELS), "6767d681a2ba8ecc486563b1fdb40d6c"),
      },
      "4452c5335b88e3efea33d5c83c3c5fcd",
    )
  }

  def read(self, paths: list[pathlib.Path], seed: int) -> Dataset:
    del seed
    (path,) = paths
    if path.suffix == ".mat":
      import scipy.io

      mat = scipy.io.loadmat(path)
      raw = {"train": mat["train_data"], "valid": mat["val_data"], "test": mat["test_data"]}
    else:
      with np.load(path) as f:
        raw = {s: f[s] for s in ("train", "valid", "test")}
    # Stored column-major with the object 0 on a background of 1; flip so the object is 1.
    splits = {
      s: 1 - checks.check_binary(NAME, s, columns_to_rows(np.asarray(x))) for s, x in raw.items()
    }
    return Dataset(
      NAME,
      **splits,
      dynamic_binarization=False,
      source=str(path),
      files=(str(path),),
    )


SOURCE = CaltechSilhouettes()
