"""Datasets of the DVAE papers: binarized MNIST, OMNIGLOT (28×28) and Caltech-101 Silhouettes.

Splits and binarization follow MATH.md §6:

* ``binarized_mnist``: Larochelle & Murray's fixed binarization, 50k / 10k / 10k.
* ``omniglot``: 28×28 grey images; 1,345 training images are the validation set: the last ones of
  Burda's ``chardata.mat`` (MATH.md §6), a fixed uniform draw for the rebuilt stand-in, whose
  training images are sorted by alphabet (see :func:`omniglot_validation_rows`). Training images
  stay grey (probabilities in [0, 1]) and are binarized dynamically each batch (see
  :func:`binarize`); validation and test images are binarized once with a fixed seed.
* ``caltech101_silhouettes``: Marlin et al.'s split 1, stored column-major with the object 0 on a
  background of 1; returned upright with the object as 1 (``1 - x``, as most papers do).

All images are returned as rows of 784 pixels in row-major 28×28 order.

Where the files are looked for (the first match wins), see :func:`data_search_path`:

1. the ``data_dir`` argument (``--data_dir`` of ``experiments/run.py``), if given: only there;
2. else ``$DVAE_JAX_DATA_DIR``, if set: only there;
3. else ``../shared/data`` relative to the working directory, ``../shared/data`` beside the
   repository that holds this package, the cache ``$XDG_CACHE_HOME/dvae_jax`` (default
   ``~/.cache/dvae_jax``) and the tensorflow-datasets folder ``$TFDS_DATA_DIR`` (default
   ``~/tensorflow_datasets``).

In every folder, binarized MNIST may also be a TFDS-prepared ``binarized_mnist`` in ArrayRecord
format (``tfds build binarized_mnist --file_format=array_record``, or ``tfds.data_source``): it is
read with ``tfds.data_source``, which needs no TensorFlow (see :func:`read_tfds_binarized_mnist`).

Binarized MNIST missing everywhere is downloaded from the original URL into the first explicit
location (1 or 2) or else the cache, unless downloads are forbidden (``allow_download=False`` or
``DVAE_JAX_OFFLINE=1``). Every file is written atomically (temporary file + ``os.replace``) and the
pixels are checked against the known MD5 sums before anything is kept.

Every file found is checked before use (:func:`check_npz` for the ``.npz`` forms: archive
structure, array names, shapes, dtypes, values in {0, 1} for binary sets, and the published
content MD5 for arrays of the published shapes; the parsers check the ``.amat`` / ``.mat`` forms). A
bad file raises :class:`DataFileError`, one paragraph naming the file, what is wrong and how to
replace it, and the search stops there: a damaged file is never passed over for another one.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

DATASETS = ("binarized_mnist", "omniglot", "caltech101_silhouettes")
IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE

DATA_DIR_ENV = "DVAE_JAX_DATA_DIR"
OFFLINE_ENV = "DVAE_JAX_OFFLINE"

MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
MNIST_SPLITS = {"train": 50_000, "valid": 10_000, "test": 10_000}
# MD5 of each split's uint8 pixel bytes ({0, 1}, row-major), as listed in shared/data/README.md.
MNIST_MD5 = {
  "train": "8d4f0427d6c2572b5e9994e08bad66de",
  "valid": "3e33becd40c694040e5e6c812e2f4b50",
  "test": "fc34623e13bd64fed2f8b61365198339",
}
OMNIGLOT_NUM_VALID = 1_345  # MATH.md §6: the last 1,345 training images.
OMNIGLOT_SPLIT_SEED = 0  # the rebuilt stand-in's validation draw: one split for every run and user

# The files each dataset can be read from, in order of preference within one folder.
DATA_FILES = {
  "binarized_mnist": (
    "binarized_mnist.npz",
    "binarized_mnist_{train,valid,test}.amat",
  ),
  "omniglot": ("chardata.mat", "omniglot_28x28_rebuilt.npz"),
  "caltech101_silhouettes": (
    "caltech101_silhouettes_28.npz",
    "caltech101_silhouettes_28_split1.mat",
  ),
}

_HOW_TO_PROVIDE = {
  "binarized_mnist": (
    "binarized_mnist.npz (arrays train/valid/test, uint8 {0,1}) or the three original "
    f"binarized_mnist_{{train,valid,test}}.amat files from {MNIST_URL}; online, the loader "
    f"downloads them itself unless {OFFLINE_ENV}=1 or allow_download=False"
  ),
  "omniglot": (
    "Burda et al.'s chardata.mat (IWAE 28x28 OMNIGLOT, keys data/testdata) or "
    "omniglot_28x28_rebuilt.npz (arrays train/test, uint8 0..255)"
  ),
  "caltech101_silhouettes": (
    "caltech101_silhouettes_28.npz (arrays train/valid/test) or Marlin's "
    "caltech101_silhouettes_28_split1.mat (keys train_data/val_data/test_data)"
  ),
}


class DataNotFoundError(FileNotFoundError):
  """No location holds the files of a dataset (and downloading was impossible or forbidden)."""


class DataFileError(ValueError):
  """A dataset file exists but cannot be used (unreadable, wrong arrays, shapes, values or MD5)."""


class Dataset(NamedTuple):
  """A dataset's three splits as NumPy arrays of 784-pixel rows (row-major 28×28).

  Attributes:
    name: one of :data:`DATASETS`.
    train: [n_train, 784]; uint8 in {0, 1}, or float32 probabilities in [0, 1] when
      ``dynamic_binarization`` (binarize each batch with :func:`binarize`).
    valid: [n_valid, 784] uint8 in {0, 1}.
    test: [n_test, 784] uint8 in {0, 1}.
    dynamic_binarization: whether ``train`` holds grey values to be binarized per batch.
    source: the file(s) the data came from (paths on this machine, joined by ', ').
    files: the same paths, one per entry (see :func:`provenance`).
  """

  name: str
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  dynamic_binarization: bool
  source: str
  files: tuple[str, ...] = ()

  @property
  def train_mean(self) -> np.ndarray:
    """[784] float32 training-set pixel means (the ``mean_x`` of MATH.md §5)."""
    return self.train.astype(np.float64).mean(axis=0).astype(np.float32)


def cache_dir() -> pathlib.Path:
  """``$XDG_CACHE_HOME/dvae_jax``, default ``~/.cache/dvae_jax``."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "dvae_jax"


def data_search_path(data_dir: str | os.PathLike | None = None) -> list[tuple[pathlib.Path, str]]:
  """The folders searched for data, in order, each with the reason it is on the list.

  An explicit ``data_dir`` (or else ``$DVAE_JAX_DATA_DIR``) is the only folder searched, so that a
  user who names a folder never silently gets data from somewhere else.
  """
  if data_dir:
    return [(pathlib.Path(data_dir).expanduser(), "data_dir argument / --data_dir flag")]
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    return [(pathlib.Path(env).expanduser(), f"${DATA_DIR_ENV}")]
  repo = pathlib.Path(__file__).resolve().parent.parent
  candidates = [
    (pathlib.Path.cwd().parent / "shared" / "data", "../shared/data relative to the working dir"),
    (repo.parent / "shared" / "data", "../shared/data relative to the repository"),
    (cache_dir(), "cache"),
    (tfds_data_dir(), "tensorflow-datasets folder"),
  ]
  seen, unique = set(), []
  for path, why in candidates:
    key = os.path.abspath(path)
    if key not in seen:
      seen.add(key)
      unique.append((path, why))
  return unique


def downloads_allowed(allow_download: bool | None = None) -> bool:
  """``allow_download`` if given, else False exactly when ``$DVAE_JAX_OFFLINE`` is set non-empty
  and not ``0``."""
  if allow_download is not None:
    return allow_download
  return os.environ.get(OFFLINE_ENV, "") in ("", "0")


def load_dataset(
  name: str = "binarized_mnist",
  data_dir: str | os.PathLike | None = None,
  *,
  allow_download: bool | None = None,
  binarization_seed: int = 0,
) -> Dataset:
  """Loads a dataset's train / validation / test splits (MATH.md §6).

  Args:
    name: one of :data:`DATASETS`.
    data_dir: the folder holding the files; default: the search path of :func:`data_search_path`.
    allow_download: whether binarized MNIST may be downloaded when missing; None: yes unless
      ``$DVAE_JAX_OFFLINE`` is set.
    binarization_seed: seed of the one-off binarization of OMNIGLOT's validation and test images.

  Returns:
    A :class:`Dataset`.

  Raises:
    ValueError: unknown ``name``.
    DataNotFoundError: the files are nowhere on the search path and cannot be downloaded; the
      message lists the folders searched and how to provide the files.
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
  searched = data_search_path(data_dir)
  for folder, _ in searched:
    found = _find_files(name, folder)
    if found is not None:
      return _load_checked(name, found, binarization_seed)
  if name == "binarized_mnist" and downloads_allowed(allow_download):
    target = searched[0][0] if (data_dir or os.environ.get(DATA_DIR_ENV)) else cache_dir()
    try:
      path = download_binarized_mnist(target)
    except OSError as err:  # URLError is an OSError
      raise DataNotFoundError(
        _not_found_message(name, searched, f"download failed: {err}")
      ) from err
    return _load_mnist([path], binarization_seed)
  reason = (
    f"downloads are forbidden (allow_download=False or ${OFFLINE_ENV})"
    if name == "binarized_mnist"
    else "this dataset cannot be downloaded automatically"
  )
  raise DataNotFoundError(_not_found_message(name, searched, reason))


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


def _not_found_message(name: str, searched: Sequence[tuple[pathlib.Path, str]], reason: str) -> str:
  where = "\n".join(f"  - {path} ({why})" for path, why in searched)
  return (
    f"dataset {name!r} not found; looked for {' or '.join(DATA_FILES[name])} in:\n{where}\n"
    f"({reason}). Provide {_HOW_TO_PROVIDE[name]} in a folder and point to it with "
    f"--data_dir=FOLDER or ${DATA_DIR_ENV}=FOLDER (or put it in {cache_dir()})."
  )


def tfds_data_dir() -> pathlib.Path:
  """``$TFDS_DATA_DIR``, default ``~/tensorflow_datasets`` (where tensorflow-datasets prepares)."""
  return pathlib.Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def _tfds_prepared(name: str, folder: pathlib.Path) -> pathlib.Path | None:
  """The newest version folder of a TFDS-prepared ``name`` in ArrayRecord format, or None."""
  versions = sorted(
    (v for v in (folder / name).glob("*.*.*") if (v / "dataset_info.json").is_file()),
    key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.name.split(".")),
  )
  for version in reversed(versions):
    if any(version.glob(f"{name}-*.array_record*")):
      return version
  return None


def read_tfds_binarized_mnist(version_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """The splits of a TFDS-prepared ``binarized_mnist`` (ArrayRecord) in Larochelle's row order.

  Read with ``tfds.data_source`` (no TensorFlow; needs ``tensorflow_datasets``, ``array_record``,
  ``importlib_resources`` and pillow). TFDS stores examples sorted by the MD5 hash of their key
  salted with the split name (``tfds.core.hashing.Hasher``); its builder keys example i of each
  ``.amat`` file by i, so sorting the keys by that hash gives each record's original row. The
  caller checks the pixels against :data:`MNIST_MD5`, which also catches a different ordering.

  Args:
    version_dir: ``DATA_DIR/binarized_mnist/VERSION``.

  Returns:
    ``{'train', 'valid', 'test'}`` -> [n, 784] uint8.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import hashing

  version_dir = pathlib.Path(version_dir)
  builder = tfds.builder_from_directory(str(version_dir))
  source = builder.as_data_source()
  splits = {}
  for split, tfds_split in (("train", "train"), ("valid", "validation"), ("test", "test")):
    records = source[tfds_split]
    n = len(records)
    images = np.stack([ex["image"] for ex in records.__getitems__(list(range(n)))])
    hasher = hashing.Hasher(tfds_split)
    keys = sorted(range(n), key=hasher.hash_key)  # record j holds example keys[j]
    x = np.empty((n, NUM_PIXELS), np.uint8)
    x[keys] = images.reshape(n, NUM_PIXELS)
    splits[split] = x
  return splits


def _find_files(name: str, folder: pathlib.Path) -> list[pathlib.Path] | None:
  """The files of ``name`` present in ``folder`` (first acceptable form), or None."""
  if name == "binarized_mnist" and not any(
    (folder / f).is_file() for f in ("binarized_mnist.npz", "binarized_mnist_train.amat")
  ):
    prepared = _tfds_prepared("binarized_mnist", folder)
    if prepared is not None:
      return [prepared]
  for pattern in DATA_FILES[name]:
    if "{" in pattern:
      stem, rest = pattern.split("{", 1)
      alternatives, suffix = rest.split("}", 1)
      paths = [folder / f"{stem}{alt}{suffix}" for alt in alternatives.split(",")]
    else:
      paths = [folder / pattern]
    if all(p.is_file() for p in paths):
      return paths
  return None


def _columns_to_rows(x: np.ndarray) -> np.ndarray:
  """[n, 784] column-major 28×28 images -> [n, 784] row-major."""
  x = x.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 1)
  return np.ascontiguousarray(x.reshape(-1, NUM_PIXELS))


def _binarize_once(probs: np.ndarray, seed: int, stream: int) -> np.ndarray:
  """Fixed Bernoulli draw of grey images (OMNIGLOT validation / test, MATH.md §6)."""
  rng = np.random.default_rng([seed, stream])
  return (rng.random(probs.shape, dtype=np.float32) < probs).astype(np.uint8)


def _check_binary(name: str, split: str, x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  problem = _array_problem(x, "binary")
  if problem:
    raise ValueError(f"{name} {split}: the array {problem}")
  return np.ascontiguousarray(x, dtype=np.uint8)


def _load_mnist(paths: list[pathlib.Path], seed: int) -> Dataset:
  del seed  # fixed binarization
  if len(paths) == 1 and paths[0].is_dir():
    splits = read_tfds_binarized_mnist(paths[0])
    for split, x in splits.items():
      if (
        x.shape[0] != MNIST_SPLITS[split]
        or hashlib.md5(x.tobytes()).hexdigest() != MNIST_MD5[split]
      ):
        raise ValueError(
          f"the TFDS binarized_mnist in {paths[0]} differs from Larochelle's {split} split "
          f"({x.shape[0]} images, md5 {hashlib.md5(x.tobytes()).hexdigest()}; expected "
          f"{MNIST_SPLITS[split]}, {MNIST_MD5[split]})"
        )
  elif len(paths) == 1:
    with np.load(paths[0]) as f:
      splits = {s: f[s] for s in MNIST_SPLITS}
  else:
    splits = {s: parse_amat(p.read_bytes()) for s, p in zip(MNIST_SPLITS, paths, strict=True)}
  splits = {s: _check_binary("binarized_mnist", s, x) for s, x in splits.items()}
  return Dataset(
    "binarized_mnist",
    **splits,
    dynamic_binarization=False,
    source=", ".join(map(str, paths)),
    files=tuple(map(str, paths)),
  )


def omniglot_validation_rows(num_train: int, from_chardata: bool) -> np.ndarray:
  """Sorted indices of the 1,345 OMNIGLOT training images held out for validation.

  For Burda's ``chardata.mat`` the last 1,345 (MATH.md §6). The rebuilt stand-in stores its
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


def _load_omniglot(paths: list[pathlib.Path], seed: int) -> Dataset:
  (path,) = paths
  if path.suffix == ".mat":
    import scipy.io  # only needed for a user-supplied chardata.mat

    mat = scipy.io.loadmat(path)
    # chardata.mat stores one image per column, each column-major: x.T gives column-major rows.
    train = _columns_to_rows(np.asarray(mat["data"], np.float32).T)
    test = _columns_to_rows(np.asarray(mat["testdata"], np.float32).T)
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
    "omniglot",
    train=train,
    valid=_binarize_once(valid, seed, 0),
    test=_binarize_once(test, seed, 1),
    dynamic_binarization=True,
    source=str(path),
    files=(str(path),),
  )


def _load_caltech(paths: list[pathlib.Path], seed: int) -> Dataset:
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
    s: 1 - _check_binary("caltech101_silhouettes", s, _columns_to_rows(np.asarray(x)))
    for s, x in raw.items()
  }
  return Dataset(
    "caltech101_silhouettes",
    **splits,
    dynamic_binarization=False,
    source=str(path),
    files=(str(path),),
  )


_LOADERS: dict[str, Callable[[list[pathlib.Path], int], Dataset]] = {
  "binarized_mnist": _load_mnist,
  "omniglot": _load_omniglot,
  "caltech101_silhouettes": _load_caltech,
}


# ----------------------------------------------------------------------------------------------
# Checks of the files found.

# MD5 of the published files as distributed (shared/data/MD5SUMS), quoted in error messages so
# that a replacement can be verified with md5sum. The loader checks the arrays' content MD5 instead
# (below), which does not depend on how the archive was written.
PUBLISHED_FILE_MD5 = {
  "binarized_mnist.npz": "6a167d58bf86f02bdbe2f558ff907ce0",
  "caltech101_silhouettes_28.npz": "4452c5335b88e3efea33d5c83c3c5fcd",
  "omniglot_28x28_rebuilt.npz": "14e5e79d1879952d64151403605cc304",
}
# The image arrays of each .npz form: (pixel kind, {array: (published shape, MD5 of its uint8
# bytes)}). Binarized MNIST's entries come from MNIST_SPLITS / MNIST_MD5 (see _npz_spec).
_NPZ_IMAGES = {
  "caltech101_silhouettes_28.npz": (
    "binary",
    {
      "train": ((4100, NUM_PIXELS), "bbbab85396cbe456fb248038690f93a6"),
      "valid": ((2264, NUM_PIXELS), "23edf155ca2bad268a36e717e6d0021c"),
      "test": ((2307, NUM_PIXELS), "6767d681a2ba8ecc486563b1fdb40d6c"),
    },
  ),
  "omniglot_28x28_rebuilt.npz": (
    "grey",
    {
      "train": ((24345, NUM_PIXELS), "0b6966faeb2891fa0f357939e8886415"),
      "test": ((8115, NUM_PIXELS), "cb9222d4942388f97e3673977ac26a9c"),
    },
  ),
}


def _npz_spec(filename: str) -> tuple[str, dict[str, tuple[tuple[int, int], str]]] | None:
  if filename == "binarized_mnist.npz":
    return "binary", {s: ((n, NUM_PIXELS), MNIST_MD5[s]) for s, n in MNIST_SPLITS.items()}
  return _NPZ_IMAGES.get(filename)


def _is_binary(x: np.ndarray) -> bool:
  if x.dtype.kind in "bu":
    return x.size == 0 or x.max() <= 1
  if x.dtype.kind == "i":
    return x.size == 0 or (x.min() >= 0 and x.max() <= 1)
  return bool(np.all((x == 0) | (x == 1)))


def _array_problem(x: np.ndarray, kind: str) -> str | None:
  """What is wrong with an image array of ``kind`` ('binary' {0, 1} or 'grey' uint8), or None."""
  if kind == "grey" and x.dtype != np.uint8:
    return f"has dtype {x.dtype}; expected uint8 grey values 0..255"
  if x.dtype.kind not in "biuf":
    return f"has dtype {x.dtype}; expected uint8 pixels"
  if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != NUM_PIXELS:
    return f"has shape {x.shape}; expected [n, {NUM_PIXELS}] images (n >= 1)"
  if kind == "binary" and not _is_binary(x):
    return f"holds values other than 0 and 1 (range {x.min()}..{x.max()})"
  return None


def check_npz(path: str | os.PathLike) -> None:
  """Checks a dataset ``.npz`` (one of the names of :data:`DATA_FILES`) before it is loaded.

  The archive must open (no pickles), hold its image arrays with a numeric dtype (uint8 for the
  grey OMNIGLOT stand-in), shape [n, 784] and, for binary sets, values in {0, 1}. An array of the
  published shape must have the published content (MD5 of its uint8 bytes); arrays of other shapes
  are taken as the user's own data.

  Raises:
    DataFileError: what is wrong, naming the file and how to replace it.
  """
  path = pathlib.Path(path)
  name = next(n for n, files in DATA_FILES.items() if path.name in files)
  kind, images = _npz_spec(path.name)  # a name of DATA_FILES ending in .npz
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in images if k not in f.files]
      if missing:
        raise DataFileError(
          bad_file_message(name, [path], f"it lacks the arrays {missing} (it has {f.files})")
        )
      for key, (shape, md5) in images.items():
        x = f[key]
        problem = _array_problem(x, kind)
        if problem is None and x.shape == shape:
          digest = hashlib.md5(np.ascontiguousarray(x, np.uint8).tobytes()).hexdigest()
          if digest != md5:
            problem = (
              f"has the published shape {shape} but not the published data (md5 {digest}, "
              f"expected {md5})"
            )
        if problem:
          raise DataFileError(bad_file_message(name, [path], f"array {key!r} {problem}"))
  except DataFileError:
    raise
  except Exception as err:  # zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, ...
    raise DataFileError(
      bad_file_message(name, [path], f"it cannot be read ({type(err).__name__}: {err})")
    ) from err


def bad_file_message(name: str, paths: Sequence[pathlib.Path], problem: str) -> str:
  """One paragraph: which file is bad, what is wrong, that the search stopped, how to replace it."""
  files = " / ".join(map(str, paths))
  published = "".join(
    f"; the published {p.name} has md5 {PUBLISHED_FILE_MD5[p.name]} (check with md5sum)"
    for p in paths
    if p.name in PUBLISHED_FILE_MD5
  )
  download = "; or delete it to have it downloaded again" if name == "binarized_mnist" else ""
  return " ".join(
    f"data file {files} ({name}) is unusable: {problem}. Loading stopped there (other folders and "
    "file forms are not tried, so that a damaged file is never passed over silently). Replace it "
    f"with a good copy: {_HOW_TO_PROVIDE[name]}{published}{download}.".split()
  )


def _load_checked(name: str, paths: list[pathlib.Path], seed: int) -> Dataset:
  """``_LOADERS[name]`` after :func:`check_npz`; any failure to read becomes a DataFileError."""
  try:
    for path in paths:
      if _npz_spec(path.name) is not None:
        check_npz(path)
    return _LOADERS[name](paths, seed)
  except DataFileError:
    raise
  except Exception as err:  # the .amat / .mat parsers' and readers' errors
    raise DataFileError(bad_file_message(name, paths, f"{type(err).__name__}: {err}")) from err


# ----------------------------------------------------------------------------------------------
# Download (binarized MNIST only).


def parse_amat(text: bytes) -> np.ndarray:
  """Parses a Larochelle ``.amat`` file ("0 1 0 ..." one image per line) -> [n, 784] uint8."""
  lines = [ln for ln in text.split(b"\n") if ln.strip()]
  raw = np.frombuffer(b" ".join(lines), dtype=np.uint8)
  digits = raw[(raw == ord("0")) | (raw == ord("1"))] - ord("0")
  others = raw[(raw != ord("0")) & (raw != ord("1")) & (raw != ord(" ")) & (raw != ord("\r"))]
  if others.size or digits.size != len(lines) * NUM_PIXELS:
    raise ValueError(
      f"not a binarized MNIST .amat file: expected {len(lines)} rows of {NUM_PIXELS} 0/1 values"
    )
  return digits.reshape(len(lines), NUM_PIXELS)


def _atomic_write(path: pathlib.Path, write: Callable[[object], None]) -> None:
  """Writes through ``write(file)`` to a temporary file beside ``path``, then renames it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def download_binarized_mnist(
  dest_dir: str | os.PathLike,
  *,
  base_url: str = MNIST_URL,
  urlopen: Callable | None = None,
  timeout_s: float = 60.0,
) -> pathlib.Path:
  """Downloads the three ``.amat`` files into ``dest_dir`` and writes ``binarized_mnist.npz``.

  Each split is checked against :data:`MNIST_MD5` before anything is written; files are written
  atomically, so an interrupted download leaves no partial file behind. ``urlopen`` (default
  ``urllib.request.urlopen``, looked up at call time) can be replaced, e.g. by tests.

  Returns:
    The path of the written ``binarized_mnist.npz``.

  Raises:
    OSError: the download failed. ValueError: a file is malformed or its checksum is wrong.
  """
  urlopen = urlopen or urllib.request.urlopen
  dest = pathlib.Path(dest_dir).expanduser()
  splits, texts = {}, {}
  for split, count in MNIST_SPLITS.items():
    url = f"{base_url}binarized_mnist_{split}.amat"
    with urlopen(url, timeout=timeout_s) as response:
      texts[split] = response.read()
    x = parse_amat(texts[split])
    digest = hashlib.md5(x.tobytes()).hexdigest()
    if x.shape[0] != count or digest != MNIST_MD5[split]:
      raise ValueError(
        f"{url}: got {x.shape[0]} images with md5 {digest}; expected {count} with md5 "
        f"{MNIST_MD5[split]}"
      )
    splits[split] = x
  for split, text in texts.items():
    _atomic_write(dest / f"binarized_mnist_{split}.amat", lambda f, t=text: f.write(t))
  path = dest / "binarized_mnist.npz"
  _atomic_write(path, lambda f: np.savez(f, **splits))
  return path


# ----------------------------------------------------------------------------------------------
# Batching: the data order is a pure function of (seed, step), so an interrupted run resumes it.


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(seed: int, step: int, batch_size: int, num_examples: int) -> np.ndarray:
  """Indices [batch_size] of the training examples of global batch ``step``.

  The training set is visited epoch by epoch, each in the order of a permutation seeded by
  ``(seed, epoch)``; batch ``step`` holds the consecutive positions ``step * batch_size + i`` of
  that endless sequence (a batch may straddle two epochs).
  """
  if batch_size < 1 or num_examples < 1 or step < 0:
    raise ValueError(
      f"need batch_size, num_examples >= 1 and step >= 0, got {batch_size}, {num_examples}, {step}"
    )
  positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty(batch_size, dtype=np.int64)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = _epoch_permutation(seed, int(epoch), num_examples)[offsets[sel]]
  return out


def train_batch(dataset: Dataset, seed: int, step: int, batch_size: int) -> np.ndarray:
  """[batch_size, 784] float32 training batch ``step`` (grey values if dynamically binarized)."""
  idx = batch_indices(seed, step, batch_size, dataset.train.shape[0])
  return dataset.train[idx].astype(np.float32)


def binarize(key: jax.Array, probs: jax.Array) -> jax.Array:
  """Dynamic binarization x ~ Bernoulli(probs) (MATH.md §6); same shape and dtype as ``probs``.

  Use one key for the whole global batch: with JAX's partitionable threefry (the default) the
  draw does not depend on how the batch is sharded across devices.
  """
  return jax.random.bernoulli(key, probs).astype(probs.dtype)
