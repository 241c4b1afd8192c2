"""Timing helpers of the training benchmarks (no flags: importable from any benchmark)."""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import jax


def seconds_per_call(fn: Callable[[int], object], steps: int) -> float:
  """Wall seconds per call of ``fn(0) … fn(steps - 1)``, waiting for the last result."""
  t0 = time.perf_counter()
  for i in range(steps):
    out = fn(i)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps


def timed_first_call(fn: Callable[[int], object]) -> float:
  """Seconds of ``fn(0)`` until its result is ready (compilation included)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(0))
  return time.perf_counter() - t0


def interleaved_medians(fns: Sequence[Callable], steps: int, repeats: int) -> list[float]:
  """Median seconds per call of each fn, timed in alternation so that all see the same load."""
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, t in zip(fns, times, strict=True):
      t.append(seconds_per_call(fn, steps))
  return [statistics.median(t) for t in times]


def amortised_seconds_per_step(seconds_per_call: float, calls: int, every: int) -> float:
  """Seconds per step of work done once every ``every`` steps, from the median seconds per call of
  a function timed over ``calls`` calls that does it at calls 0, every, 2·every, … (so
  ``ceil(calls / every)`` times).
  """
  refreshes = -(-calls // every)
  return seconds_per_call * calls / refreshes / every


def run_worker(module: str, flags: list[str], env: dict | None = None):
  """Runs ``python -m module *flags --out=FILE`` in a fresh interpreter and returns FILE's JSON.

  A fresh process gives per-measurement peak RSS and lets XLA_FLAGS (forced host devices) apply.
  """
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "out.json"
    cmd = [sys.executable, "-m", module, *flags, f"--out={out}"]
    repo = pathlib.Path(__file__).resolve().parent.parent
    subprocess.run(cmd, check=True, cwd=repo, env={**os.environ, **(env or {})})
    return json.loads(out.read_text())
