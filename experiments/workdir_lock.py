"""One writer per workdir, and a workdir that can be written, checked before training starts.

:class:`WorkdirLock` holds ``WORKDIR/lock`` for the duration of a run: an exclusive ``flock`` on the
file, which also names the holder (host, PID, start time, command line). A second run on the same
workdir is refused with a message naming the holder. The kernel drops the ``flock`` when its process
ends, however it ends, so a stale lock (its process gone) is taken over without a race: of several
runs that find it stale, exactly one gets the ``flock``. As a second line of defence (a file system
without ``flock``, or a lock file written by hand), a lock file naming a live process on this host
other than the caller is refused too; the recorded process start time tells a reused PID from the
holder.

Multi-host runs share one workdir on a shared file system: only process 0 takes the lock; the other
processes wait for its outcome (a broadcast) and stop with it if it failed. Across hosts the
exclusion relies on the file system propagating ``flock`` (NFSv4, Lustre mounted with ``flock``,
GPFS do); where locks stay local to each host the lock file still names the holder, but cannot stop
a run started on another host.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import shutil
import socket
import sys
import time

import numpy as np

LOCK_FILE = "lock"
# Free space asked for beyond the checkpoints (metrics, TensorBoard events, images, results).
SPACE_MARGIN_BYTES = 64 * 2**20


class WorkdirBusyError(RuntimeError):
  """Another run holds the workdir's lock."""


class WorkdirError(OSError):
  """The workdir cannot be created, written, or holds too little free space."""


def _process_start_time(pid: int) -> str | None:
  """The start time of process ``pid`` in clock ticks since boot (Linux /proc), or None."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return None
  return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name field may hold spaces


def _alive(pid: int, start_time: str | None) -> bool:
  """Whether process ``pid`` of this host runs and (if known) started at ``start_time``."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # it exists, owned by another user
  now = _process_start_time(pid)
  return start_time is None or now is None or now == start_time


def describe(holder: dict) -> str:
  """'PID 123 on host h (started ..., command ...)' for a holder record."""
  started = holder.get("started")
  when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
  return (
    f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')} (started {when}, command "
    f"{' '.join(holder.get('argv', [])) or '?'})"
  )


def _unwritable(workdir: pathlib.Path, err: OSError) -> WorkdirError:
  return WorkdirError(
    f"workdir {workdir} cannot be written ({err.strerror or err}: {err.filename or workdir}). "
    "Nothing was started and nothing in it was changed; choose a writable --workdir, or fix its "
    "permissions or free space and run the same command again.",
  )


class WorkdirLock:
  """Context manager holding ``WORKDIR/lock`` (see the module docstring).

  Raises (on entry):
    WorkdirBusyError: another live run holds it.
    WorkdirError: the workdir cannot be created or written.
  """

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / LOCK_FILE
    self._fd: int | None = None

  def __enter__(self) -> WorkdirLock:
    import jax

    if jax.process_count() == 1:
      self.acquire()
      return self
    # Multi-host: process 0 takes the lock, the others wait for the outcome and share it.
    failure = None
    if jax.process_index() == 0:
      try:
        self.acquire()
      except (WorkdirBusyError, WorkdirError) as err:
        failure = err
    status = _broadcast(np.int32(0 if failure is None else 1))
    if failure is not None:
      raise failure
    if status:
      raise WorkdirBusyError(
        f"process 0 could not lock workdir {self.workdir} (see its output); this process stops"
      )
    return self

  def __exit__(self, *exc) -> None:
    self.unlock()

  def acquire(self) -> None:
    """Takes the lock or raises; on success the lock file names this process."""
    try:
      self.workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
      raise _unwritable(self.workdir, err) from err
    while True:
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as err:
        raise _unwritable(self.workdir, err) from err
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise WorkdirBusyError(self._busy_message(holder)) from None
      except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
          os.close(fd)
          raise
        print(
          f"warning: the file system of {self.path} does not support flock; the lock relies on "
          "the PID recorded in it",
          file=sys.stderr,
        )
      # The file may have been removed (a finished holder's unlock, or by hand) between open and
      # flock: then the lock is on an orphan inode; start again with the file now at the path.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    holder = _read(fd)
    if holder and holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid():
      if _alive(int(holder["pid"]), holder.get("pid_start")):
        os.close(fd)
        raise WorkdirBusyError(self._busy_message(holder))
    record = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "pid_start": _process_start_time(os.getpid()),
      "started": time.time(),
      "argv": sys.argv,
    }
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
      os.fsync(fd)
    except OSError as err:
      os.close(fd)
      raise _unwritable(self.workdir, err) from err
    self._fd = fd

  def unlock(self) -> None:
    """Removes the lock file (if it is still ours) and drops the lock."""
    if self._fd is None:
      return
    try:
      if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
        os.unlink(self.path)
    except OSError:
      pass  # gone already, or a read-only workdir: the flock is dropped on close all the same
    os.close(self._fd)
    self._fd = None

  def _busy_message(self, holder: dict | None) -> str:
    who = describe(holder) if holder else "another process (it is starting up)"
    return (
      f"workdir {self.workdir} is in use by {who}: one run per workdir. Wait for it to end, or "
      "choose another --workdir. The lock is freed when that process ends; if you are sure no "
      f"run uses the workdir (e.g. a host that died on a file system without flock), delete "
      f"{self.path}."
    )


def _read(fd: int) -> dict | None:
  try:
    text = os.pread(fd, 1 << 16, 0).decode()
    return json.loads(text) if text.strip() else None
  except (OSError, ValueError):
    return None


def _broadcast(value: np.ndarray) -> int:
  from jax.experimental import multihost_utils

  return int(multihost_utils.broadcast_one_to_all(value))


def _nbytes(leaf) -> int:
  import jax

  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  return int(np.asarray(leaf).nbytes) if not hasattr(leaf, "nbytes") else int(leaf.nbytes)


def check_free_space(workdir: str | os.PathLike, tree, num_checkpoints: int) -> None:
  """Raises WorkdirError when ``workdir`` has less free space than a run needs.

  A run keeps ``num_checkpoints`` latest checkpoints and one best, and writes one more before the
  oldest is removed: (``num_checkpoints`` + 2) copies of ``tree`` (the train state), plus
  ``SPACE_MARGIN_BYTES``.
  """
  import jax

  size = sum(_nbytes(leaf) for leaf in jax.tree.leaves(tree))
  need = (num_checkpoints + 2) * size + SPACE_MARGIN_BYTES
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise WorkdirError(
      f"workdir {workdir} has {free / 2**20:.1f} MiB free; this run needs about "
      f"{need / 2**20:.1f} MiB ({num_checkpoints + 2} checkpoints of {size / 2**20:.1f} MiB and "
      f"{SPACE_MARGIN_BYTES / 2**20:.0f} MiB for metrics and images). Nothing was started; free "
      "some space or choose another --workdir.",
    )
