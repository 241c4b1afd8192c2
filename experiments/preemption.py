"""Preemption-safe stops: SIGTERM / SIGINT finish the current step, checkpoint and exit.

Clusters and preemptible VMs announce the end with SIGTERM (Ctrl-C sends SIGINT). Inside
:func:`stop_on_signals` (the command line's training call) the first such signal only sets a flag;
the training loop polls it (:func:`stop_requested`) after each step, writes a checkpoint of that
step and raises :class:`Preempted`; ``experiments.run`` then exits with :data:`EXIT_CODE` and the
same command resumes exactly. A second signal aborts at once (exit status 128 + signal number),
even while the main thread waits inside XLA: Python runs signal handlers only between bytecodes, so
a watcher thread counts the signals from the interpreter's wake-up file descriptor, which the
C-level handler writes as each signal arrives. Checkpoints are written atomically, so an abort never
damages the last one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading

import numpy as np

# EX_TEMPFAIL of sysexits.h: "temporary failure, the user is invited to retry". Distinct from 0
# (finished), 1 (an error) and 128 + n (killed by signal n).
EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_requested = threading.Event()
_lock = threading.RLock()  # re-entrant: the handler runs in the main thread, which may hold it
_received: list[int] = []  # signal numbers, in order, counted by the watcher thread
_first: list[int] = []  # the first signal, noted by whichever of handler and watcher sees it first


class Preempted(Exception):
  """The run stopped on a signal after checkpointing ``step``; rerun the command to resume."""

  def __init__(self, step: int, checkpoint_dir: str):
    self.step = step
    name = signal_name()
    super().__init__(
      f"stopped by {name} after step {step}; its checkpoint is in {checkpoint_dir}. Run the same "
      f"command to resume (exit code {EXIT_CODE})."
    )


def signal_name() -> str:
  """The name of the first signal received ('a signal' if none)."""
  with _lock:
    return signal.Signals(_first[0]).name if _first else "a signal"


def stop_requested(at_sync: bool = True) -> bool:
  """Whether a stop was requested, as all processes agree.

  One process: the local flag, at any step. Several (multi-host): the processes must stop at the
  same step, so the flags are gathered (a collective), only where ``at_sync`` (a step at which every
  process syncs anyway: log, checkpoint, evaluation); elsewhere False.
  """
  import jax

  if jax.process_count() == 1:
    return _requested.is_set()
  if not at_sync:
    return False
  from jax.experimental import multihost_utils

  flags = multihost_utils.process_allgather(np.int32(_requested.is_set()))
  return bool(np.any(flags))


def debug_signal(step: int, signal_step: int) -> None:
  """Test hook (config ``debug_signal_step``): the run sends itself SIGTERM after step ``step``."""
  if signal_step > 0 and step == signal_step:
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
      raise RuntimeError("debug_signal_step needs stop_on_signals (the command line installs it)")
    os.kill(os.getpid(), signal.SIGTERM)


def _note(signum: int) -> None:
  with _lock:
    if not _first:
      _first.append(signum)
  _requested.set()


def _count(signum: int, stream) -> None:
  with _lock:
    _received.append(signum)
    first = len(_received) == 1
  _note(signum)
  if first:
    stream.write(
      f"received {signal.Signals(signum).name}: finishing the current step, writing a checkpoint, "
      "then exiting; send it again to abort at once\n"
    )
    stream.flush()
  else:
    stream.write(
      f"received {signal.Signals(signum).name} again: aborting at once (the last checkpoint is "
      "kept; the same command resumes from it)\n"
    )
    stream.flush()
    os._exit(128 + signum)


def _watch(sock: socket.socket, signals: tuple[int, ...], stream) -> None:
  while True:
    try:
      data = sock.recv(64)
    except OSError:
      return
    if not data:
      return
    for signum in data:
      if signum in signals:
        _count(signum, stream)


@contextlib.contextmanager
def stop_on_signals(signals=SIGNALS, stream=None):
  """Within this block the first of ``signals`` requests a stop and a second aborts.

  Must be entered from the main thread (where Python installs signal handlers); elsewhere it
  installs nothing. The previous handlers and wake-up descriptor are restored on exit.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  stream = stream or sys.stderr
  signals = tuple(int(s) for s in signals)
  reader, writer = socket.socketpair()
  writer.setblocking(False)
  # The Python-level handler only sets the flag (so that a signal the process sends itself is seen
  # before os.kill returns); counting is the watcher's, which sees every delivery.
  previous = {s: signal.signal(s, lambda signum, frame: _note(signum)) for s in signals}
  previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
  watcher = threading.Thread(target=_watch, args=(reader, signals, stream), daemon=True)
  watcher.start()
  try:
    yield
  finally:
    signal.set_wakeup_fd(previous_fd)
    for s, handler in previous.items():
      signal.signal(s, handler)
    writer.close()  # the watcher's recv returns b"" and it ends
    watcher.join(timeout=5)
    reader.close()
    _requested.clear()
    with _lock:
      _received.clear()
      _first.clear()
