"""Training and evaluation loop: ``train_and_evaluate(config, workdir)`` (MATH.md §6).

The training state is one pytree (:class:`TrainState`) and the train step a pure jitted function of
(state, batch) that donates the state. The randomness of step ``t`` comes from ``fold_in(key, t)``
and the data of step ``t`` from ``(seed, t)`` alone, so a run restored from its checkpoint at step
``t`` continues exactly as if it had never stopped. The batch is split over all devices
(``experiments.sharding``); one PRNG key drives the whole global batch, so the result does not
depend on the number of devices.

Outputs in ``workdir``: ``metrics.jsonl`` (one JSON row per logged step / evaluation),
``tensorboard/`` (event files), ``checkpoints/`` (latest) and ``checkpoints_best/`` (best
validation NLL), ``samples_STEP.png`` / ``reconstructions_STEP.png``, ``config.json`` and, at the
end, ``results.json``.

This module is the hub; its helpers live beside it: ``scoring`` (NLL of examples, evaluation
AIS), ``sampler_monitor`` (sampler diagnostic, log Z re-anchoring and tracker), ``images``,
``checkpointing`` (checkpoints, the run's record, resume), ``guards`` (NaN and divergence guards),
``preemption``, ``workdir_lock`` and ``sharding``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from ml_collections import config_dict

from dvae_jax import data as data_lib
from dvae_jax import models, objectives, optim, priors
from dvae_jax import samplers as samplers_lib
from dvae_jax.graphs import topologies
from experiments import (
  checkpointing,
  config_lib,
  guards,
  images,
  preemption,
  sampler_monitor,
  scoring,
  sharding,
  workdir_lock,
)
from experiments import metrics as metrics_lib

# Piecewise-constant learning rate of MATH.md §6 as multiples of the base rate 3e-3:
# [0, 2%) 3e-4, [2%, 60%) 3e-3, [60%, 75%) 1e-3, [75%, 95%) 3e-4, [95%, 100%] 9.1e-5.
LR_BOUNDARIES = (0.02, 0.60, 0.75, 0.95)
LR_MULTIPLIERS = (0.1, 1.0, 1.0 / 3.0, 0.1, 9.1e-5 / 3e-3)

# Keys whose change does not alter the trajectory of a run; any other difference between a workdir's
# config and the requested one refuses to resume.
RESUMABLE_DIFFERENCES = (
  "data_dir",
  "guard_max_nats",
  "guard_max_log_z",
  "guard_max_grad_norm",
  "guard_grad_norm_steps",
  "debug_signal_step",
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


NonFiniteLossError = guards.NonFiniteLossError  # a train step produced a NaN or inf


WorkdirConfigError = checkpointing.WorkdirConfigError  # the workdir holds another run's config


class TrainState(NamedTuple):
  """Everything a run needs to continue, as one pytree.

  Attributes:
    step: [] int32, the number of steps done.
    params: ``{'model': nnx.State of the nnx.Param leaves, 'prior': RBM | FactorialBernoulli}``.
    batch_stats: nnx.State of the BatchNorm running statistics (and fixed data statistics).
    opt_state: optax Adam state.
    sampler_state: the prior sampler's persistent state (``()`` for the factorial prior).
    key: the run's training key; step ``t`` uses ``fold_in(key, t)``.
  """

  step: jax.Array
  params: dict
  batch_stats: Any
  opt_state: Any
  sampler_state: Any
  key: jax.Array


def learning_rate_schedule(base: float, num_steps: int) -> optax.Schedule:
  """The piecewise-constant schedule of MATH.md §6, scaled by ``base`` (3e-3 in the paper).

  Constant pieces joined at the boundaries, not ``optax.piecewise_constant_schedule``: its product
  of scale factors puts the last piece one float32 ulp off (9.100001e-5), enough to change a run.
  """
  boundaries = [int(round(f * num_steps)) for f in LR_BOUNDARIES]
  values = base * np.array(LR_MULTIPLIERS, np.float32)
  return optax.join_schedules([optax.constant_schedule(v) for v in values], boundaries)


def kl_warmup(step: jax.Array, num_steps: int, fraction: float) -> jax.Array:
  """κ = min(t / (fraction · num_steps), 1) (MATH.md §6); 1 when ``fraction`` is 0."""
  if fraction <= 0:
    return jnp.ones((), jnp.float32)
  return jnp.minimum(step.astype(jnp.float32) / (fraction * num_steps), 1.0)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The static parts of a run: data, model structure, method, sampler, optimiser, mesh."""

  config: config_dict.FrozenConfigDict
  dataset: data_lib.Dataset
  graphdef: Any
  eval_graphdef: Any
  method: Any
  sampler: Any
  optimizer: optax.GradientTransformation
  learning_rate: optax.Schedule  # the optimiser's, logged as `lr`
  mesh: jax.sharding.Mesh
  state_sharding: Any  # a TrainState of NamedShardings, see `state_shardings`


def _dimod_prior_sampler(config, prior, mesh):
  """``samplers.external`` drawing through the dimod sampler named by ``config.dimod_sampler``
  (checked now, with its keyword arguments: a ConfigError names the problem)."""
  from experiments import prior_sampling  # imports restore, which imports this module

  if mesh.size != 1:
    raise config_lib.ConfigError(
      f"sampler='dimod' draws the whole population on the host and runs on one device; this mesh "
      f"has {mesh.size} (set CUDA_VISIBLE_DEVICES or JAX_PLATFORMS to use one)"
    )
  try:
    draw = prior_sampling.make_dimod_draw(
      config.dimod_sampler, config.dimod_kwargs, config.num_prior_samples, prior
    )
  except ValueError as err:  # restore.UsageError from the shared dimod helpers
    raise config_lib.ConfigError(f"sampler='dimod': {err}") from err
  return samplers_lib.external.prior_sampler(config.num_prior_samples, draw)


def build(config, *, mesh=None) -> tuple[Experiment, TrainState]:
  """Loads the data and builds the model, the optimiser and the initial (replicated) state."""
  config = config_lib.resolve_config(config)
  mesh = mesh or sharding.make_mesh()
  sharding.check_divisible("batch_size", config.batch_size, mesh)
  sharding.check_divisible("eval_batch_size", config.eval_batch_size, mesh)
  dataset = data_lib.load_dataset(config.dataset, config.data_dir or None)
  method = objectives.get_method(config.method, config.beta, relaxed_sampler=config.relaxed_sampler)
  spec = models.get_struct(config.struct)
  root = jax.random.key(config.seed)
  init_key, train_key, sampler_key = jax.random.split(root, 3)
  model = models.DVAENet(
    spec,
    dataset.train_mean,
    gaussian_integral=_needs_gaussian_integral(method),
    rngs=nnx.Rngs(init_key),
  )
  model.train()
  graphdef, params_model, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  model.eval()
  eval_graphdef, _, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
  prior = init_prior(config, spec)
  params = {"model": params_model, "prior": prior}
  learning_rate = learning_rate_schedule(config.learning_rate, config.num_steps)
  optimizer = optim.adam(
    learning_rate,
    eps=config.adam_eps,
    eps_mode=config.adam_eps_mode,
  )
  if prior.needs_sampler:
    if config.sampler == "dimod":
      sampler = _dimod_prior_sampler(config, prior, mesh)
    else:
      sampler = samplers_lib.make_prior_sampler(
        config.sampler, config.num_prior_samples, config.num_sweeps
      )
    sampler_state = jax.jit(sampler.init)(sampler_key, prior)
  else:
    sampler, sampler_state = None, ()
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=optimizer.init(params),
    sampler_state=sampler_state,
    key=train_key,
  )
  state_sharding = state_shardings(state, mesh)
  state = sharding.place(state, state_sharding)
  experiment = Experiment(
    config,
    dataset,
    graphdef,
    eval_graphdef,
    method,
    sampler,
    optimizer,
    learning_rate,
    mesh,
    state_sharding,
  )
  return experiment, state


def init_prior(config, spec: models.StructSpec) -> priors.Prior:
  """The all-zero prior of the config: an RBM, the factorial baseline, or a Boltzmann machine on a
  quantum-annealer graph whose node k is latent unit k (``graphs.topologies.latent_graph``)."""
  if config.prior in topologies.TOPOLOGIES:
    graph = topologies.latent_graph(config.prior, spec.num_latent, config.topology)
    return priors.graph.init_machine(graph)
  return priors.init_prior(config.prior, spec)


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
  """Where each leaf of the train state lives: a TrainState of NamedShardings.

  The prior sampler's chains z [S, n] are split over the devices along S, so
  that each device runs S / num_devices of them (their updates are independent; PA's reweighting
  and resampling, over the whole population, become collectives). Everything else is replicated.
  When S does not divide evenly the chains are replicated too, with a warning: correct, but every
  device then samples the whole population.
  """
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), state)
  chains = state.sampler_state
  if not chains:
    return shardings  # a prior without a sampler has no sampler state, ()
  num_chains, num_devices = chains.z.shape[0], mesh.devices.size
  if num_chains % num_devices:
    logging.warning(
      "num_prior_samples=%d is not divisible by the %d devices: every device samples all chains",
      num_chains,
      num_devices,
    )
    return shardings
  split = sharding.batch_sharded(mesh)
  return shardings._replace(sampler_state=shardings.sampler_state._replace(z=split))


def _needs_gaussian_integral(method: objectives.Method) -> bool:
  return method.family == objectives.FAMILY_DVAE_SHARP_GI


def weight_decay_penalty(coefficient: float, params: dict) -> jax.Array:
  """``coefficient`` · ½‖w‖² on dense kernels, BN scales and the RBM couplings (MATH.md §2, §6)."""
  return objectives.weight_decay(params["model"], params["prior"], coefficient=coefficient)


def make_train_step(experiment: Experiment) -> Callable[[TrainState, jax.Array], tuple]:
  """The jitted step ``(state, x [batch, 784]) -> (state, metrics)``; ``state`` is donated."""
  config = experiment.config
  graphdef, method, sampler = experiment.graphdef, experiment.method, experiment.sampler
  dynamic = experiment.dataset.dynamic_binarization

  def step_fn(state: TrainState, x: jax.Array):
    key = jax.random.fold_in(state.key, state.step)
    sampler_key, loss_key, data_key = jax.random.split(key, 3)
    if dynamic:
      x = data_lib.binarize(data_key, x)
    if config.debug_nan_step > 0:  # test hook: poison the data of the step that ends at it
      x = jnp.where(state.step + 1 == config.debug_nan_step, jnp.nan, x)
    kappa = kl_warmup(state.step, config.num_steps, config.kl_warmup_fraction)
    prior = state.params["prior"]
    if sampler is not None:
      sampler_state, info = sampler.step(sampler_key, state.sampler_state, prior)
      z = prior.rao_blackwellize(sampler_state.z, config.rao_blackwell)
      prior_samples = (z, sampler_state.log_z)
    else:
      sampler_state, info, prior_samples = (), {}, None

    def loss_fn(params):
      model = nnx.merge(graphdef, params["model"], state.batch_stats, copy=True)
      loss, terms = objectives.loss_fn(
        loss_key, model, params["prior"], prior_samples, x, method, config.k, kappa
      )
      penalty = weight_decay_penalty(config.weight_decay, params)
      return loss + penalty, (loss, terms, penalty, nnx.state(model, nnx.BatchStat))

    grads, (loss, terms, penalty, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = experiment.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    metrics = {
      "loss": loss,
      **{f"terms/{k}": v for k, v in terms.items()},
      "weight_decay": penalty,
      "grad_norm": grad_norm,
      "lr": experiment.learning_rate(state.step),
      "kappa": kappa,
      **{f"sampler/{k}": jnp.mean(v) for k, v in _info_dict(info).items()},
    }
    metrics["finite"] = jnp.all(
      jnp.array([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)])
    )
    metrics["guard"] = guards.step_flags(metrics, config)  # the divergence guard's flag bits
    new_state = TrainState(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      sampler_state=sampler_state,
      key=state.key,
    )
    return new_state, metrics

  return jax.jit(
    step_fn,
    donate_argnums=(0,),
    in_shardings=(experiment.state_sharding, sharding.batch_sharded(experiment.mesh)),
    out_shardings=(experiment.state_sharding, sharding.replicated(experiment.mesh)),
  )


def _info_dict(info) -> dict:
  """The numeric fields of a sampler's info (a NamedTuple such as ``PersistentInfo``), as float."""
  items = info._asdict().items() if hasattr(info, "_asdict") else dict(info).items()
  return {
    k: jnp.asarray(v, jnp.float32)
    for k, v in items
    if isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jnp.number)
  }


def evaluate(
  experiment: Experiment, eval_fn, state: TrainState, x: np.ndarray, key
) -> tuple[TrainState, dict[str, float], dict[str, float]]:
  """One validation: AIS log Z of the prior, the NLL and −ELBO of ``x`` [n, 784] with ``eval_fn``
  (``scoring.make_eval_fn``) and, with an RBM sampler, its diagnostic and the re-anchoring of its
  log Z (``experiments.sampler_monitor``).

  Returns:
    (state with the sampler's log Z re-anchored, ``val/sampler_*`` metrics (empty without a
    sampler), ``val/nll``, ``val/neg_elbo``, ``val/log_z`` and ``val/log_z_stderr``).
  """
  log_z, log_z_err = scoring.eval_log_partition(
    experiment, state.params["prior"], jax.random.fold_in(key, 0)
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
  val = scoring.evaluate_split(experiment, eval_fn, state, x, log_z, jax.random.fold_in(key, 1))
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


# ----------------------------------------------------------------------------------------------
# The loop.


def metrics_row(metrics: dict) -> dict[str, float]:
  """A train step's metrics as host floats, without the guards' per-step flags."""
  return {k: sharding.to_host(v).item() for k, v in metrics.items() if k not in guards.FLAG_KEYS}


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict:
  """Trains (or resumes) a run in ``workdir`` and returns the results written to ``results.json``.

  Holds the workdir's lock throughout (``experiments.workdir_lock``: one run per workdir).

  Args:
    config: a config of ``experiments/configs`` (keys left at None are resolved, see
      ``experiments.config_lib.resolve_config``).
    workdir: output folder; an existing run there is resumed from its newest checkpoint that
      restores (``Checkpointer.restore_newest``).

  Raises:
    NonFiniteLossError: a step produced NaN/inf (the last good checkpoint is kept).
    guards.DivergenceError: the run left the healthy range (the last good checkpoint is kept).
    preemption.Preempted: a signal stopped the run after checkpointing (see experiments.preemption).
    workdir_lock.WorkdirBusyError, workdir_lock.WorkdirError: the workdir is in use by another run,
      cannot be written or is too full (found before training).
    checkpointing.CheckpointRestoreError: checkpoints exist but none restores.
    checkpointing.CheckpointWriteError: a checkpoint could not be written (earlier ones are kept).
    ValueError: invalid config, or a workdir holding a run with another config.
  """
  with workdir_lock.WorkdirLock(workdir):
    return _train_and_evaluate(config, pathlib.Path(workdir))


def _train_and_evaluate(config, workdir: pathlib.Path) -> dict:
  wall_start = time.time()
  experiment, state = build(config)
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
  train_step = make_train_step(experiment)
  eval_fns = {config.val_iw_samples: scoring.make_eval_fn(experiment, config.val_iw_samples)}
  val_eval = eval_fns[config.val_iw_samples]
  image_fn = images.make_image_fn(experiment)
  eval_root = jax.random.key(config.seed + 1)  # independent of the training keys
  tracking_root = jax.random.fold_in(eval_root, 2**31 - 2)
  log_z_tracker = sampler_monitor.LogZTracker(experiment, tracking_root, start, state)
  train_log_z = sampler_monitor.TrainLogZ(experiment, jax.random.fold_in(eval_root, 2**31 - 3))
  val_x = scoring.eval_subset(experiment.dataset.valid, config.eval_num_examples)
  batch_sharding = sharding.batch_sharded(experiment.mesh)
  train_seconds = record["train_seconds"]
  logged_seconds, logged_step = train_seconds, start

  # Steps since the last host sync, as (step, metrics on device). Reading a step's `finite` flag
  # waits for it, so the flags are read only where the host needs the state anyway (logging,
  # evaluation, checkpoints): between those the host prepares and enqueues the next steps while the
  # device works. A non-finite step is still reported, by number and terms, before anything
  # computed after it is logged, evaluated or saved.
  pending = []
  # XLA's CPU collectives between host devices can deadlock when several steps are enqueued (a
  # rendezvous timeout that aborts the process: seen with 2 forced host devices on 2 cores,
  # benchmarks/multi_device.py); there the runner waits for every step, as it always did.
  sync_each_step = jax.devices()[0].platform == "cpu" and jax.device_count() > 1
  guard = guards.DivergenceGuard(config, latest.latest_step, sharding.to_host)
  try:
    for step in range(start, config.num_steps):
      t0 = time.perf_counter()
      x = data_lib.train_batch(experiment.dataset, config.seed, step, config.batch_size)
      state, metrics = train_step(state, sharding.put_global(x, batch_sharding))
      done = step + 1
      preemption.debug_signal(done, config.debug_signal_step)
      pending.append((done, metrics))
      last = done == config.num_steps
      is_eval = done % config.eval_every == 0 or last
      is_log = done % config.log_every == 0 or last
      is_checkpoint = done % config.checkpoint_every == 0 or is_eval
      state = log_z_tracker.refresh(done, state, is_eval)
      # A signal (SIGTERM / SIGINT) stops the run after this step, with a checkpoint of it.
      stop = preemption.stop_requested(at_sync=sync_each_step or is_log or is_checkpoint)
      if sync_each_step or is_log or is_checkpoint or stop:
        guards.check_pending(pending, guard)  # waits for the steps: their time is counted below
        pending = []
      train_seconds += time.perf_counter() - t0
      if is_log or is_eval:
        log_z_tracker.write(writer)
      if is_log:
        row = metrics_row(metrics)
        if train_log_z.enabled:  # its AIS is part of training's cost: counted in train_seconds
          t0 = time.perf_counter()
          state, row = train_log_z.anchor(done, state, row)
          log_z_tracker.reseed(done, state)
          row["sampler/log_z_ais_seconds"] = time.perf_counter() - t0
          train_seconds += row["sampler/log_z_ais_seconds"]
        row["steps_per_second"] = (done - logged_step) / max(train_seconds - logged_seconds, 1e-9)
        logged_seconds, logged_step = train_seconds, done
        writer.write(done, row)
        progress.update(done, f"loss {row['loss']:.2f}", log_line=True)
      else:
        progress.update(done)
      if is_eval:
        t0 = time.perf_counter()
        key = jax.random.fold_in(eval_root, done)
        state, sampler_row, val = evaluate(experiment, val_eval, state, val_x, key)
        if sampler_row:
          writer.write(done, sampler_row)
        guard.check_evaluation(done, {k: val[k] for k in ("val/nll", "val/neg_elbo", "val/log_z")})
        if val["val/nll"] < record["best_val_nll"]:
          record.update(best_val_nll=val["val/nll"], best_step=done)
          best.save(done, {"params": state.params, "batch_stats": state.batch_stats})
        val.update(
          {"val/best_nll": record["best_val_nll"], "eval_seconds": time.perf_counter() - t0}
        )
        writer.write(done, val)
        progress.message(
          f"step {done}: val NLL {val['val/nll']:.3f} (best {record['best_val_nll']:.3f}"
          f" at step {record['best_step']}), log Z {val['val/log_z']:.2f}"
          f" ± {val['val/log_z_stderr']:.2f}"
        )
        images.write_images(
          experiment, image_fn, state, jax.random.fold_in(key, 2), workdir, done, writer
        )
      # While gradients run large (guard.clean is False) checkpoints wait: a checkpoint is a state
      # the guard has passed, and a run resumed from one starts the guard's count afresh.
      if stop or (is_checkpoint and (guard.clean or last)):
        rec = checkpointing.make_record(
          experiment.mesh,
          best_val_nll=record["best_val_nll"],
          best_step=record["best_step"],
          train_seconds=train_seconds,
        )
        latest.save(done, (state, rec))
        log_z_tracker.reseed(done, state)
      if stop:
        raise preemption.Preempted(done, str(latest.step_path(done)))
    if preemption.stop_requested():  # a signal during the last step: stop before the final test
      raise preemption.Preempted(config.num_steps, str(latest.step_path(config.num_steps)))
  except BaseException:
    writer.close()
    raise
  finally:
    latest.close()
    best.close()

  if config.eval_iw_samples not in eval_fns:
    eval_fns[config.eval_iw_samples] = scoring.make_eval_fn(experiment, config.eval_iw_samples)
  results = final_evaluation(
    experiment, eval_fns[config.eval_iw_samples], state, record, workdir, eval_root
  )
  results.update(
    train_seconds=train_seconds,
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


def final_evaluation(
  experiment: Experiment,
  test_eval,
  state: TrainState,
  record: dict,
  workdir: pathlib.Path,
  eval_root,
) -> dict:
  """Test NLL with ``eval_iw_samples`` importance samples (``test_eval``, from
  ``scoring.make_eval_fn``) at the best-validation checkpoint."""
  config = experiment.config
  best = checkpointing.Checkpointer(workdir / "checkpoints_best", 1)
  best_step, restored = best.restore_newest(
    {"params": state.params, "batch_stats": state.batch_stats}
  )
  state = state._replace(**restored)
  best.close()
  key = jax.random.fold_in(eval_root, 2**31 - 1)
  log_z, log_z_err = scoring.eval_log_partition(
    experiment, state.params["prior"], jax.random.fold_in(key, 0)
  )
  test_x = scoring.eval_subset(experiment.dataset.test, config.eval_num_examples)
  test = scoring.evaluate_split(
    experiment, test_eval, state, test_x, log_z, jax.random.fold_in(key, 1)
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
