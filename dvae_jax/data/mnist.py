"""Binarized MNIST: Larochelle & Murray's fixed binarization, 50k / 10k / 10k (math.md §6).

Read from ``binarized_mnist.npz`` (arrays train / valid / test), the three original ``.amat`` files,
or a TFDS-prepared ``binarized_mnist`` in ArrayRecord format (``tfds build binarized_mnist
--file_format=array_record``; see :func:`read_tfds_binarized_mnist`). Downloaded from the original
URL when missing everywhere; the pixels are checked against the known MD5 sums before anything is
kept.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Callable

import numpy as np

from dvae_jax.data import checks, download, locate, tfds
from dvae_jax.data.base import NUM_PIXELS, Dataset
from dvae_jax.data.files import FileSource

NAME = "binarized_mnist"
MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
MNIST_SPLITS = {"train": 50_000, "valid": 10_000, "test": 10_000}
# MD5 of each split's uint8 pixel bytes ({0, 1}, row-major), as listed in the data's README.md.
MNIST_MD5 = {
  "train": "8d4f0427d6c2572b5e9994e08bad66de",
  "valid": "3e33becd40c694040e5e6c812e2f4b50",
  "test": "fc34623e13bd64fed2f8b61365198339",
}


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


def read_tfds_binarized_mnist(version_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """The splits of a TFDS-prepared ``binarized_mnist`` (ArrayRecord) in Larochelle's row order.

  Read with ``tfds.data_source`` (no TensorFlow). Its builder keys example i of each ``.amat``
  file by i, so ``tfds.record_order`` gives each record's original row. The caller checks the
  pixels against :data:`MNIST_MD5`, which also catches a different ordering.

  Args:
    version_dir: ``DATA_DIR/binarized_mnist/VERSION``.

  Returns:
    ``{'train', 'valid', 'test'}`` -> [n, 784] uint8.
  """
  source = tfds.data_source(version_dir)
  splits = {}
  for split, tfds_split in (("train", "train"), ("valid", "validation"), ("test", "test")):
    records = source[tfds_split]
    n = len(records)
    images = np.stack([ex["image"] for ex in records.__getitems__(list(range(n)))])
    keys = tfds.record_order(tfds_split, n)  # record j holds example keys[j]
    x = np.empty((n, NUM_PIXELS), np.uint8)
    x[keys] = images.reshape(n, NUM_PIXELS)
    splits[split] = x
  return splits


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
  dest = pathlib.Path(dest_dir).expanduser()
  splits, texts = {}, {}
  for split, count in MNIST_SPLITS.items():
    url = f"{base_url}binarized_mnist_{split}.amat"
    texts[split] = download.fetch(url, urlopen=urlopen, timeout_s=timeout_s)
    x = parse_amat(texts[split])
    digest = hashlib.md5(x.tobytes()).hexdigest()
    if x.shape[0] != count or digest != MNIST_MD5[split]:
      raise ValueError(
        f"{url}: got {x.shape[0]} images with md5 {digest}; expected {count} with md5 "
        f"{MNIST_MD5[split]}"
      )
    splits[split] = x
  for split, text in texts.items():
    download.atomic_write(dest / f"binarized_mnist_{split}.amat", lambda f, t=text: f.write(t))
  path = dest / "binarized_mnist.npz"
  download.atomic_write(path, lambda f: np.savez(f, **splits))
  return path


class BinarizedMnist(FileSource):
  name = NAME
  files = ("binarized_mnist.npz", "binarized_mnist_{train,valid,test}.amat")
  how_to_provide = (
    "binarized_mnist.npz (arrays train/valid/test, uint8 {0,1}) or the three original "
    f"binarized_mnist_{{train,valid,test}}.amat files from {MNIST_URL}; online, the loader "
    f"downloads them itself unless {locate.OFFLINE_ENV}=1 or allow_download=False"
  )
  npz = {
    "binarized_mnist.npz": checks.NpzSpec(
      "binary",
      {s: ((n, NUM_PIXELS), MNIST_MD5[s]) for s, n in MNIST_SPLITS.items()},
      "6a167d58bf86f02bdbe2f558ff907ce0",
    )
  }
  downloadable = True

  def find(self, folder: pathlib.Path) -> list[pathlib.Path] | None:
    """The ``.npz`` or ``.amat`` files, or else (neither present) a TFDS-prepared version."""
    if not any(
      (folder / f).is_file() for f in ("binarized_mnist.npz", "binarized_mnist_train.amat")
    ):
      prepared = tfds.prepared_version(NAME, folder)
      if prepared is not None:
        return [prepared]
    return super().find(folder)

  def read(self, paths: list[pathlib.Path], seed: int) -> Dataset:
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
    splits = {s: checks.check_binary(NAME, s, x) for s, x in splits.items()}
    return Dataset(
      NAME,
      **splits,
      dynamic_binarization=False,
      source=", ".join(map(str, paths)),
      files=tuple(map(str, paths)),
    )

  def download(self, folder: pathlib.Path) -> pathlib.Path:
    return download_binarized_mnist(folder)


SOURCE = BinarizedMnist()
