"""Training and evaluation loop: ``train_and_evaluate(config, workdir)`` (math.md §6).

The runner in three rooms, as Flax's examples: ``experiments.experiment`` builds the run and its
state (``build``), ``experiments.train_step`` makes the jitted train steps, and this module runs the
loop with its evaluations. The loop dispatches ``steps_per_dispatch`` (S) fused steps at a time
(``train_step.make_fused_steps``: one launch, no host work between them); after each dispatch it
runs the periodic actions due (``experiments.periodic``: refresh the sampler's log Z, log,
evaluate, write images, checkpoint), a list rather than flags in the loop's body. Their periods are
multiples of S (``config_lib`` refuses others), so a run with S > 1 logs, evaluates and saves at
the same steps as with S = 1, and is the same run.

The data of step ``t`` comes from ``(seed, t)`` alone (``data.batching.slab_indices`` into the
training set, held on the device) and its randomness from ``fold_in(key, t)``, so a run restored
from its checkpoint at step ``t`` continues exactly as if it had never stopped. The batch is split
over all devices (``experiments.sharding``).

With ``config.seeds`` the runs of several seeds train in one program (``train_seeds``): one
vmapped dispatch of the fused steps over their stacked states (``SeedRuns``), and one loop per seed
whose periodic actions act on its slice of the stacked state, only when due; each seed's folder
``WORKDIR/seed_N/`` holds what its single run's workdir would.

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
import json
import os
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from dvae_jax import data as data_lib
from dvae_jax.data import batching
from experiments import (
  checkpointing,
  config_lib,
  guards,
  images,
  periodic,
  preemption,
  sampler_monitor,
  scoring,
  sharding,
  workdir_lock,
)
from experiments import experiment as experiment_lib
from experiments import metrics as metrics_lib
from experiments import train_step as train_step_lib
from experiments.experiment import Experiment, TrainState

IMAGES_DIR = "images"  # the sample and reconstruction grids, under the workdir

# Keys whose change does not alter the trajectory of a run; any other difference between a workdir's
# config and the requested one refuses to resume.
RESUMABLE_DIFFERENCES = (
  "data_dir",
  "guard_max_nats",
  "guard_max_log_z",
  "guard_max_grad_norm",
  "guard_grad_norm_steps",
  "debug_signal_step",
  # Fused steps compute the same steps (tests/experiments/test_fused_steps.py).
  "steps_per_dispatch",
  # Diagnostics and the reported log Z: they never touch the parameters' trajectory.
  "sampler_diagnostic_replicas",
  "sampler_diagnostic_temperatures",
  "log_z_refresh_every",
  "log_z_tracker_replicas",
  "log_z_tracker_sweeps",
  "train_ais_num_chains",
  "train_ais_num_temperatures",
  "log_z_tracker_target_ess",
)


def metrics_row(metrics: dict, index: int | None = None) -> dict[str, float]:
  """A train step's metrics as host floats, without the guards' per-step flags: ``metrics`` of one
  step, or row ``index`` of the stacked metrics of fused steps."""
  rows = {k: sharding.to_host(v) for k, v in metrics.items() if k not in guards.FLAG_KEYS}
  return {k: (v if index is None else v[index]).item() for k, v in rows.items()}


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
    return _train_seeds(config, pathlib.Path(workdir), dirs)


def _write_config(workdir: pathlib.Path, config) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(
    json.dumps(metrics_lib.to_python(config.to_dict()), indent=1, sort_keys=True)
  )


def _checkpointers(workdir: pathlib.Path, config) -> tuple:
  """(latest, best) checkpointers of a run's folder."""
  latest = checkpointing.Checkpointer(workdir / "checkpoints", config.max_checkpoints)
  return latest, checkpointing.Checkpointer(workdir / "checkpoints_best", 1)


def _finished(workdir: pathlib.Path, start: int, config) -> dict | None:
  """The results of a finished run in ``workdir`` (None if it has not finished)."""
  path = workdir / "results.json"
  if start == config.num_steps and path.exists():
    return json.loads(path.read_text())
  return None


def _describe(config) -> str:
  return (
    f"{config.method} ({config.prior} prior, {config.sampler}) on {config.dataset}, "
    f"struct {config.struct}, beta {config.beta}, k {config.k}, {config.num_steps} steps, "
    f"{jax.device_count()} device(s)"
  )


def _train_and_evaluate(config, workdir: pathlib.Path) -> dict:
  wall_start = time.time()
  experiment, state = experiment_lib.build(config)
  config = experiment.config
  primary = jax.process_index() == 0
  checkpointing.check_resumable(workdir, config, RESUMABLE_DIFFERENCES)
  if primary:
    workdir_lock.check_free_space(workdir, state, config.max_checkpoints)  # before any write
    _write_config(workdir, config)
  latest, best = _checkpointers(workdir, config)
  start, state, record = checkpointing.resume(latest, best, state, experiment.mesh)
  writer = metrics_lib.MetricsWriter(workdir, enabled=primary)
  writer.truncate_after(start)
  progress = metrics_lib.Progress(config.num_steps, start, enabled=primary)
  if start:
    progress.message(f"resuming {workdir} from step {start}")
  progress.message(_describe(config))

  results = _finished(workdir, start, config)
  if results is not None:
    latest.close()
    best.close()
    writer.close()
    progress.message(f"{workdir} holds a finished run: test NLL {results['test_nll']:.3f} nats")
    return results
  programs = make_programs(
    experiment,
    train_step_lib.make_fused_steps(experiment),
    train_step_lib.slab_sharded(experiment.mesh),
  )
  loop = TrainLoop(
    experiment, state, workdir, record, writer, progress, latest, best, start, programs
  )
  try:
    train(loop, start)
  except BaseException:
    writer.close()
    raise
  finally:
    latest.close()
    best.close()
  return loop.finish(wall_start)


def _train_seeds(config, workdir: pathlib.Path, dirs: list[pathlib.Path]) -> dict[int, dict]:
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
    checkpointing.check_resumable(folder, experiment.config, RESUMABLE_DIFFERENCES)
  if primary:
    states = [state for _, state in built]
    workdir_lock.check_free_space(workdir, states, config.max_checkpoints)  # before any write
    for experiment, folder in zip(experiments, dirs, strict=True):
      _write_config(folder, experiment.config)
  opened = [_checkpointers(folder, config) for folder in dirs]
  try:
    start, resumed = _resume_together(workdir, dirs, opened, [s for _, s in built], first.mesh)
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
  progress.message(f"seeds {', '.join(map(str, seeds))} in one program: {_describe(config)}")
  finished = [_finished(folder, start, config) for folder in dirs]
  if all(results is not None for results in finished):
    for checkpointer in [c for pair in opened for c in pair]:
      checkpointer.close()
    for writer, folder, results in zip(writers, dirs, finished, strict=True):
      writer.close()
      progress.message(f"{folder} holds a finished run: test NLL {results['test_nll']:.3f} nats")
    return dict(zip(seeds, finished, strict=True))

  programs = make_programs(
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
    train(runs, start)
  except BaseException:
    for writer in writers:
      writer.close()
    raise
  finally:
    for checkpointer in [c for pair in opened for c in pair]:
      checkpointer.close()
  results = {}
  for seed, loop in zip(seeds, loops, strict=True):
    results[seed] = _finished(loop.workdir, start, config)
    if results[seed] is None:
      results[seed] = loop.finish(wall_start)
    else:
      loop.writer.close()
      loop.progress.message(
        f"{loop.workdir} holds a finished run: test NLL {results[seed]['test_nll']:.3f} nats"
      )
  return results


def _resume_together(workdir, dirs, opened, states, mesh) -> tuple[int, list]:
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


def train(runs, start: int) -> None:
  """Training steps ``start`` .. ``num_steps - 1``, in dispatches of ``steps_per_dispatch`` fused
  steps (``periodic.dispatches``), each followed by the periodic actions due (``loop.actions``, in
  order): first those that only enqueue device work, then, once the steps in flight are done and
  checked (``guards.check_pending``), those that need the state on the host.

  Args:
    runs: a ``TrainLoop`` (one run) or ``SeedRuns`` (the seeds of one program, dispatched
      together): ``dispatch(first, count)`` runs the steps, ``loops`` are the runs' loops, whose
      actions run after each dispatch, ``commit()`` keeps what the actions changed in the state.
    start: the first step.

  Raises:
    guards.NonFiniteLossError, guards.DivergenceError: a step went wrong (see the guards).
    preemption.Preempted: a signal asked the run to stop; it stopped after checkpointing.
  """
  loops = runs.loops
  config = loops[0].experiment.config
  for first, count in periodic.dispatches(start, config.num_steps, config.steps_per_dispatch):
    t0 = time.perf_counter()
    runs.dispatch(first, count)
    done = first + count
    for step in range(first + 1, done + 1):
      preemption.debug_signal(step, config.debug_signal_step)
    dues = []
    for loop in loops:
      loop.pending.append((done, loop.metrics))
      dues.append(periodic.due(loop.actions, done, done == config.num_steps))
      for action in dues[-1]:
        if not action.on_host:
          action.run(done)
    on_host = loops[0].sync_each_step or any(action.on_host for action in dues[0])
    # A signal (SIGTERM / SIGINT) stops the run after this dispatch, with a checkpoint of it.
    stopping = preemption.stop_requested(at_sync=on_host)
    for loop in loops:
      loop.stopping = stopping
      if on_host or stopping:
        loop.check_pending()  # waits for the steps: their time is counted
    elapsed = time.perf_counter() - t0
    for loop, due in zip(loops, dues, strict=True):
      loop.train_seconds += elapsed
      for action in due:
        if action.on_host:
          action.run(done)
    if stopping:
      for loop in loops:
        loop.checkpoint(done)  # unless the action did
      raise preemption.Preempted(done, runs.checkpoint_paths(done))
    runs.commit()
  if preemption.stop_requested():  # a signal during the last dispatch: stop before the final test
    raise preemption.Preempted(config.num_steps, runs.checkpoint_paths(config.num_steps))


class Programs(NamedTuple):
  """The compiled functions and device data of a run's loop, made once (``make_programs``) and
  shared by the runs of one program.

  Attributes:
    train_steps: ``(state, train_x, indices) -> (state, metrics)``, the fused steps.
    train_x: the training set on the device (``train_step.prepare_train_x``).
    put_indices: places a slab of batch indices as ``train_steps`` takes it.
    val_eval, test_eval: ``scoring.make_eval_fn`` with the validation's / the test's importance
      samples (the same function when they agree: compiled once).
    image_fn: ``images.make_image_fn``.
    log_z_tracking: ``sampler_monitor.make_log_z_tracking`` (None: no tracker).
  """

  train_steps: Callable
  train_x: jax.Array
  put_indices: Callable
  val_eval: Callable
  test_eval: Callable
  image_fn: Callable
  log_z_tracking: Any


def make_programs(experiment: Experiment, train_steps: Callable, slab_sharding) -> Programs:
  """The ``Programs`` of ``experiment`` with the fused steps ``train_steps``, whose slabs of batch
  indices are placed with ``slab_sharding``."""
  config = experiment.config
  val_eval = scoring.make_eval_fn(experiment, config.val_iw_samples)
  test_eval = val_eval  # the same program when the sizes agree: compiled once
  if config.eval_iw_samples != config.val_iw_samples:
    test_eval = scoring.make_eval_fn(experiment, config.eval_iw_samples)
  return Programs(
    train_steps=train_steps,
    train_x=train_step_lib.prepare_train_x(experiment),
    put_indices=lambda idx: sharding.put_global(idx.astype(np.int32), slab_sharding),
    val_eval=val_eval,
    test_eval=test_eval,
    image_fn=images.make_image_fn(experiment),
    log_z_tracking=sampler_monitor.make_log_z_tracking(experiment),
  )


class _Held:
  """The state of a run trained alone: held as is."""

  def __init__(self, state):
    self.value = state

  def get(self):
    return self.value

  def set(self, state) -> None:
    self.value = state


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


class TrainLoop:
  """The training loop's state between steps and its periodic actions (:attr:`actions`).

  Dispatches since the last host sync wait in ``pending`` as (steps done, stacked metrics on
  device). Reading a step's ``finite`` flag waits for it, so the flags are read only where the host
  needs the state anyway (the on-host actions: logging, evaluation, checkpoints): between those
  the host prepares and enqueues the next steps while the device works. A non-finite step is
  still reported, by number and terms, before anything computed after it is logged, evaluated or
  saved.

  A run trained alone is its own ``runs`` for ``train`` (``loops``, ``dispatch``, ``commit``);
  the runs of a program's seeds have one loop each, with ``slot`` their seed's view of the
  stacked state (``SeedRuns``) and ``name`` the prefix of their messages.
  """

  def __init__(
    self,
    experiment,
    state,
    workdir,
    record,
    writer,
    progress,
    latest,
    best,
    start,
    programs: Programs,
    *,
    slot=None,
    name: str = "",
  ):
    config = experiment.config
    self._slot = slot or _Held(state)
    self.experiment, self.workdir, self.record, self.name = experiment, workdir, record, name
    self.writer, self.progress, self.latest, self.best = writer, progress, latest, best
    self.metrics, self.pending, self.stopping, self._saved = None, [], False, None
    self.programs = programs
    self.val_x = scoring.eval_subset(experiment.dataset.valid, config.eval_num_examples)
    self.eval_root = jax.random.key(config.seed + 1)  # independent of the training keys
    tracking_root = jax.random.fold_in(self.eval_root, 2**31 - 2)
    self.tracker = sampler_monitor.LogZTracker(
      experiment, tracking_root, start, state, tracking=programs.log_z_tracking
    )
    self.train_log_z = sampler_monitor.TrainLogZ(
      experiment, jax.random.fold_in(self.eval_root, 2**31 - 3)
    )
    self.train_seconds = record["train_seconds"]
    self._logged_seconds, self._logged_step = self.train_seconds, start
    # XLA's CPU collectives between host devices can deadlock when several steps are enqueued (a
    # rendezvous timeout that aborts the process: seen with 2 forced host devices on 2 cores,
    # benchmarks/multi_device.py); there the runner waits for every step.
    self.sync_each_step = jax.devices()[0].platform == "cpu" and jax.device_count() > 1
    self.guard = guards.DivergenceGuard(config, latest.latest_step, sharding.to_host)
    logs, evals = (config.log_every,), (config.eval_every,)
    self._evaluation = periodic.PeriodicAction("evaluate", evals, self.evaluate)
    self.actions = [
      periodic.PeriodicAction("progress bar", (1,), progress.update, on_host=False),
      # Due only at its own steps (not at the end, where an evaluation re-anchors log Z instead),
      # so that a dispatch without a refresh never reads the state.
      periodic.PeriodicAction(
        "refresh log Z",
        (config.log_z_refresh_every if programs.log_z_tracking else 0,),
        self.refresh_log_z,
        on_host=False,
        at_end=False,
      ),
      periodic.PeriodicAction("write log Z refreshes", logs + evals, self.write_refreshes),
      periodic.PeriodicAction("log", logs, self.log),
      self._evaluation,
      periodic.PeriodicAction("images", evals, self.write_images),
      periodic.PeriodicAction("checkpoint", (config.checkpoint_every, *evals), self.checkpoint),
    ]

  @property
  def state(self) -> TrainState:
    return self._slot.get()

  @state.setter
  def state(self, state: TrainState) -> None:
    self._slot.set(state)

  @property
  def loops(self) -> tuple[TrainLoop]:
    return (self,)

  def dispatch(self, first: int, count: int) -> None:
    """Steps ``first .. first + count - 1`` of this run alone; ``metrics`` are theirs."""
    config = self.experiment.config
    num_examples = self.experiment.dataset.train.shape[0]
    indices = batching.slab_indices(config.seed, first, count, config.batch_size, num_examples)
    programs = self.programs
    self.state, self.metrics = programs.train_steps(
      self.state, programs.train_x, programs.put_indices(indices)
    )

  def commit(self) -> None:
    """Nothing to do: the state is held as is."""

  def checkpoint_paths(self, step: int) -> str:
    return str(self.latest.step_path(step))

  def check_pending(self) -> None:
    """``guards.check_pending`` of the dispatches since the last check (their errors name the run
    by ``name``)."""
    try:
      guards.check_pending(self.pending, self.guard)
    except (guards.NonFiniteLossError, guards.DivergenceError) as err:
      if not self.name:
        raise
      raise type(err)(f"{self.name}{err}") from err
    self.pending = []

  def _last(self, step: int) -> bool:
    return step == self.experiment.config.num_steps

  def refresh_log_z(self, step: int) -> None:
    """The tracker's refresh of the sampler's log Z where due (not at evaluations, which re-anchor
    it themselves)."""
    evaluating = self._evaluation.due(step, self._last(step))
    self.state = self.tracker.refresh(step, self.state, evaluating)

  def write_refreshes(self, step: int) -> None:
    self.tracker.write(self.writer)

  def log(self, step: int) -> None:
    """The step's metrics row; with ``train_ais_num_chains`` its log Z from a fresh AIS."""
    row = metrics_row(self.metrics, -1)  # the dispatch's last step, the one logged
    if self.train_log_z.enabled:  # its AIS is part of training's cost: counted in train_seconds
      t0 = time.perf_counter()
      self.state, row = self.train_log_z.anchor(step, self.state, row)
      self.tracker.reseed(step, self.state)
      row["sampler/log_z_ais_seconds"] = time.perf_counter() - t0
      self.train_seconds += row["sampler/log_z_ais_seconds"]
    seconds = max(self.train_seconds - self._logged_seconds, 1e-9)
    row["steps_per_second"] = (step - self._logged_step) / seconds
    self._logged_seconds, self._logged_step = self.train_seconds, step
    self.writer.write(step, row)
    self.progress.update(step, f"loss {row['loss']:.2f}", log_line=True)

  def evaluate(self, step: int) -> None:
    """Validation (``evaluate``): its rows, the guard's check, the best checkpoint."""
    t0 = time.perf_counter()
    key = jax.random.fold_in(self.eval_root, step)
    self.state, sampler_row, val = evaluate(
      self.experiment, self.programs.val_eval, self.state, self.val_x, key, self.progress
    )
    if sampler_row:
      self.writer.write(step, sampler_row)
    self.guard.check_evaluation(step, {k: val[k] for k in ("val/nll", "val/neg_elbo", "val/log_z")})
    record = self.record
    if val["val/nll"] < record["best_val_nll"]:
      record.update(best_val_nll=val["val/nll"], best_step=step)
      self.best.save(step, {"params": self.state.params, "batch_stats": self.state.batch_stats})
    val.update({"val/best_nll": record["best_val_nll"], "eval_seconds": time.perf_counter() - t0})
    self.writer.write(step, val)
    self.progress.message(
      f"{self.name}step {step}: val NLL {val['val/nll']:.3f} (best {record['best_val_nll']:.3f}"
      f" at step {record['best_step']}), log Z {val['val/log_z']:.2f}"
      f" ± {val['val/log_z_stderr']:.2f}"
    )

  def write_images(self, step: int) -> None:
    key = jax.random.fold_in(jax.random.fold_in(self.eval_root, step), 2)
    images.write_images(
      self.experiment,
      self.programs.image_fn,
      self.state,
      key,
      self.workdir / IMAGES_DIR,
      step,
      self.writer,
    )

  def checkpoint(self, step: int) -> None:
    """Saves ``(state, record)`` (once per step). While gradients run large (``guard.clean`` is
    False) checkpoints wait, except at the end or when stopping: a checkpoint is a state the
    guard has passed, and a run resumed from one starts the guard's count afresh."""
    if self._saved == step or not (self.stopping or self.guard.clean or self._last(step)):
      return
    rec = checkpointing.make_record(
      self.experiment.mesh,
      best_val_nll=self.record["best_val_nll"],
      best_step=self.record["best_step"],
      train_seconds=self.train_seconds,
    )
    self.latest.save(step, (self.state, rec))
    self._saved = step
    self.tracker.reseed(step, self.state)

  def finish(self, wall_start: float) -> dict:
    """The final test (``final_evaluation``) of the trained run: written to ``results.json``
    and, as its last row, to ``metrics.jsonl``; returns the results. ``wall_start``: when this
    session of the run started (``time.time()``)."""
    config, workdir, progress = self.experiment.config, self.workdir, self.progress
    results = final_evaluation(
      self.experiment,
      self.programs.test_eval,
      self.state,
      self.record,
      workdir,
      self.eval_root,
      progress,
    )
    results.update(
      train_seconds=self.train_seconds,
      wall_seconds_this_session=time.time() - wall_start,
      sampler_diagnostic=sampler_monitor.sampler_diagnostic_history(workdir),
    )
    if jax.process_index() == 0:
      tmp = workdir / "results.json.tmp"
      tmp.write_text(json.dumps(metrics_lib.to_python(results), indent=1, sort_keys=True))
      os.replace(tmp, workdir / "results.json")
      self.writer.write(
        config.num_steps,
        {"test/nll": results["test_nll"], "test/neg_elbo": results["test_neg_elbo"]},
      )
    self.writer.close()
    progress.message(
      f"{self.name}test NLL {results['test_nll']:.3f} nats ({config.eval_iw_samples} importance "
      f"samples, best validation step {results['best_step']}); results in "
      f"{workdir / 'results.json'}"
    )
    return results


def evaluate(
  experiment: Experiment,
  eval_fn,
  state: TrainState,
  x: np.ndarray,
  key,
  progress: metrics_lib.Progress | None = None,
) -> tuple[TrainState, dict[str, float], dict[str, float]]:
  """One validation: AIS log Z of the prior, the NLL and −ELBO of ``x`` [n, 784] with ``eval_fn``
  (``scoring.make_eval_fn``) and, for a prior with a sampler, its diagnostic and the re-anchoring
  of its log Z (``experiments.sampler_monitor``). ``progress`` reports the log Z's time and the examples
  scored (``Progress.timed``, ``Progress.phase``).

  Returns:
    (state with the sampler's log Z re-anchored, ``val/sampler_*`` metrics (empty without a
    sampler), ``val/nll``, ``val/neg_elbo``, ``val/log_z`` and ``val/log_z_stderr``).
  """
  progress = progress or metrics_lib.Progress(0, 0, enabled=False)
  log_z, log_z_err = log_partition(
    experiment, state.params["prior"], jax.random.fold_in(key, 0), progress, "validation"
  )
  sampler_metrics = {}
  if experiment.sampler is not None:
    diagnostic = sampler_monitor.sampler_diagnostic(
      experiment, state.sampler_state, jax.random.fold_in(key, 3)
    )
    state, drift = sampler_monitor.anchor_log_z(
      state,
      diagnostic,
      jax.random.fold_in(key, 4),
      lambda prior, key: scoring.eval_log_partition(experiment, prior, key),
    )
    sampler_metrics = {"val/sampler_log_z_drift": drift, **diagnostic}
  scored = progress.phase("validation", len(x))
  val = scoring.evaluate_split(
    experiment, eval_fn, state, x, log_z, jax.random.fold_in(key, 1), progress=scored
  )
  return (
    state,
    sampler_metrics,
    {
      "val/nll": val["nll"],
      "val/neg_elbo": val["neg_elbo"],
      "val/log_z": log_z,
      "val/log_z_stderr": log_z_err,
    },
  )


def log_partition(experiment: Experiment, prior, key, progress, phase: str) -> tuple[float, float]:
  """``scoring.eval_log_partition``, reported by ``progress`` as part of ``phase``: AIS counts its
  temperatures, an exact log Z is timed."""
  config = experiment.config
  if not prior.needs_sampler:
    with progress.timed(f"{phase}: log Z (exact)"):
      return scoring.eval_log_partition(experiment, prior, key)
  tick = progress.phase(
    f"{phase}: log Z (AIS, {config.ais_num_chains} chains)",
    config.ais_num_temperatures - 1,
    unit="temperature",
  )
  return scoring.eval_log_partition(experiment, prior, key, progress=tick)


def final_evaluation(
  experiment: Experiment,
  test_eval,
  state: TrainState,
  record: dict,
  workdir: pathlib.Path,
  eval_root,
  progress: metrics_lib.Progress | None = None,
) -> dict:
  """Test NLL with ``eval_iw_samples`` importance samples (``test_eval``, from
  ``scoring.make_eval_fn``) at the best-validation checkpoint; ``progress`` reports it."""
  config = experiment.config
  best = checkpointing.Checkpointer(workdir / "checkpoints_best", 1)
  best_step, restored = best.restore_newest(
    {"params": state.params, "batch_stats": state.batch_stats}
  )
  state = state._replace(**restored)
  best.close()
  key = jax.random.fold_in(eval_root, 2**31 - 1)
  progress = progress or metrics_lib.Progress(0, 0, enabled=False)
  log_z, log_z_err = log_partition(
    experiment, state.params["prior"], jax.random.fold_in(key, 0), progress, "test"
  )
  test_x = scoring.eval_subset(experiment.dataset.test, config.eval_num_examples)
  scored = progress.phase(f"test ({config.eval_iw_samples} importance samples)", len(test_x))
  test = scoring.evaluate_split(
    experiment, test_eval, state, test_x, log_z, jax.random.fold_in(key, 1), progress=scored
  )
  results = {
    "test_nll": test["nll"],
    "test_nll_stderr": test["nll_stderr"],
    "test_neg_elbo": test["neg_elbo"],
    "test_log_z": log_z,
    "test_log_z_stderr": log_z_err,
    "val_nll": record["best_val_nll"],
    "best_step": best_step,
    "num_test_examples": int(test_x.shape[0]),
    "num_devices": jax.device_count(),
    **data_lib.provenance(experiment.dataset),
    "config": config.to_dict(),
  }
  if config.dataset == "omniglot" and not experiment.dataset.source.endswith("chardata.mat"):
    results["note"] = (
      "OMNIGLOT rebuilt from the original images (not chardata.mat): likelihoods "
      "are not directly comparable to published OMNIGLOT numbers"
    )
  return results
