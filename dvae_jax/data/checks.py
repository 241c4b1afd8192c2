"""Checks of the dataset files found, before anything is used, and the checksums a result records.

Every ``.npz`` of a known form is checked by :func:`check_npz` (archive structure, array names,
shapes, dtypes, values in {0, 1} for binary sets, and the published content MD5 for arrays of the
published shapes); the readers check the other forms. A bad file raises ``DataFileError`` with
:func:`bad_file_message`: one paragraph naming the file, what is wrong and how to replace it.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from dvae_jax.data.base import NUM_PIXELS, DataFileError, Dataset


class NpzSpec(NamedTuple):
  """The published form of a dataset ``.npz``.

  Attributes:
    kind: 'binary' ({0, 1} pixels) or 'grey' (uint8 0..255).
    arrays: ``{array name: (published shape, MD5 of its uint8 bytes)}``.
    file_md5: MD5 of the file as distributed, quoted in error messages so that a replacement can
      be verified with md5sum (the check itself uses the arrays' content MD5, which does not
      depend on how the archive was written).
  """

  kind: str
  arrays: Mapping[str, tuple[tuple[int, int], str]]
  file_md5: str


def is_binary(x: np.ndarray) -> bool:
  """Whether every value of ``x`` is 0 or 1 (fast paths for unsigned and signed integers)."""
  if x.dtype.kind in "bu":
    return x.size == 0 or x.max() <= 1
  if x.dtype.kind == "i":
    return x.size == 0 or (x.min() >= 0 and x.max() <= 1)
  return bool(np.all((x == 0) | (x == 1)))


def array_problem(x: np.ndarray, kind: str) -> str | None:
  """What is wrong with an image array of ``kind`` ('binary' {0, 1} or 'grey' uint8), or None."""
  if kind == "grey" and x.dtype != np.uint8:
    return f"has dtype {x.dtype}; expected uint8 grey values 0..255"
  if x.dtype.kind not in "biuf":
    return f"has dtype {x.dtype}; expected uint8 pixels"
  if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != NUM_PIXELS:
    return f"has shape {x.shape}; expected [n, {NUM_PIXELS}] images (n >= 1)"
  if kind == "binary" and not is_binary(x):
    return f"holds values other than 0 and 1 (range {x.min()}..{x.max()})"
  return None


def check_binary(name: str, split: str, x: np.ndarray) -> np.ndarray:
  """``x`` as contiguous uint8 after :func:`array_problem`'s binary check (ValueError if bad)."""
  x = np.asarray(x)
  problem = array_problem(x, "binary")
  if problem:
    raise ValueError(f"{name} {split}: the array {problem}")
  return np.ascontiguousarray(x, dtype=np.uint8)


def bad_file_message(
  name: str,
  paths: Sequence[pathlib.Path],
  problem: str,
  how_to_provide: str,
  *,
  published_md5: Mapping[str, str] | None = None,
  downloadable: bool = False,
) -> str:
  """One paragraph: which file is bad, what is wrong, that the search stopped, how to replace it."""
  published_md5 = published_md5 or {}
  files = " / ".join(map(str, paths))
  published = "".join(
    f"; the published {p.name} has md5 {published_md5[p.name]} (check with md5sum)"
    for p in paths
    if p.name in published_md5
  )
  download = "; or delete it to have it downloaded again" if downloadable else ""
  return " ".join(
    f"data file {files} ({name}) is unusable: {problem}. Loading stopped there (other folders and "
    "file forms are not tried, so that a damaged file is never passed over silently). Replace it "
    f"with a good copy: {how_to_provide}{published}{download}.".split()
  )


def check_npz_arrays(path: pathlib.Path, spec: NpzSpec, bad_file) -> None:
  """Checks a dataset ``.npz`` of form ``spec`` before it is loaded.

  The archive must open (no pickles), hold its image arrays with a numeric dtype (uint8 for grey
  images), shape [n, 784] and, for binary sets, values in {0, 1}. An array of the published shape
  must have the published content (MD5 of its uint8 bytes); arrays of other shapes are taken as
  the user's own data.

  Args:
    path: the file.
    spec: its published form.
    bad_file: ``problem -> message`` (``bad_file_message`` for the dataset and this file).

  Raises:
    DataFileError: what is wrong, naming the file and how to replace it.
  """
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in spec.arrays if k not in f.files]
      if missing:
        raise DataFileError(bad_file(f"it lacks the arrays {missing} (it has {f.files})"))
      for key, (shape, md5) in spec.arrays.items():
        x = f[key]
        problem = array_problem(x, spec.kind)
        if problem is None and x.shape == shape:
          digest = hashlib.md5(np.ascontiguousarray(x, np.uint8).tobytes()).hexdigest()
          if digest != md5:
            problem = (
              f"has the published shape {shape} but not the published data (md5 {digest}, "
              f"expected {md5})"
            )
        if problem:
          raise DataFileError(bad_file(f"array {key!r} {problem}"))
  except DataFileError:
    raise
  except Exception as err:  # zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, ...
    raise DataFileError(bad_file(f"it cannot be read ({type(err).__name__}: {err})")) from err


def file_md5(path: str | os.PathLike) -> str:
  """MD5 of a file's bytes (as ``md5sum`` prints it), read in 1 MiB blocks; of a folder (a
  TFDS-prepared dataset), of its files' names and bytes in sorted order."""
  path = pathlib.Path(path)
  files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
  digest = hashlib.md5()
  for file in files:
    if path.is_dir():
      digest.update(str(file.relative_to(path)).encode() + b"\0")
    with open(file, "rb") as f:
      for block in iter(lambda f=f: f.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()


def provenance(dataset: Dataset) -> dict:
  """What a result JSON records about its data: file names and MD5 sums, no machine paths.

  Returns:
    ``{'data_source': 'name[, name...]', 'data_md5': {name: md5}}``; compare with ``md5sum`` or the
    data folder's ``MD5SUMS``.
  """
  names = [
    f"{pathlib.Path(f).parent.name}/{pathlib.Path(f).name} (TFDS)"
    if os.path.isdir(f)
    else os.path.basename(f)
    for f in dataset.files
  ]
  return {
    "data_source": ", ".join(names),
    "data_md5": {name: file_md5(f) for name, f in zip(names, dataset.files, strict=True)},
  }
