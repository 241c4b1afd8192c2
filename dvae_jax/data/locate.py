"""Where dataset files are looked for (the first match wins), see :func:`data_search_path`:

1. the ``data_dir`` argument (``--data_dir`` of ``experiments/run.py``), if given: only there;
2. else ``$DVAE_JAX_DATA_DIR``, if set: only there;
3. else the download cache ``$XDG_CACHE_HOME/dvae_jax`` (default ``~/.cache/dvae_jax``) and the
   tensorflow-datasets folder ``$TFDS_DATA_DIR`` (default ``~/tensorflow_datasets``).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

DATA_DIR_ENV = "DVAE_JAX_DATA_DIR"
OFFLINE_ENV = "DVAE_JAX_OFFLINE"


def cache_dir() -> pathlib.Path:
  """``$XDG_CACHE_HOME/dvae_jax``, default ``~/.cache/dvae_jax``."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "dvae_jax"


def tfds_data_dir() -> pathlib.Path:
  """``$TFDS_DATA_DIR``, default ``~/tensorflow_datasets`` (where tensorflow-datasets prepares)."""
  return pathlib.Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def explicit_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
  """The folder the user named: ``data_dir`` if given, else ``$DVAE_JAX_DATA_DIR``, else None."""
  named = data_dir or os.environ.get(DATA_DIR_ENV)
  return pathlib.Path(named).expanduser() if named else None


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
  candidates = [(cache_dir(), "cache"), (tfds_data_dir(), "tensorflow-datasets folder")]
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


def find_files(patterns: Sequence[str], folder: pathlib.Path) -> list[pathlib.Path] | None:
  """The files of the first of ``patterns`` wholly present in ``folder``, or None.

  A pattern is a file name or a brace set of alternatives, all required:
  ``binarized_mnist_{train,valid,test}.amat`` stands for three files.
  """
  for pattern in patterns:
    if "{" in pattern:
      stem, rest = pattern.split("{", 1)
      alternatives, suffix = rest.split("}", 1)
      paths = [folder / f"{stem}{alt}{suffix}" for alt in alternatives.split(",")]
    else:
      paths = [folder / pattern]
    if all(p.is_file() for p in paths):
      return paths
  return None


def not_found_message(
  name: str,
  files: Sequence[str],
  how_to_provide: str,
  searched: Sequence[tuple[pathlib.Path, str]],
  reason: str,
) -> str:
  """The message of a DataNotFoundError: what was looked for where, why nothing was fetched, and
  how to provide the files."""
  where = "\n".join(f"  - {path} ({why})" for path, why in searched)
  return (
    f"dataset {name!r} not found; looked for {' or '.join(files)} in:\n{where}\n"
    f"({reason}). Put the files in a folder and point to it with --data_dir=FOLDER or "
    f"${DATA_DIR_ENV}=FOLDER (or put them in {cache_dir()}). The files: {how_to_provide}."
  )
