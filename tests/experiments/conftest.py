"""Finished tiny runs shared by the end-to-end tests (test_train, test_evaluate, test_sample, ...):
each distinct config is trained once per session."""

import pathlib
from typing import NamedTuple

import numpy as np
import pytest
from test_train import SHARED_EVAL, TINY, tiny_config

from experiments import sampler_monitor, scoring, train


class FinishedRun(NamedTuple):
  """A finished run and what it computed on the way, recorded for checks against its outputs.

  Attributes:
    workdir: the run's folder (read it; never write to it: other tests share it).
    results: what ``train_and_evaluate`` returned.
    train_log_z: ``(step, log Z, stderr, log weights [S] float64)`` of each training AIS
      (``sampler_monitor.TrainLogZ.estimate``), in order.
    log_partitions: ``(log Z, stderr)`` of each ``scoring.eval_log_partition`` call, in order
      (per evaluation: the prior's, then, without a sampler diagnostic, the sampler's re-anchor;
      last, the test's).
  """

  workdir: pathlib.Path
  results: dict
  train_log_z: list
  log_partitions: list


def train_recorded(config, workdir: pathlib.Path) -> FinishedRun:
  """``train.train_and_evaluate`` with the training AIS and the evaluation log Z recorded."""
  train_log_z, log_partitions = [], []
  estimate, log_partition = sampler_monitor.TrainLogZ.estimate, scoring.eval_log_partition

  def recording_estimate(self, step, prior):
    result = estimate(self, step, prior)
    train_log_z.append(
      (step, float(result.log_z), float(result.stderr), np.asarray(result.log_weights, np.float64))
    )
    return result

  def recording_log_partition(experiment, prior, key, progress=None):
    out = log_partition(experiment, prior, key, progress)
    log_partitions.append(out)
    return out

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sampler_monitor.TrainLogZ, "estimate", recording_estimate)
    patch.setattr(scoring, "eval_log_partition", recording_log_partition)
    results = train.train_and_evaluate(config, workdir)
  return FinishedRun(workdir, results, train_log_z, log_partitions)


@pytest.fixture(scope="session")
def finished_run(data_dir, tmp_path_factory):
  """``finished_run(name, **overrides) -> FinishedRun`` of ``tiny_config(name, data_dir,
  **overrides)``, trained on first use and shared by every later caller in the session."""
  runs = {}

  def get(name: str, **overrides) -> FinishedRun:
    overrides = {k: v for k, v in overrides.items() if k not in TINY or TINY[k] != v}
    key = (name, tuple(sorted(overrides.items())))
    if key not in runs:
      workdir = tmp_path_factory.mktemp(f"run_{name}")
      runs[key] = train_recorded(tiny_config(name, data_dir, **overrides), workdir)
    return runs[key]

  return get


@pytest.fixture(scope="session")
def tiny_run(finished_run) -> tuple[pathlib.Path, dict]:
  """(workdir, results) of a 4-step dvae_sharp run: checkpoints at steps 2 and 4 (best: the better
  validation step), 32 test examples scored with 8 importance samples (``SHARED_EVAL``); the same
  run as test_train's end-to-end dvae_sharp case."""
  run = finished_run("dvae_sharp", **SHARED_EVAL)
  return run.workdir, run.results
