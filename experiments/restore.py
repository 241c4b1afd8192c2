"""A trained run, read back from its workdir without changing it (for ``experiments.evaluate`` and
``experiments.sample``).

The model is rebuilt from the workdir's ``config.json`` by the runner's own constructors
(``experiments.experiment``) and the weights restored by ``checkpointing.Checkpointer`` in
read-only mode, from ``checkpoints_best/`` (the best validation step, as the runner's final
evaluation does: the model's weights only, so no optimiser or prior sampler is built) or
``checkpoints/`` (the latest steps; the runner saves ``(TrainState, record)`` there, restored
into a whole train state).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import NamedTuple

from ml_collections import config_dict

from experiments import checkpointing, config_lib
from experiments import experiment as experiment_lib
from experiments.cli import UsageError, check_minimum, start_command  # noqa: F401 (the CLIs' names)

LATEST_DIR = "checkpoints"  # the runner's folders, see experiments/train.py
BEST_DIR = "checkpoints_best"


class RestoreError(ValueError):
  """The workdir holds no run, or not the checkpoint asked for; the message says what it found."""


class Restored(NamedTuple):
  """A run's model at one checkpoint.

  Attributes:
    experiment: ``experiment.Experiment`` built from the run's config (with any overrides); with
      its optimiser and prior sampler only when restored from ``checkpoints/``.
    state: the checkpoint's ``experiment.Weights`` (params and batch_stats) from
      ``checkpoints_best/``; the whole ``experiment.TrainState`` from ``checkpoints/``.
    step: the checkpoint's training step.
    which: 'best' or 'latest' (the folder it came from).
  """

  experiment: experiment_lib.Experiment
  state: experiment_lib.Weights | experiment_lib.TrainState
  step: int
  which: str


def run_config(workdir: str | os.PathLike, **overrides) -> config_dict.ConfigDict:
  """The run's ``config.json`` as a ConfigDict, with ``overrides`` (config keys) applied."""
  workdir = pathlib.Path(workdir)
  path = workdir / "config.json"
  if not workdir.is_dir():
    raise RestoreError(f"workdir {workdir} does not exist")
  if not path.is_file():
    found = sorted(p.name for p in workdir.iterdir())[:20]
    raise RestoreError(
      f"{workdir} holds no run: no config.json (found: {', '.join(found) or 'nothing'}); "
      "point --workdir to the folder given to python -m experiments.run"
    )
  # A run written before a key existed reads that key's default: every key added since defaults
  # to the behaviour runs had before it (e.g. binarization, dataset_md5), or, where the default
  # has changed since, to config_lib.UNRECORDED_KEYS (steps_per_dispatch: 1).
  from experiments.configs import base

  recorded = json.loads(path.read_text())
  config = config_dict.ConfigDict(
    {**base.get_config().to_dict(), **config_lib.UNRECORDED_KEYS, **recorded}
  )
  for key, value in overrides.items():
    if value is not None:
      config[key] = value
  return config


def checkpoint_steps(workdir: str | os.PathLike) -> dict[str, list[int]]:
  """``{'best': [steps], 'latest': [steps]}`` of the complete checkpoints in the workdir."""
  steps = {}
  for which, folder in (("best", BEST_DIR), ("latest", LATEST_DIR)):
    path = pathlib.Path(workdir) / folder
    if not path.is_dir():
      steps[which] = []
      continue
    ckpt = checkpointing.Checkpointer(path, 1, read_only=True)
    steps[which] = sorted(ckpt.all_steps())
    ckpt.close()
  return steps


def choose_checkpoint(workdir: str | os.PathLike, step: str) -> tuple[str, int]:
  """``(folder kind, step)`` for ``step`` = 'best', 'latest' or a step number.

  Raises:
    RestoreError: no such checkpoint; the message lists the checkpoints found.
  """
  steps = checkpoint_steps(workdir)
  found = (
    f"best-validation checkpoint(s) {steps['best'] or 'none'} in {BEST_DIR}/, "
    f"latest checkpoint(s) {steps['latest'] or 'none'} in {LATEST_DIR}/"
  )
  if not steps["best"] and not steps["latest"]:
    raise RestoreError(
      f"{workdir} holds no checkpoint (found {found}); a run saves its first checkpoint at "
      "--config.checkpoint_every or --config.eval_every steps"
    )
  if step == "best":
    if not steps["best"]:
      raise RestoreError(f"{workdir} holds no best-validation checkpoint (found {found})")
    return "best", steps["best"][-1]
  if step == "latest":
    if steps["latest"] and (not steps["best"] or steps["latest"][-1] >= steps["best"][-1]):
      return "latest", steps["latest"][-1]
    return "best", steps["best"][-1]
  try:
    number = int(step)
  except ValueError:
    raise RestoreError(f"invalid --step {step!r}: 'best', 'latest' or a step number") from None
  for which in ("latest", "best"):
    if number in steps[which]:
      return which, number
  raise RestoreError(f"{workdir} holds no checkpoint of step {number} (found {found})")


def restore(workdir: str | os.PathLike, step: str = "best", **overrides) -> Restored:
  """Builds the run's model (``experiment.build_model``; the whole train state for a latest
  checkpoint) and restores checkpoint ``step`` into it.

  Args:
    workdir: the run's folder.
    step: 'best' (default), 'latest' or a step number.
    **overrides: config keys to change (evaluation sizes, ``data_dir``); None leaves a key.

  Raises:
    RestoreError: not a run folder or no such checkpoint.
    dvae_jax.data.DataNotFoundError: the run's dataset is not found.
  """
  workdir = pathlib.Path(workdir)
  config = run_config(workdir, **overrides)
  which, number = choose_checkpoint(workdir, step)
  try:
    experiment, weights = experiment_lib.build_model(config)
    if which == "latest":
      experiment, state = experiment_lib.create_train_state(experiment, weights)
  except ValueError as err:  # an invalid size (e.g. a batch that does not split over the devices)
    raise UsageError(f"cannot rebuild the run with these settings: {err}") from err
  folder = workdir / (BEST_DIR if which == "best" else LATEST_DIR)
  ckpt = checkpointing.Checkpointer(folder, 1, read_only=True)
  try:
    if which == "best":
      weights = experiment_lib.place_weights(experiment, weights)
      state = experiment_lib.Weights(**ckpt.restore(number, weights._asdict()))
    else:
      state, _ = ckpt.restore(number, (state, checkpointing.make_record(experiment.mesh)))
  finally:
    ckpt.close()
  return Restored(experiment, state, number, which)


def describe(workdir: str | os.PathLike, run: Restored) -> str:
  """One line naming the run and the checkpoint restored."""
  config = run.experiment.config
  return (
    f"{workdir}: {config.method} ({config.prior} prior) on {config.dataset}, {run.which} "
    f"checkpoint, step {run.step}"
  )


def split_examples(dataset, split: str, num_examples: int):
  """[n, 784] binary examples of ``split``: ``scoring.eval_subset`` of it, the runner's choice.

  A dynamically binarized training split (OMNIGLOT) is binarized once with a fixed seed, as the
  loader does for validation and test (math.md §6).
  """
  import numpy as np

  from dvae_jax import data as data_lib
  from experiments import scoring

  x = getattr(dataset, split)
  if num_examples > len(x):
    raise UsageError(f"invalid --num_examples={num_examples}: the {split} split has {len(x)}")
  x = scoring.eval_subset(x, num_examples)
  if x.dtype != np.uint8:
    x = data_lib.binarize_once(x, 0, 2)  # the loader's one-off binarization
  return x
