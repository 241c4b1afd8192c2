"""Datasets prepared by tensorflow-datasets in ArrayRecord format, read with ``tfds.data_source``
(no TensorFlow; needs ``tensorflow_datasets``, ``array_record``, ``importlib_resources`` and
pillow): ``tfds build NAME --file_format=array_record`` prepares one."""

from __future__ import annotations

import os
import pathlib


def prepared_version(name: str, folder: pathlib.Path) -> pathlib.Path | None:
  """The newest version folder of a TFDS-prepared ``name`` in ArrayRecord format, or None."""
  versions = sorted(
    (v for v in (folder / name).glob("*.*.*") if (v / "dataset_info.json").is_file()),
    key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.name.split(".")),
  )
  for version in reversed(versions):
    if any(version.glob(f"{name}-*.array_record*")):
      return version
  return None


def data_source(version_dir: str | os.PathLike):
  """``{split name: random-access records}`` of the dataset prepared in ``version_dir``
  (``DATA_DIR/NAME/VERSION``)."""
  import tensorflow_datasets as tfds

  builder = tfds.builder_from_directory(str(version_dir))
  return builder.as_data_source()


def record_order(split: str, n: int) -> list[int]:
  """The example keys of a split's records, in storage order: TFDS stores examples sorted by the
  MD5 hash of their key salted with the split name (``tfds.core.hashing.Hasher``); for a builder
  that keys example i by i, record j holds example ``record_order(split, n)[j]``."""
  from tensorflow_datasets.core import hashing

  hasher = hashing.Hasher(split)
  return sorted(range(n), key=hasher.hash_key)
