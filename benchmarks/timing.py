"""Timing helpers of the training benchmarks (no flags: importable from any benchmark)."""

from __future__ import annotations

import statistics
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
