"""The training loop and its evaluations (math.md §6): ``train(runs, start)``, a run's
``TrainLoop`` with its periodic actions, the ``Programs`` its runs share, and the final evaluation.

The loop dispatches ``steps_per_dispatch`` (S) fused steps at a time
(``train_step.make_fused_steps``: one launch, no host work between them); after each dispatch it
runs the periodic actions due (``experiments.periodic``: refresh the sampler's log Z, log,
evaluate, write images, checkpoint), a list rather than flags in the loop's body. Their periods are
multiples of S (``config_lib`` refuses others), so a run with S > 1 logs, evaluates and saves at
the same steps as with S = 1, and is the same run. ``experiments.train`` drives it for one run,
``experiments.seeds`` for the runs of several seeds in one program.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from dvae_jax import data as data_lib
from dvae_jax.data import batching
from experiments import (
  checkpointing,
  guards,
  images,
  periodic,
  preemption,
  sampler_monitor,
  scoring,
  sharding,
)
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


def write_config(workdir: pathlib.Path, config) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(
    json.dumps(metrics_lib.to_python(config.to_dict()), indent=1, sort_keys=True)
  )


def checkpointers(workdir: pathlib.Path, config) -> tuple:
  """(latest, best) checkpointers of a run's folder."""
  latest = checkpointing.Checkpointer(workdir / "checkpoints", config.max_checkpoints)
  return latest, checkpointing.Checkpointer(workdir / "checkpoints_best", 1)


def finished_results(workdir: pathlib.Path, start: int, config) -> dict | None:
  """The results of a finished run in ``workdir`` (None if it has not finished)."""
  path = workdir / "results.json"
  if start == config.num_steps and path.exists():
    return json.loads(path.read_text())
  return None


def describe(config) -> str:
  return (
    f"{config.method} ({config.prior} prior, {config.sampler}) on {config.dataset}, "
    f"struct {config.struct}, beta {config.beta}, k {config.k}, {config.num_steps} steps, "
    f"{jax.device_count()} device(s)"
  )


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
  of its log Z (``experiments.sampler_monitor``). ``progress`` reports the log Z's time and the
  examples scored (``Progress.timed``, ``Progress.phase``).

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
