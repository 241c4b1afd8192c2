"""A dataset read from files found on the search path (``locate``): the one search → check →
read (→ download) sequence behind the datasets of the papers. Each dataset module subclasses
:class:`FileSource` with its file forms and its reader.

The first folder of the search path holding one of the dataset's file forms wins. Every file found
is checked before use (``checks.check_npz_arrays`` for the known ``.npz`` forms; the readers check
the others); a bad file raises ``DataFileError`` and the search stops there: a damaged file is
never passed over for another one. A dataset that can be downloaded and is missing everywhere is
downloaded into the folder the user named (``data_dir`` or ``$DVAE_JAX_DATA_DIR``) or else the
cache, unless downloads are forbidden (``allow_download=False`` or ``$DVAE_JAX_OFFLINE``).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

from dvae_jax.data import checks, locate
from dvae_jax.data.base import DataFileError, DataNotFoundError, Dataset


class FileSource:
  """A dataset stored as files of known forms (a ``base.Source``).

  Attributes (set by subclasses):
    name: the dataset's name.
    files: its file forms, in order of preference within one folder (``locate.find_files``
      patterns).
    how_to_provide: what a user may provide, for the error messages.
    npz: ``{file name: checks.NpzSpec}`` of its ``.npz`` forms.
    downloadable: whether :meth:`download` can fetch it.
  """

  name: str
  files: tuple[str, ...]
  how_to_provide: str
  npz: Mapping[str, checks.NpzSpec] = {}
  downloadable: bool = False

  def find(self, folder: pathlib.Path) -> list[pathlib.Path] | None:
    """The files of the dataset present in ``folder`` (first acceptable form), or None."""
    return locate.find_files(self.files, folder)

  def read(self, paths: list[pathlib.Path], seed: int) -> Dataset:
    """The splits from the files ``paths`` (a result of :meth:`find`); ``seed``: that of any
    one-off binarization. Any exception means an unusable file."""
    raise NotImplementedError

  def download(self, folder: pathlib.Path) -> pathlib.Path:
    """Downloads the dataset into ``folder`` and returns the file to read (OSError on failure)."""
    raise NotImplementedError(f"{self.name} cannot be downloaded")

  def bad_file_message(self, paths: list[pathlib.Path], problem: str) -> str:
    return checks.bad_file_message(
      self.name,
      paths,
      problem,
      self.how_to_provide,
      published_md5={name: spec.file_md5 for name, spec in self.npz.items()},
      downloadable=self.downloadable,
    )

  def read_checked(self, paths: list[pathlib.Path], seed: int) -> Dataset:
    """:meth:`read` after the ``.npz`` checks; any failure to read becomes a DataFileError."""
    try:
      for path in paths:
        if path.name in self.npz:
          checks.check_npz_arrays(
            path, self.npz[path.name], lambda problem, p=path: self.bad_file_message([p], problem)
          )
      return self.read(paths, seed)
    except DataFileError:
      raise
    except Exception as err:  # the .amat / .mat parsers' and readers' errors
      raise DataFileError(self.bad_file_message(paths, f"{type(err).__name__}: {err}")) from err

  def load(
    self,
    data_dir: str | os.PathLike | None = None,
    *,
    allow_download: bool | None = None,
    binarization_seed: int = 0,
  ) -> Dataset:
    """See ``base.Source.load`` and the module doc."""
    searched = locate.data_search_path(data_dir)
    for folder, _ in searched:
      found = self.find(folder)
      if found is not None:
        return self.read_checked(found, binarization_seed)
    if self.downloadable and locate.downloads_allowed(allow_download):
      target = locate.explicit_data_dir(data_dir) or locate.cache_dir()
      try:
        path = self.download(target)
      except OSError as err:  # URLError is an OSError
        message = self.not_found_message(searched, f"download failed: {err}")
        raise DataNotFoundError(message) from err
      return self.read([path], binarization_seed)
    reason = (
      f"downloads are forbidden (allow_download=False or ${locate.OFFLINE_ENV})"
      if self.downloadable
      else "this dataset cannot be downloaded automatically"
    )
    raise DataNotFoundError(self.not_found_message(searched, reason))

  def not_found_message(self, searched, reason: str) -> str:
    return locate.not_found_message(self.name, self.files, self.how_to_provide, searched, reason)
