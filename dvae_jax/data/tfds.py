"""Datasets prepared by tensorflow-datasets in ArrayRecord format, read with :func:`data_source`
(no TensorFlow; needs ``tensorflow_datasets``, ``array_record``, ``importlib_resources`` and
pillow): ``tfds build NAME --file_format=array_record`` prepares one.

Any such dataset is a source: ``load_dataset("tfds:NAME[:CONFIG]")``
(``--config.dataset=tfds:NAME[:CONFIG]``, :class:`TfdsSource`), its newest prepared version read
from the data folder named (``--data_dir``) or else the data search path and TensorFlow Datasets'
folder (``$TFDS_DATA_DIR``, default ``~/tensorflow_datasets``). Its splits ``train``,
``validation`` (or ``valid``) and ``test`` (a missing one held out of train), one feature of the
examples (``--config.data_feature``; default ``image`` or the only feature), uint8 grey levels
scaled by 1/255 to [0, 1], then the conventions of ``dvae_jax.data.arrays``.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from dvae_jax.data import arrays, checks, locate
from dvae_jax.data.base import DataFileError, DataNotFoundError, Dataset

PREFIX = "tfds"
USAGE = "tfds:NAME[:CONFIG]"
# The dataset's splits for ours, in order of preference.
SPLIT_NAMES = {"train": ("train",), "valid": ("validation", "valid"), "test": ("test",)}
DEFAULT_FEATURE = "image"


def _versions(name: str, folder: pathlib.Path, config: str = "") -> list[pathlib.Path]:
  """The prepared version folders of ``name`` (``folder/NAME[/CONFIG]/X.Y.Z``), oldest first."""
  return sorted(
    (v for v in (folder / name / config).glob("*.*.*") if (v / "dataset_info.json").is_file()),
    key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.name.split(".")),
  )


def prepared_version(name: str, folder: pathlib.Path, config: str = "") -> pathlib.Path | None:
  """The newest version folder of a TFDS-prepared ``name`` (of builder config ``config``, if
  given) in ArrayRecord format, or None."""
  for version in reversed(_versions(name, folder, config)):
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


def _read_feature(version_dir: pathlib.Path, feature: str) -> tuple[dict, dict, str]:
  """``({split: [n, ...] array of the feature}, {split: its TFDS split name}, feature)``."""
  source = data_source(version_dir)
  names = {}
  for split, candidates in SPLIT_NAMES.items():
    found = next((c for c in candidates if c in source), None)
    if found is not None:
      names[split] = found
  if "train" not in names:
    raise DataFileError(
      f"the tensorflow-datasets dataset in {version_dir} has no 'train' split (splits: "
      f"{', '.join(map(str, source))})"
    )
  first = source[names["train"]][0]
  features = sorted(first) if isinstance(first, dict) else []
  chosen = feature or (
    DEFAULT_FEATURE if DEFAULT_FEATURE in features else features[0] if len(features) == 1 else ""
  )
  if chosen not in features:
    raise DataFileError(
      f"the tensorflow-datasets dataset in {version_dir} has "
      + (f"no feature {feature!r}" if feature else f"no feature {DEFAULT_FEATURE!r}")
      + f"; its features: {', '.join(features) or 'none'}; choose one with "
      "--config.data_feature=NAME"
    )
  raw = {}
  for split, name in names.items():
    records = source[name]
    examples = records.__getitems__(list(range(len(records))))
    raw[split] = np.stack([np.asarray(ex[chosen]) for ex in examples]) if examples else np.zeros(0)
  return raw, names, chosen


class TfdsSource:
  """``tfds:NAME[:CONFIG]``, a dataset prepared by tensorflow-datasets (a ``base.Source``).

  Args:
    argument: NAME or NAME:CONFIG (a builder config's name).
    binarization: 'dynamic' or 'static' (grey values only).
    feature: the examples' feature to model; '' = ``image`` or the only one.

  Raises:
    ValueError: a malformed argument or an invalid binarization.
  """

  def __init__(self, argument: str, *, binarization: str = "dynamic", feature: str = ""):
    name, _, config = argument.partition(":")
    if not name or ":" in config or argument.endswith(":"):
      raise ValueError(f"{PREFIX}:{argument} is not of the form {USAGE}")
    self.dataset, self.builder_config, self.feature = name, config, feature
    self.binarization = arrays.check_binarization(binarization)
    self.name = f"{PREFIX}:{argument}"

  @property
  def build_name(self) -> str:
    """NAME[/CONFIG], as ``tfds build`` takes it."""
    return f"{self.dataset}/{self.builder_config}" if self.builder_config else self.dataset

  def prepare_command(self) -> str:
    return f"tfds build {self.build_name} --file_format=array_record --data_dir=FOLDER"

  def folders(self, data_dir) -> list[tuple[pathlib.Path, str]]:
    """Where it is looked for: ``data_dir`` alone if given, else the data search path and then
    TensorFlow Datasets' folder."""
    searched = locate.data_search_path(data_dir)
    if data_dir:
      return searched
    seen = {os.path.abspath(path) for path, _ in searched}
    tfds_dir = locate.tfds_data_dir()
    if os.path.abspath(tfds_dir) not in seen:
      searched.append((tfds_dir, "tensorflow-datasets folder, $TFDS_DATA_DIR"))
    return searched

  def not_prepared_message(self, searched) -> str:
    where = "\n".join(f"  - {path} ({why})" for path, why in searched)
    other = [
      str(v) for folder, _ in searched for v in _versions(self.dataset, folder, self.builder_config)
    ]
    other_note = (
      f" Found it prepared in another file format in {', '.join(other)}: random access needs "
      "ArrayRecord, so build it again with --file_format=array_record."
      if other
      else ""
    )
    return (
      f"dataset {self.name!r} is not prepared in ArrayRecord format in:\n{where}\n"
      f"Prepare it with\n  {self.prepare_command()}\n(reading it needs no TensorFlow; "
      "preparing most stock datasets does: pip install tensorflow) and point to FOLDER with "
      f"--data_dir=FOLDER or $TFDS_DATA_DIR=FOLDER.{other_note}"
    )

  def load(
    self,
    data_dir: str | os.PathLike | None = None,
    *,
    allow_download: bool | None = None,
    binarization_seed: int = 0,
  ) -> Dataset:
    """See ``base.Source.load``. Nothing is downloaded: tensorflow-datasets prepares the data."""
    del allow_download
    searched = self.folders(data_dir)
    version = next(
      (
        v
        for v in (prepared_version(self.dataset, f, self.builder_config) for f, _ in searched)
        if v is not None
      ),
      None,
    )
    if version is None:
      raise DataNotFoundError(self.not_prepared_message(searched))

    def bad_file(problem):
      return checks.bad_file_message(
        self.name, [version], problem, f"prepare it again: {self.prepare_command()}"
      )

    try:
      raw, names, feature = _read_feature(version, self.feature)
    except DataFileError:
      raise
    except Exception as err:  # a damaged or incomplete preparation
      raise DataFileError(bad_file(f"it cannot be read ({type(err).__name__}: {err})")) from err
    if any(x.dtype == np.uint8 and not checks.is_binary(x) for x in raw.values()):
      raw = {s: x.astype(np.float32) / 255.0 for s, x in raw.items()}  # grey levels 0..255
    return arrays.dataset_from_arrays(
      self.name,
      raw,
      binarization=self.binarization,
      binarization_seed=binarization_seed,
      source=str(version),
      files=(str(version),),
      bad_file=bad_file,
      describe=lambda split: f"split {names.get(split, split)!r} (feature {feature!r})",
    )
