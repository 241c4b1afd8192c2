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


# What each kind of array must hold, for the messages of :func:`dtype_problem`.
_EXPECTED = {
  "binary": "uint8 pixels",
  "grey": "uint8 grey values 0..255",
  "unit": "numbers: integers or booleans in {0, 1}, or floats in [0, 1]",
}


def dtype_problem(x: np.ndarray, kind: str) -> str | None:
  """What is wrong with the dtype of an array of ``kind``, or None.

  Kinds: 'binary' (pixels in {0, 1}, any numeric dtype), 'grey' (uint8 0..255) and 'unit' (the
  user's data: {0, 1} integers or booleans, or floats in [0, 1]).
  """
  if kind == "grey" and x.dtype != np.uint8:
    return f"has dtype {x.dtype}; expected {_EXPECTED[kind]}"
  if x.dtype.kind not in "biuf":
    return f"has dtype {x.dtype}; expected {_EXPECTED[kind]}"
  return None


def values_problem(x: np.ndarray, kind: str) -> str | None:
  """What is wrong with the values of a numeric array of ``kind`` (see :func:`dtype_problem`), or
  None: 'binary' needs {0, 1}; 'unit' needs finite floats in [0, 1] or integers in {0, 1}."""
  if x.size == 0 or kind == "grey":
    return None
  if kind == "binary" and not is_binary(x):
    return f"holds values other than 0 and 1 (range {x.min()}..{x.max()})"
  if kind != "unit":
    return None
  if x.dtype.kind == "f":
    nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    if nan or inf:
      counts = [f"{c} {what}" for c, what in ((nan, "NaN"), (inf, "infinite")) if c]
      return f"holds {' and '.join(counts)} values"
    if x.min() < 0 or x.max() > 1:
      return f"holds values outside [0, 1] (range {x.min():g}..{x.max():g})"
  elif not is_binary(x):
    return (
      f"holds integers other than 0 and 1 (range {x.min()}..{x.max()}); store grey levels as "
      "floats in [0, 1] (e.g. x / 255)"
    )
  return None


def array_problem(x: np.ndarray, kind: str) -> str | None:
  """What is wrong with an image array of ``kind`` ('binary' {0, 1} or 'grey' uint8) of the
  built-in datasets ([n, 784]), or None."""
  problem = dtype_problem(x, kind)
  if problem:
    return problem
  if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != NUM_PIXELS:
    return f"has shape {x.shape}; expected [n, {NUM_PIXELS}] images (n >= 1)"
  return values_problem(x, kind)


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
  searched: bool = True,
) -> str:
  """One paragraph: which file is bad, what is wrong, that the search stopped (for a file found
  on the search path, ``searched``), how to replace it."""
  published_md5 = published_md5 or {}
  files = " / ".join(map(str, paths))
  published = "".join(
    f"; the published {p.name} has md5 {published_md5[p.name]} (check with md5sum)"
    for p in paths
    if p.name in published_md5
  )
  download = "; or delete it to have it downloaded again" if downloadable else ""
  stopped = (
    "Loading stopped there (other folders and file forms are not tried, so that a damaged file "
    "is never passed over silently). Replace it with a good copy: "
    if searched
    else "Fix it: "
  )
  return " ".join(
    f"data file {files} ({name}) is unusable: {problem}. {stopped}"
    f"{how_to_provide}{published}{download}.".split()
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


def content_md5(arrays: Mapping[str, np.ndarray], *extra: object) -> str:
  """MD5 of named arrays' content (name, dtype, shape and bytes of each, in sorted name order)
  and of ``extra`` values' text: a dataset's identity, independent of how its file was written."""
  digest = hashlib.md5()
  for name in sorted(arrays):
    x = np.ascontiguousarray(arrays[name])
    digest.update(f"{name}\0{x.dtype.str}\0{x.shape}\0".encode())
    digest.update(x.tobytes())
  for value in extra:
    digest.update(f"{value!r}\0".encode())
  return digest.hexdigest()


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
    data folder's ``MD5SUMS``. Generated data (no files): its ``source`` and no MD5s.
  """
  names = [
    f"{pathlib.Path(f).parent.name}/{pathlib.Path(f).name} (TFDS)"
    if os.path.isdir(f)
    else os.path.basename(f)
    for f in dataset.files
  ]
  return {
    "data_source": ", ".join(names) or dataset.source,
    "data_md5": {name: file_md5(f) for name, f in zip(names, dataset.files, strict=True)},
  }
