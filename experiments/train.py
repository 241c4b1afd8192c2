"""Training and evaluation of a run: ``train_and_evaluate(config, workdir)`` (math.md §6).

The runner in three rooms, as Flax's examples: ``experiments.experiment`` builds the run and its
state (``build``), ``experiments.train_step`` makes the jitted train steps, and
``experiments.train_loop`` runs the loop with its periodic actions and evaluations; this module
starts, resumes or finishes a run with them. With ``config.seeds`` the runs of several seeds train
in one program (``train_seeds``, ``experiments.seeds``); each seed's folder ``WORKDIR/seed_N/``
holds what its single run's workdir would.

The data of step ``t`` comes from ``(seed, t)`` alone (``data.batching.slab_indices`` into the
training set, held on the device) and its randomness from ``fold_in(key, t)``, so a run restored
from its checkpoint at step ``t`` continues exactly as if it had never stopped. The batch is split
over all devices (``experiments.sharding``).

Outputs in ``workdir``: ``metrics.jsonl`` (one JSON row per logged step / evaluation),
``tensorboard/`` (event files), ``checkpoints/`` (latest) and ``checkpoints_best/`` (best
validation NLL), ``images/samples_STEP.png`` / ``images/reconstructions_STEP.png``,
``config.json`` and, at the end, ``results.json``.

Its other helpers live beside it: ``scoring`` (NLL of examples, evaluation AIS),
``sampler_monitor`` (sampler diagnostic, log Z re-anchoring and tracker), ``images``,
``checkpointing`` (checkpoints, the run's record, resume), ``guards`` (NaN and divergence guards),
``preemption``, ``workdir_lock`` and ``sharding``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import time

import jax

from experiments import checkpointing, config_lib, train_loop, workdir_lock
from experiments import experiment as experiment_lib
from experiments import metrics as metrics_lib
from experiments import seeds as seeds_lib
from experiments import train_step as train_step_lib


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict:
  """Trains (or resumes) a run in ``workdir`` and returns the results written to ``results.json``.

  Holds the workdir's lock throughout (``experiments.workdir_lock``: one run per workdir).

  With ``config.seeds`` (e.g. '0,1,2,3') it trains those seeds' runs in one program
  (``train_seeds``) and returns ``{seed: results}``.

  Args:
    config: a config of ``experiments/configs`` (keys left at None are resolved, see
      ``experiments.config_lib.resolve_config``).
    workdir: output folder; an existing run there is resumed from its newest checkpoint that
      restores (``Checkpointer.restore_newest``).

  Raises:
    guards.NonFiniteLossError: a step produced NaN/inf (the last good checkpoint is kept).
    guards.DivergenceError: the run left the healthy range (the last good checkpoint is kept).
    preemption.Preempted: a signal stopped the run after checkpointing (see experiments.preemption).
    workdir_lock.WorkdirBusyError, workdir_lock.WorkdirError: the workdir is in use by another run,
      cannot be written or is too full (found before training).
    checkpointing.CheckpointRestoreError: checkpoints exist but none restores.
    checkpointing.CheckpointWriteError: a checkpoint could not be written (earlier ones are kept).
    ValueError: invalid config, or a workdir holding a run with another config
      (checkpointing.WorkdirConfigError).
  """
  if config_lib.seed_list(config):
    return train_seeds(config, workdir)
  with workdir_lock.WorkdirLock(workdir):
    return _train_and_evaluate(config, pathlib.Path(workdir))


def seed_workdir(workdir: str | os.PathLike, seed: int) -> pathlib.Path:
  """The folder of seed ``seed``'s run among a program's ``seeds``: ``WORKDIR/seed_N``."""
  return pathlib.Path(workdir) / f"seed_{seed}"


def train_seeds(config, workdir: str | os.PathLike) -> dict[int, dict]:
  """Trains (or resumes) the runs of ``config.seeds`` in one program and returns each seed's
  results: ``{seed: results}``.

  Run ``N`` is the single run of ``config_lib.seed_config(config, N)`` (``seed=N``), written to
  ``seed_workdir(workdir, N)`` as that run writes its workdir (config.json, metrics.jsonl,
  checkpoints, images, results.json): a seed's folder can be resumed, evaluated or sampled as a
  single run's. One ``vmap`` of the fused steps trains every seed at once
  (``train_step.make_seeds_fused_steps``: parameters, optimiser and sampler states, keys and each
  seed's data order differ); logs, evaluations, images and checkpoints are each seed's own, done on
  its slice of the stacked state when due (``SeedRuns``). The seeds resume together from their
  newest common checkpoint. A non-finite or diverged step of any seed stops the program, naming
  the seed (every seed keeps its last good checkpoint).

  Holds the locks of ``workdir`` and of every seed's folder throughout.

  Raises:
    As ``train_and_evaluate``; ``checkpointing.CheckpointRestoreError`` also when the seeds'
    folders hold no common step to resume from.
  """
  seeds = config_lib.seed_list(config)
  dirs = [seed_workdir(workdir, seed) for seed in seeds]
  with contextlib.ExitStack() as locks:
    for folder in [pathlib.Path(workdir), *dirs]:
      locks.enter_context(workdir_lock.WorkdirLock(folder))
    return seeds_lib.run(config, pathlib.Path(workdir), dirs)


def _train_and_evaluate(config, workdir: pathlib.Path) -> dict:
  wall_start = time.time()
  experiment, state = experiment_lib.build(config)
  config = experiment.config
  primary = jax.process_index() == 0
  checkpointing.check_resumable(workdir, config, train_loop.RESUMABLE_DIFFERENCES)
  if primary:
    workdir_lock.check_free_space(workdir, state, config.max_checkpoints)  # before any write
    train_loop.write_config(workdir, config)
  latest, best = train_loop.checkpointers(workdir, config)
  start, state, record = checkpointing.resume(latest, best, state, experiment.mesh)
  writer = metrics_lib.MetricsWriter(workdir, enabled=primary)
  writer.truncate_after(start)
  progress = metrics_lib.Progress(config.num_steps, start, enabled=primary)
  if start:
    progress.message(f"resuming {workdir} from step {start}")
  progress.message(train_loop.describe(config))

  results = train_loop.finished_results(workdir, start, config)
  if results is not None:
    latest.close()
    best.close()
    writer.close()
    progress.message(f"{workdir} holds a finished run: test NLL {results['test_nll']:.3f} nats")
    return results
  programs = train_loop.make_programs(
    experiment,
    train_step_lib.make_fused_steps(experiment),
    train_step_lib.slab_sharded(experiment.mesh),
  )
  loop = train_loop.TrainLoop(
    experiment, state, workdir, record, writer, progress, latest, best, start, programs
  )
  try:
    train_loop.train(loop, start)
  except BaseException:
    writer.close()
    raise
  finally:
    latest.close()
    best.close()
  return loop.finish(wall_start)
