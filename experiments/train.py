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

import json
import os
import pathlib
import time

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
  with workdir_lock.WorkdirLock(workdir):
    return _train_and_evaluate(config, pathlib.Path(workdir))


def _train_and_evaluate(config, workdir: pathlib.Path) -> dict:
  wall_start = time.time()
  experiment, state = experiment_lib.build(config)
  config = experiment.config
  primary = jax.process_index() == 0
  checkpointing.check_resumable(workdir, config, RESUMABLE_DIFFERENCES)
  if primary:
    workdir_lock.check_free_space(workdir, state, config.max_checkpoints)  # before any write
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(
      json.dumps(metrics_lib.to_python(config.to_dict()), indent=1, sort_keys=True)
    )
  latest = checkpointing.Checkpointer(workdir / "checkpoints", config.max_checkpoints)
  best = checkpointing.Checkpointer(workdir / "checkpoints_best", 1)
  start, state, record = checkpointing.resume(latest, best, state, experiment.mesh)
  writer = metrics_lib.MetricsWriter(workdir, enabled=primary)
  writer.truncate_after(start)
  progress = metrics_lib.Progress(config.num_steps, start, enabled=primary)
  if start:
    progress.message(f"resuming {workdir} from step {start}")
  progress.message(
    f"{config.method} ({config.prior} prior, {config.sampler}) on {config.dataset}, "
    f"struct {config.struct}, beta {config.beta}, k {config.k}, {config.num_steps} steps, "
    f"{jax.device_count()} device(s)"
  )

  results_path = workdir / "results.json"
  if start == config.num_steps and results_path.exists():
    latest.close()
    best.close()
    results = json.loads(results_path.read_text())
    writer.close()
    progress.message(f"{workdir} holds a finished run: test NLL {results['test_nll']:.3f} nats")
    return results
  loop = TrainLoop(experiment, state, workdir, record, writer, progress, latest, best, start)
  try:
    train(loop, start)
  except BaseException:
    writer.close()
    raise
  finally:
    latest.close()
    best.close()

  test_eval = loop.val_eval  # the same program when the sizes agree: compiled once
  if config.eval_iw_samples != config.val_iw_samples:
    test_eval = scoring.make_eval_fn(experiment, config.eval_iw_samples)
  results = final_evaluation(
    experiment, test_eval, loop.state, record, workdir, loop.eval_root, progress
  )
  results.update(
    train_seconds=loop.train_seconds,
    wall_seconds_this_session=time.time() - wall_start,
    sampler_diagnostic=sampler_monitor.sampler_diagnostic_history(workdir),
  )
  if primary:
    tmp = workdir / "results.json.tmp"
    tmp.write_text(json.dumps(metrics_lib.to_python(results), indent=1, sort_keys=True))
    os.replace(tmp, results_path)
    writer.write(
      config.num_steps, {"test/nll": results["test_nll"], "test/neg_elbo": results["test_neg_elbo"]}
    )
  writer.close()
  progress.message(
    f"test NLL {results['test_nll']:.3f} nats ({config.eval_iw_samples} importance samples, "
    f"best validation step {results['best_step']}); results in {workdir / 'results.json'}"
  )
  return results


def train(loop: TrainLoop, start: int) -> None:
  """Training steps ``start`` .. ``num_steps - 1``, in dispatches of ``steps_per_dispatch`` fused
  steps (``periodic.dispatches``), each followed by the periodic actions due (``loop.actions``, in
  order): first those that only enqueue device work, then, once the steps in flight are done and
  checked (``guards.check_pending``), those that need the state on the host.

  Raises:
    guards.NonFiniteLossError, guards.DivergenceError: a step went wrong (see the guards).
    preemption.Preempted: a signal asked the run to stop; it stopped after checkpointing.
  """
  config = loop.experiment.config
  num_examples = loop.experiment.dataset.train.shape[0]
  for first, count in periodic.dispatches(start, config.num_steps, config.steps_per_dispatch):
    t0 = time.perf_counter()
    indices = batching.slab_indices(config.seed, first, count, config.batch_size, num_examples)
    loop.state, loop.metrics = loop.train_steps(loop.state, loop.train_x, loop.put_indices(indices))
    done = first + count
    for step in range(first + 1, done + 1):
      preemption.debug_signal(step, config.debug_signal_step)
    loop.pending.append((done, loop.metrics))
    due = periodic.due(loop.actions, done, done == config.num_steps)
    for action in due:
      if not action.on_host:
        action.run(done)
    on_host = loop.sync_each_step or any(action.on_host for action in due)
    # A signal (SIGTERM / SIGINT) stops the run after this dispatch, with a checkpoint of it.
    loop.stopping = preemption.stop_requested(at_sync=on_host)
    if on_host or loop.stopping:
      guards.check_pending(loop.pending, loop.guard)  # waits for the steps: their time is counted
      loop.pending = []
    loop.train_seconds += time.perf_counter() - t0
    for action in due:
      if action.on_host:
        action.run(done)
    if loop.stopping:
      loop.checkpoint(done)  # unless the action did
      raise preemption.Preempted(done, str(loop.latest.step_path(done)))
  if preemption.stop_requested():  # a signal during the last dispatch: stop before the final test
    raise preemption.Preempted(config.num_steps, str(loop.latest.step_path(config.num_steps)))


class TrainLoop:
  """The training loop's state between steps and its periodic actions (:attr:`actions`).

  Dispatches since the last host sync wait in ``pending`` as (steps done, stacked metrics on
  device). Reading a step's ``finite`` flag waits for it, so the flags are read only where the host
  needs the state anyway (the on-host actions: logging, evaluation, checkpoints): between those
  the host prepares and enqueues the next steps while the device works. A non-finite step is
  still reported, by number and terms, before anything computed after it is logged, evaluated or
  saved.
  """

  def __init__(self, experiment, state, workdir, record, writer, progress, latest, best, start):
    config = experiment.config
    self.experiment, self.state, self.workdir, self.record = experiment, state, workdir, record
    self.writer, self.progress, self.latest, self.best = writer, progress, latest, best
    self.metrics, self.pending, self.stopping, self._saved = None, [], False, None
    self.train_steps = train_step_lib.make_fused_steps(experiment)
    self.train_x = train_step_lib.prepare_train_x(experiment)
    slab_sharding = train_step_lib.slab_sharded(experiment.mesh)
    self.put_indices = lambda idx: sharding.put_global(idx.astype(np.int32), slab_sharding)
    self.val_eval = scoring.make_eval_fn(experiment, config.val_iw_samples)
    self.val_x = scoring.eval_subset(experiment.dataset.valid, config.eval_num_examples)
    self.image_fn = images.make_image_fn(experiment)
    self.eval_root = jax.random.key(config.seed + 1)  # independent of the training keys
    tracking_root = jax.random.fold_in(self.eval_root, 2**31 - 2)
    self.tracker = sampler_monitor.LogZTracker(experiment, tracking_root, start, state)
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
      periodic.PeriodicAction("refresh log Z", (1,), self.refresh_log_z, on_host=False),
      periodic.PeriodicAction("write log Z refreshes", logs + evals, self.write_refreshes),
      periodic.PeriodicAction("log", logs, self.log),
      self._evaluation,
      periodic.PeriodicAction("images", evals, self.write_images),
      periodic.PeriodicAction("checkpoint", (config.checkpoint_every, *evals), self.checkpoint),
    ]

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
      self.experiment, self.val_eval, self.state, self.val_x, key, self.progress
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
      f"step {step}: val NLL {val['val/nll']:.3f} (best {record['best_val_nll']:.3f}"
      f" at step {record['best_step']}), log Z {val['val/log_z']:.2f}"
      f" ± {val['val/log_z_stderr']:.2f}"
    )

  def write_images(self, step: int) -> None:
    key = jax.random.fold_in(jax.random.fold_in(self.eval_root, step), 2)
    images.write_images(
      self.experiment,
      self.image_fn,
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
