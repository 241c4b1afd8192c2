"""The runs of several seeds in one program (``--config.seeds``; ``experiments.train.train_seeds``
holds their locks and calls ``run``).

Their states are stacked along a leading seed axis and trained by one dispatch of the vmapped fused
steps (``SeedRuns``); each seed keeps its own ``train_loop.TrainLoop`` (writer, checkpoints,
tracker, guard), whose periodic actions act on its slice of the stacked state, only when due. Each
seed's folder ``WORKDIR/seed_N/`` holds what its single run's workdir would.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Mapping

import jax
import numpy as np

from dvae_jax.data import batching
from experiments import checkpointing, sharding, train_loop, workdir_lock
from experiments import experiment as experiment_lib
from experiments import metrics as metrics_lib
from experiments import train_step as train_step_lib
from experiments.experiment import Experiment, TrainState
from experiments.train_loop import Programs, TrainLoop


def run(config, workdir: pathlib.Path, dirs: list[pathlib.Path]) -> dict[int, dict]:
  """Trains (or resumes) the seeds' runs of ``config`` into ``dirs`` (one folder per seed, in the
  order of ``config.seeds``; the caller holds their locks) and returns ``{seed: results}``."""
  wall_start = time.time()
  if (workdir / "config.json").exists():
    raise checkpointing.WorkdirConfigError(
      f"workdir {workdir} holds a single run (its config.json); the runs of seeds are written to "
      "WORKDIR/seed_N/: choose another --workdir"
    )
  built = experiment_lib.build_seeds(config)
  experiments = [experiment for experiment, _ in built]
  first = experiments[0]
  config = first.config  # seed_config(config, seeds[0]): every run's config but for its seed
  primary = jax.process_index() == 0
  for experiment, folder in zip(experiments, dirs, strict=True):
    checkpointing.check_resumable(folder, experiment.config, train_loop.RESUMABLE_DIFFERENCES)
  if primary:
    states = [state for _, state in built]
    workdir_lock.check_free_space(workdir, states, config.max_checkpoints)  # before any write
    for experiment, folder in zip(experiments, dirs, strict=True):
      train_loop.write_config(folder, experiment.config)
  opened = [train_loop.checkpointers(folder, config) for folder in dirs]
  try:
    start, resumed = resume_together(workdir, dirs, opened, [s for _, s in built], first.mesh)
  except BaseException:
    for checkpointer in [c for pair in opened for c in pair]:
      checkpointer.close()
    raise
  del built  # the initial states: the resumed ones replace them
  seeds = [experiment.config.seed for experiment in experiments]
  writers, progresses = [], []
  for folder, seed in zip(dirs, seeds, strict=True):
    writers.append(metrics_lib.MetricsWriter(folder, enabled=primary))
    writers[-1].truncate_after(start)
    progresses.append(
      metrics_lib.Progress(config.num_steps, start, enabled=primary, label=f"seed {seed}")
    )
  progress = progresses[0]
  if start:
    progress.message(f"resuming {', '.join(map(str, dirs))} from step {start}")
  names = ", ".join(map(str, seeds))
  progress.message(f"seeds {names} in one program: {train_loop.describe(config)}")
  finished = [train_loop.finished_results(folder, start, config) for folder in dirs]
  if all(results is not None for results in finished):
    for checkpointer in [c for pair in opened for c in pair]:
      checkpointer.close()
    for writer, folder, results in zip(writers, dirs, finished, strict=True):
      writer.close()
      progress.message(f"{folder} holds a finished run: test NLL {results['test_nll']:.3f} nats")
    return dict(zip(seeds, finished, strict=True))

  programs = train_loop.make_programs(
    first,
    train_step_lib.make_seeds_fused_steps(first),
    train_step_lib.seeds_slab_sharded(first.mesh),
  )
  runs = SeedRuns(first, [state for _, state, _ in resumed], programs)
  loops = []
  for i, (experiment, folder) in enumerate(zip(experiments, dirs, strict=True)):
    _, state, record = resumed[i]
    latest, best = opened[i]
    loop = TrainLoop(
      experiment, state, folder, record, writers[i], progresses[i], latest, best, start,
      programs, slot=runs.slots[i], name=f"seed {seeds[i]}: ",
    )  # fmt: skip
    loops.append(loop)
  runs.loops = loops
  del resumed, state
  try:
    train_loop.train(runs, start)
  except BaseException:
    for writer in writers:
      writer.close()
    raise
  finally:
    for checkpointer in [c for pair in opened for c in pair]:
      checkpointer.close()
  results = {}
  for seed, loop in zip(seeds, loops, strict=True):
    results[seed] = train_loop.finished_results(loop.workdir, start, config)
    if results[seed] is None:
      results[seed] = loop.finish(wall_start)
    else:
      loop.writer.close()
      loop.progress.message(
        f"{loop.workdir} holds a finished run: test NLL {results[seed]['test_nll']:.3f} nats"
      )
  return results


def resume_together(workdir, dirs, opened, states, mesh) -> tuple[int, list]:
  """(start, [(start, state, record) of each seed]): every seed resumed from the newest step that
  all of them hold (``checkpointing.resume``; those ahead from that step).

  Raises:
    checkpointing.CheckpointRestoreError: a seed ahead holds no checkpoint of that step.
  """
  resumed = [
    checkpointing.resume(latest, best, state, mesh)
    for (latest, best), state in zip(opened, states, strict=True)
  ]
  start = min(step for step, _, _ in resumed)
  steps = ", ".join(f"{d.name}: {step}" for d, (step, _, _) in zip(dirs, resumed, strict=True))
  for i, ((latest, best), (step, _, _)) in enumerate(zip(opened, resumed, strict=True)):
    if step == start:
      continue
    if start not in latest.all_steps():
      raise checkpointing.CheckpointRestoreError(
        f"the runs of {workdir} would resume from different steps ({steps}) and {dirs[i].name} "
        f"holds no checkpoint of step {start}: the seeds of one program train in step. Resume the "
        "seeds that are behind in a program of their own (or one at a time with --config.seed "
        "and --workdir=FOLDER), then all together."
      )
    resumed[i] = checkpointing.resume(latest, best, states[i], mesh, step=start)
  return start, resumed


class _SeedSlot:
  """One seed's view of the stacked state of ``SeedRuns``: its slice, taken (a device op) when an
  action first reads it after a dispatch; an action's new state is kept until ``SeedRuns.commit``
  writes it back."""

  def __init__(self, runs: SeedRuns, index: int, state):
    self._runs, self._index = runs, index
    self.value, self.changed = state, False

  def get(self):
    if self.value is None:
      self.value = self._runs.take(self._runs.stacked, self._index)
    return self.value

  def set(self, state) -> None:
    self.value, self.changed = state, True

  def clear(self) -> None:
    self.value, self.changed = None, False


class _HostMetrics:
  """The stacked metrics of one dispatch of ``SeedRuns`` ([R, S] device arrays), each fetched to
  the host once, when some seed first reads it."""

  def __init__(self, metrics: dict):
    self._device, self._host = metrics, {}

  def keys(self):
    return self._device.keys()

  def get(self, key: str) -> np.ndarray:
    if key not in self._host:
      self._host[key] = sharding.to_host(self._device[key])
    return self._host[key]


class _SeedMetrics(Mapping):
  """One seed's metrics of a dispatch of ``SeedRuns``: ``{name: [S] host array}``, read lazily."""

  def __init__(self, fetched: _HostMetrics, index: int):
    self._fetched, self._index = fetched, index

  def __getitem__(self, key: str) -> np.ndarray:
    return self._fetched.get(key)[self._index]

  def __iter__(self):
    return iter(self._fetched.keys())

  def __len__(self) -> int:
    return len(self._fetched.keys())


class SeedRuns:
  """The runs of one program's seeds (``train_seeds``), for ``train``: their states stacked along a
  leading seed axis (``experiment.stack_states``), trained by one dispatch of the vmapped fused
  steps (``Programs.train_steps`` from ``train_step.make_seeds_fused_steps``), each seed on its own
  data order (``batching.slab_indices`` of its seed).

  Each seed has its own ``TrainLoop`` (``loops``, set by the caller: writer, checkpoints, tracker,
  guard, evaluation keys) whose ``state`` is its slot of ``slots``: its slice of the stacked state,
  taken only when one of its actions reads it, and written back by ``commit`` only when an action
  changed it. A dispatch with no action due adds no device or host work to the steps'.

  Args:
    experiment: any seed's experiment (they differ in the config's seed alone).
    states: each seed's state, in order.
    programs: the shared ``Programs``.
  """

  def __init__(self, experiment: Experiment, states: list[TrainState], programs: Programs):
    self.stacked = experiment_lib.stack_states(experiment, states)
    self.programs = programs
    self.take = jax.jit(
      lambda stacked, i: jax.tree.map(lambda x: x[i], stacked),
      out_shardings=experiment.state_sharding,
    )
    self._put = jax.jit(
      lambda stacked, i, state: jax.tree.map(lambda x, y: x.at[i].set(y), stacked, state),
      donate_argnums=(0,),
      out_shardings=experiment_lib.seed_stacked(experiment.state_sharding),
    )
    self.slots = [_SeedSlot(self, i, state) for i, state in enumerate(states)]
    self.loops: list[TrainLoop] = []
    self._batch_size = experiment.config.batch_size
    self._num_examples = experiment.dataset.train.shape[0]

  def dispatch(self, first: int, count: int) -> None:
    """Steps ``first .. first + count - 1`` of every seed; each loop's ``metrics`` are its rows."""
    indices = np.stack(
      [
        batching.slab_indices(
          loop.experiment.config.seed, first, count, self._batch_size, self._num_examples
        )
        for loop in self.loops
      ]
    )
    programs = self.programs
    self.stacked, metrics = programs.train_steps(
      self.stacked, programs.train_x, programs.put_indices(indices)
    )
    fetched = _HostMetrics(metrics)
    for i, (loop, slot) in enumerate(zip(self.loops, self.slots, strict=True)):
      slot.clear()
      loop.metrics = _SeedMetrics(fetched, i)

  def commit(self) -> None:
    """Writes the states the actions changed back into the stacked state."""
    for i, slot in enumerate(self.slots):
      if slot.changed:
        self.stacked = self._put(self.stacked, i, slot.value)
        slot.changed = False

  def checkpoint_paths(self, step: int) -> str:
    return ", ".join(str(loop.latest.step_path(step)) for loop in self.loops)
