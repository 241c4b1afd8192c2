"""The dataset sources by name, and :func:`load_dataset`, which asks the named one for its data.

A new kind of data is one module defining a ``base.Source`` and registering it here: a fixed name
(``register``) or a family addressed as ``PREFIX:ARGUMENT`` (``register_prefix``), whose factory
builds the source from the argument and the data options (``binarization``, ``feature``). The
families: the user's array file ``file:PATH`` (``array_file``), a dataset prepared by
tensorflow-datasets ``tfds:NAME[:CONFIG]`` (``tfds``) and the generated
``bars_and_stripes:SIDE`` (``bars_and_stripes``), all read through ``arrays``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

from dvae_jax.data import array_file, bars_and_stripes, caltech, checks, mnist, omniglot, tfds
from dvae_jax.data.base import Dataset, Source

_SOURCES: dict[str, Source] = {}
_PREFIXES: dict[str, Callable[..., Source]] = {}
_USAGES: dict[str, str] = {}


def register(source: Source) -> Source:
  """Makes ``source`` loadable as ``load_dataset(source.name)``; returns it."""
  _SOURCES[source.name] = source
  return source


def register_prefix(prefix: str, factory: Callable[..., Source], usage: str = "") -> None:
  """Makes ``load_dataset(f"{prefix}:{argument}", binarization=b, feature=f)`` load
  ``factory(argument, binarization=b, feature=f)``; ``usage`` (default ``PREFIX:...``) is the form
  that error messages show. The factory raises ValueError for an argument or option it cannot use.
  """
  _PREFIXES[prefix] = factory
  _USAGES[prefix] = usage or f"{prefix}:..."


# The datasets of the papers, read from files of known forms.
_PAPER_SOURCES = (mnist.SOURCE, omniglot.SOURCE, caltech.SOURCE)
for _source in _PAPER_SOURCES:
  register(_source)

# The user's data, read through dvae_jax.data.arrays.
register_prefix(array_file.PREFIX, array_file.ArrayFileSource, array_file.USAGE)
register_prefix(tfds.PREFIX, tfds.TfdsSource, tfds.USAGE)
register_prefix(bars_and_stripes.PREFIX, bars_and_stripes.BarsAndStripes, bars_and_stripes.USAGE)

DATASETS = tuple(s.name for s in _PAPER_SOURCES)
DATA_FILES = {s.name: s.files for s in _PAPER_SOURCES}
PUBLISHED_FILE_MD5 = {name: spec.file_md5 for s in _PAPER_SOURCES for name, spec in s.npz.items()}


def dataset_forms() -> list[str]:
  """The valid values of a dataset name: the fixed names, then each family's ``PREFIX:...``."""
  return [*_SOURCES, *(_USAGES[p] for p in _PREFIXES)]


def is_known(name: str) -> bool:
  """Whether ``name`` is a registered name or of a registered ``PREFIX:`` (its argument
  unchecked)."""
  prefix, colon, _ = name.partition(":")
  return name in _SOURCES or bool(colon and prefix in _PREFIXES)


def get_source(name: str, *, binarization: str = "dynamic", feature: str = "") -> Source:
  """The source registered as ``name`` or built from ``PREFIX:ARGUMENT`` with the data options.

  The fixed-name datasets keep their papers' binarization (math.md §6) and have no features to
  choose from: for them ``binarization`` must be 'dynamic' (the default; their data is binary or,
  for OMNIGLOT, binarized dynamically) and ``feature`` ''.

  Raises:
    ValueError: an unknown name, or an argument or option the source cannot use.
  """
  if name in _SOURCES:
    if binarization != "dynamic" or feature:
      raise ValueError(
        f"{name} keeps its papers' binarization and has one feature (math.md §6): binarization "
        f"{binarization!r} and data_feature {feature!r} apply to the user's data "
        f"({', '.join(_USAGES.values())}); leave them at 'dynamic' and ''"
      )
    return _SOURCES[name]
  prefix, colon, argument = name.partition(":")
  if colon and prefix in _PREFIXES:
    return _PREFIXES[prefix](argument, binarization=binarization, feature=feature)
  raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(dataset_forms())}")


def load_dataset(
  name: str = "binarized_mnist",
  data_dir: str | os.PathLike | None = None,
  *,
  allow_download: bool | None = None,
  binarization_seed: int = 0,
  binarization: str = "dynamic",
  feature: str = "",
) -> Dataset:
  """Loads a dataset's train / validation / test splits (math.md §6).

  Args:
    name: one of :data:`DATASETS` or a registered ``PREFIX:ARGUMENT`` (``file:PATH``,
      ``tfds:NAME[:CONFIG]``, ``bars_and_stripes:SIDE``).
    data_dir: the folder holding the files; default: the search path of
      ``locate.data_search_path``.
    allow_download: whether binarized MNIST may be downloaded when missing; None: yes unless
      ``$DVAE_JAX_OFFLINE`` is set.
    binarization_seed: seed of the one-off binarization of OMNIGLOT's validation and test images
      (and of grey data's, see ``arrays``).
    binarization: grey values of the user's data: 'dynamic' or 'static' (see ``arrays``).
    feature: the feature of a ``tfds:`` dataset's examples ('' = ``image`` or the only one).

  Returns:
    A ``Dataset``.

  Raises:
    ValueError: unknown ``name``, or options its source cannot use.
    DataNotFoundError: the files are nowhere on the search path and cannot be downloaded; the
      message lists the folders searched and how to provide the files.
    DataFileError: a file found is unusable; the message names it and the problem.
  """
  source = get_source(name, binarization=binarization, feature=feature)
  return source.load(data_dir, allow_download=allow_download, binarization_seed=binarization_seed)


def check_npz(path: str | os.PathLike) -> None:
  """Checks a dataset ``.npz`` (one of the file names of :data:`DATA_FILES`) before it is loaded:
  ``checks.check_npz_arrays`` against its published form.

  Raises:
    DataFileError: what is wrong, naming the file and how to replace it.
  """
  path = pathlib.Path(path)
  source = next(s for s in _PAPER_SOURCES if path.name in s.npz)
  checks.check_npz_arrays(
    path, source.npz[path.name], lambda problem: source.bad_file_message([path], problem)
  )
