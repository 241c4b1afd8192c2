"""Downloading dataset files: atomic writes, so that an interrupted download leaves no partial file
behind (temporary file beside the target, then ``os.replace``)."""

from __future__ import annotations

import os
import pathlib
import tempfile
import urllib.request
from collections.abc import Callable


def atomic_write(path: pathlib.Path, write: Callable[[object], None]) -> None:
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


def fetch(url: str, *, urlopen: Callable | None = None, timeout_s: float = 60.0) -> bytes:
  """The bytes at ``url``; ``urlopen`` (default ``urllib.request.urlopen``, looked up at call time)
  can be replaced, e.g. by tests. Raises OSError (URLError is one) when the download fails."""
  urlopen = urlopen or urllib.request.urlopen
  with urlopen(url, timeout=timeout_s) as response:
    return response.read()
