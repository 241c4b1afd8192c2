"""The dataset sources by name, and :func:`load_dataset`, which asks the named one for its data.

A new kind of data is one module defining a ``base.Source`` and registering it here: a fixed name
(``register``) or a family addressed as ``PREFIX:ARGUMENT`` (``register_prefix``, e.g. an array
file ``file:PATH``), whose factory builds the source from the argument.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

from dvae_jax.data import caltech, checks, mnist, omniglot
from dvae_jax.data.base import Dataset, Source

_SOURCES: dict[str, Source] = {}
_PREFIXES: dict[str, Callable[[str], Source]] = {}


def register(source: Source) -> Source:
  """Makes ``source`` loadable as ``load_dataset(source.name)``; returns it."""
  _SOURCES[source.name] = source
  return source


def register_prefix(prefix: str, factory: Callable[[str], Source]) -> None:
  """Makes ``load_dataset(f"{prefix}:{argument}")`` load ``factory(argument)``."""
  _PREFIXES[prefix] = factory


# The datasets of the papers, read from files of known forms.
_PAPER_SOURCES = (mnist.SOURCE, omniglot.SOURCE, caltech.SOURCE)
for _source in _PAPER_SOURCES:
  register(_source)

DATASETS = tuple(s.name for s in _PAPER_SOURCES)
DATA_FILES = {s.name: s.files for s in _PAPER_SOURCES}
PUBLISHED_FILE_MD5 = {name: spec.file_md5 for s in _PAPER_SOURCES for name, spec in s.npz.items()}


def get_source(name: str) -> Source:
  """The source registered as ``name`` or built from ``PREFIX:ARGUMENT``; ValueError otherwise."""
  if name in _SOURCES:
    return _SOURCES[name]
  prefix, colon, argument = name.partition(":")
  if colon and prefix in _PREFIXES:
    return _PREFIXES[prefix](argument)
  forms = ", ".join([*_SOURCES, *(f"{p}:..." for p in _PREFIXES)])
  raise ValueError(f"unknown dataset {name!r}; valid datasets: {forms}")


def load_dataset(
  name: str = "binarized_mnist",
  data_dir: str | os.PathLike | None = None,
  *,
  allow_download: bool | None = None,
  binarization_seed: int = 0,
) -> Dataset:
  """Loads a dataset's train / validation / test splits (math.md §6).

  Args:
    name: one of :data:`DATASETS` (or a registered ``PREFIX:ARGUMENT``).
    data_dir: the folder holding the files; default: the search path of
      ``locate.data_search_path``.
    allow_download: whether binarized MNIST may be downloaded when missing; None: yes unless
      ``$DVAE_JAX_OFFLINE`` is set.
    binarization_seed: seed of the one-off binarization of OMNIGLOT's validation and test images.

  Returns:
    A ``Dataset``.

  Raises:
    ValueError: unknown ``name``.
    DataNotFoundError: the files are nowhere on the search path and cannot be downloaded; the
      message lists the folders searched and how to provide the files.
    DataFileError: a file found is unusable; the message names it and the problem.
  """
  source = get_source(name)
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
