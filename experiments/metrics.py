"""Metric logging: ``metrics.jsonl`` (one JSON object per row), TensorBoard event files, progress.

Only the primary process (``jax.process_index() == 0``) writes; on other processes every method is a
no-op. A resumed run first drops the rows written after its checkpoint (``truncate_after``), so the
file of an interrupted-and-resumed run equals that of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def to_python(value: Any) -> Any:
  """Converts NumPy / JAX scalars and arrays to plain Python numbers and lists for JSON."""
  if isinstance(value, Mapping):
    return {k: to_python(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [to_python(v) for v in value]
  if isinstance(value, str | bool | int | float) or value is None:
    return value
  array = np.asarray(value)
  if array.ndim == 0:
    return array.item()
  return array.tolist()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """All rows of ``workdir/metrics.jsonl``; an incomplete last line (a write cut off by a crash or a
  full disk) is dropped."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if i < len(lines) - 1:
        raise
  return rows


class MetricsWriter:
  """Appends rows to ``metrics.jsonl`` and scalars/images to TensorBoard (primary process only)."""

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
    self._enabled = enabled
    self._path = pathlib.Path(workdir) / METRICS_FILE
    self._tb = None
    if enabled:
      self._path.parent.mkdir(parents=True, exist_ok=True)
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(pathlib.Path(workdir) / TENSORBOARD_DIR))

  def truncate_after(self, step: int) -> None:
    """Drops the rows with ``row['step'] > step`` (written after the checkpoint being resumed)."""
    if not self._enabled or not self._path.exists():
      return
    kept = [row for row in read_metrics(self._path.parent) if row.get("step", 0) <= step]
    tmp = self._path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
    os.replace(tmp, self._path)

  def write(self, step: int, row: Mapping[str, Any]) -> None:
    """Appends ``{"step": step, **row}``; numeric entries also go to TensorBoard."""
    if not self._enabled:
      return
    row = {"step": int(step), **to_python(dict(row))}
    with self._path.open("a") as f:
      f.write(json.dumps(row) + "\n")
    for key, value in row.items():
      if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
        self._tb.add_scalar(key, value, step)

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
    """``image`` [H, W] uint8 to TensorBoard."""
    if self._enabled:
      self._tb.add_image(tag, image[None], step, dataformats="CHW")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class Progress:
  """A one-line progress bar with ETA on a terminal; otherwise periodic log lines.

  Args:
    total: the last step.
    start: the step the run starts (or resumes) from.
    stream: where to print (default stdout); the bar is used only when it is a terminal.
    enabled: False on non-primary processes.
    unit: what is counted ('step'; 'example' for experiments.evaluate).
    label: what is being done, shown before the count (e.g. 'validation'); none by default.
  """

  def __init__(
    self,
    total: int,
    start: int,
    *,
    stream=None,
    enabled: bool = True,
    unit: str = "step",
    label: str = "",
  ):
    self._total, self._start, self._unit, self._label = total, start, unit, label
    self._stream = stream or sys.stdout
    self._enabled = enabled
    self._tty = enabled and hasattr(self._stream, "isatty") and self._stream.isatty()
    self._t0 = time.perf_counter()
    self._last_draw = -math.inf

  def steps_per_second(self, step: int) -> float:
    elapsed = time.perf_counter() - self._t0
    return (step - self._start) / elapsed if elapsed > 0 else 0.0

  def eta_seconds(self, step: int) -> float:
    rate = self.steps_per_second(step)
    return (self._total - step) / rate if rate > 0 else math.inf

  def update(self, step: int, text: str = "", *, log_line: bool = False) -> None:
    """Redraws the bar (terminal), or prints a line when ``log_line`` (not a terminal)."""
    if not self._enabled or not (self._tty or log_line):
      return
    now = time.perf_counter()
    if self._tty and not log_line and step < self._total and now - self._last_draw < 0.1:
      return  # redraw the bar at most ten times a second
    self._last_draw = now
    frac = step / self._total if self._total else 1.0
    eta = self.eta_seconds(step)
    eta_text = "?" if math.isinf(eta) else _format_seconds(eta)
    label = f"{self._label}: " if self._label else ""
    status = (
      f"{label}{self._unit} {step}/{self._total} ({100 * frac:5.1f}%) "
      f"{self.steps_per_second(step):.1f} {self._unit}s/s ETA {eta_text} {text}"
    )
    if self._tty:
      width = 24
      filled = int(width * frac)
      self._stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {status}\033[K")
    else:
      self._stream.write(status + "\n")
    self._stream.flush()

  def message(self, text: str) -> None:
    """Prints a line (after finishing the bar's line on a terminal)."""
    if self._enabled:
      self._stream.write(("\n" if self._tty else "") + text + "\n")
      self._stream.flush()

  def phase(self, label: str, total: int, unit: str = "example") -> Callable[[int], None]:
    """``update(done)`` for one long phase of the run (a validation, the final test) counted in
    ``unit``: its own bar on a terminal; otherwise a line at every tenth of ``total`` and at the
    end, as ``experiments.evaluate`` prints."""
    bar = Progress(total, 0, stream=self._stream, enabled=self._enabled, unit=unit, label=label)
    last = [0]

    def update(done: int) -> None:
      tenth = total and done * 10 // total != last[0] * 10 // total
      last[0] = done
      bar.update(done, log_line=bool(tenth) or done == total)

    return update

  @contextlib.contextmanager
  def timed(self, label: str):
    """Reports a phase that cannot count its progress (one compiled call, e.g. AIS): its label
    while it runs and its duration when it ends (one line)."""
    if self._enabled and self._tty:
      self._stream.write(f"\r{label} ...\033[K")
      self._stream.flush()
    t0 = time.perf_counter()
    yield
    if self._enabled:
      line = f"{label}: {time.perf_counter() - t0:.1f} s"
      self._stream.write(f"\r{line}\033[K\n" if self._tty else line + "\n")
      self._stream.flush()


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
