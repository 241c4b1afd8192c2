"""The user's own data from one array file: ``load_dataset("file:PATH")``
(``--config.dataset=file:PATH``).

The file is an ``.npz`` holding

* arrays ``train`` and, optionally, ``valid`` and ``test`` (other arrays, e.g. labels, are
  ignored; a split left out is held out of ``train`` as ``arrays`` describes), or
* a single array of any name (all the examples; validation and test are held out of it),

or an ``.npy`` holding a single array. Each array is ``[n, *example_shape]`` with values in {0, 1}
or in [0, 1]; grey values are binarized ``'dynamic'`` or ``'static'``
(``--config.binarization``), see ``dvae_jax.data.arrays``. A relative PATH is relative to the
working directory; the dataset's name holds the absolute path. No data folder is searched.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from dvae_jax.data import arrays, checks
from dvae_jax.data.base import DataFileError, DataNotFoundError, Dataset

PREFIX = "file"
USAGE = "file:PATH"
HOW_TO_PROVIDE = (
  "an .npz with arrays train (and optionally valid, test) or a single array, or an .npy array; "
  "each [n, ...] with values in {0, 1} or [0, 1] (docs/data.md)"
)
# Split names that are not ours: a file using them would otherwise have its validation or test
# examples silently ignored (and others held out of train in their place).
_OTHER_SPLIT_NAMES = {"validation": "valid", "val": "valid", "eval": "test"}


class ArrayFileSource:
  """``file:PATH`` (a ``base.Source``).

  Args:
    argument: the PATH.
    binarization: 'dynamic' or 'static' (grey values only).
    feature: must be '' (a feature is chosen only for ``tfds:`` data).

  Raises:
    ValueError: an empty PATH, an invalid binarization or a feature given.
  """

  def __init__(self, argument: str, *, binarization: str = "dynamic", feature: str = ""):
    if not argument:
      raise ValueError(f"{USAGE} needs the path of an .npz or .npy file")
    if feature:
      raise ValueError(
        f"data_feature {feature!r} is for tfds: datasets; {USAGE} reads the file's arrays"
      )
    self.binarization = arrays.check_binarization(binarization)
    self.path = pathlib.Path(os.path.abspath(os.path.expanduser(argument)))
    self.name = f"{PREFIX}:{self.path}"

  def bad_file_message(self, problem: str) -> str:
    return checks.bad_file_message(self.name, [self.path], problem, HOW_TO_PROVIDE, searched=False)

  def read_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``({split: array}, {split: the file's name for it}) `` as stored (unchecked).

    Raises:
      DataFileError: the file cannot be read or does not hold the arrays described above.
    """
    with open(self.path, "rb") as f:
      magic = f.read(6)
    if not magic.startswith((b"PK", b"\x93NUMPY")):  # np.load would take anything else for a pickle
      raise DataFileError(
        self.bad_file_message(f"it is neither an .npz nor an .npy file (it starts with {magic!r})")
      )
    try:
      loaded = np.load(self.path, allow_pickle=False)
      if isinstance(loaded, np.ndarray):  # an .npy: one array
        return {"train": loaded}, {"train": self.path.name}
      with loaded as f:
        found = list(f.files)
        raw = {split: f[split] for split in arrays.SPLITS if split in found}
        if not raw and len(found) == 1:
          return {"train": f[found[0]]}, {"train": found[0]}
      foreign = [k for k in found if k in _OTHER_SPLIT_NAMES and _OTHER_SPLIT_NAMES[k] not in raw]
    except Exception as err:  # zipfile.BadZipFile, pickles, truncated data, not an array file ...
      raise DataFileError(
        self.bad_file_message(f"it cannot be read ({type(err).__name__}: {err})")
      ) from err
    if "train" not in raw:
      raise DataFileError(
        self.bad_file_message(
          f"it holds the arrays {found}; expected 'train' (with optional 'valid' and 'test') or a "
          "single array"
        )
      )
    if foreign:
      names = ", ".join(f"{k!r} (name it {_OTHER_SPLIT_NAMES[k]!r})" for k in foreign)
      raise DataFileError(self.bad_file_message(f"it holds the array(s) {names}"))
    return raw, {split: split for split in raw}

  def load(
    self,
    data_dir: str | os.PathLike | None = None,
    *,
    allow_download: bool | None = None,
    binarization_seed: int = 0,
  ) -> Dataset:
    """See ``base.Source.load``; ``data_dir`` and ``allow_download`` do not apply to a file."""
    del data_dir, allow_download
    if not self.path.is_file():
      raise DataNotFoundError(
        f"data file {self.path} not found (dataset {self.name}): give the path of {HOW_TO_PROVIDE}"
      )
    raw, names = self.read_arrays()
    return arrays.dataset_from_arrays(
      self.name,
      raw,
      binarization=self.binarization,
      binarization_seed=binarization_seed,
      source=str(self.path),
      files=(str(self.path),),
      bad_file=self.bad_file_message,
      describe=lambda split: f"array {names.get(split, split)!r}",
    )
