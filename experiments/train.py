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
"""

from __future__ import annotations

import dataclasses
import json
import math
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
from dvae_jax import evaluation, models, objectives, optim, posterior, priors
from dvae_jax import rbm as rbm_lib
from dvae_jax import samplers as samplers_lib
from experiments import (
  checkpointing,
  config_lib,
  guards,
  images,
  preemption,
  sharding,
  workdir_lock,
)
from experiments import metrics as metrics_lib
from experiments.configs import base as base_config

# Piecewise-constant learning rate of MATH.md §6 as multiples of the base rate 3e-3:
# [0, 2%) 3e-4, [2%, 60%) 3e-3, [60%, 75%) 1e-3, [75%, 95%) 3e-4, [95%, 100%] 9.1e-5.
LR_BOUNDARIES = (0.02, 0.60, 0.75, 0.95)
LR_MULTIPLIERS = (0.1, 1.0, 1.0 / 3.0, 0.1, 9.1e-5 / 3e-3)

# Keys whose change does not alter the trajectory of a run; any other difference between a workdir's
# config and the requested one refuses to resume.
_RESUMABLE_DIFFERENCES = (
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
)
# Per-step flags of the train step's metrics, read by the guards and never logged.
_FLAG_KEYS = ("finite", "guard")


class NonFiniteLossError(FloatingPointError):
  """A train step produced a NaN or inf; the message names the step and the offending terms."""


class WorkdirConfigError(ValueError):
  """The workdir holds a run with a different config."""


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


def learning_rate_schedule(base: float, num_steps: int) -> Callable[[jax.Array], jax.Array]:
  """The piecewise-constant schedule of MATH.md §6, scaled by ``base`` (3e-3 in the paper)."""
  boundaries = jnp.array([int(round(f * num_steps)) for f in LR_BOUNDARIES])
  values = base * jnp.array(LR_MULTIPLIERS, jnp.float32)

  def schedule(step):
    return values[jnp.sum(step >= boundaries)]

  return schedule


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
  mesh: jax.sharding.Mesh
  state_sharding: Any  # a TrainState of NamedShardings, see `state_shardings`


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
  prior = priors.init_prior(config.prior, spec)
  params = {"model": params_model, "prior": prior}
  optimizer = optim.adam(
    learning_rate_schedule(config.learning_rate, config.num_steps),
    eps=config.adam_eps,
    eps_mode=config.adam_eps_mode,
  )
  if config.prior == "rbm":
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
    config, dataset, graphdef, eval_graphdef, method, sampler, optimizer, mesh, state_sharding
  )
  return experiment, state


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
  """Where each leaf of the train state lives: a TrainState of NamedShardings.

  The prior sampler's chains (z1 [S, n1], z2 [S, n2]) are split over the devices along S, so
  that each device runs S / num_devices of them (their updates are independent; PA's reweighting
  and resampling, over the whole population, become collectives). Everything else is replicated.
  When S does not divide evenly the chains are replicated too, with a warning: correct, but every
  device then samples the whole population.
  """
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), state)
  chains = state.sampler_state
  if not (hasattr(chains, "z1") and hasattr(chains, "z2")):
    return shardings  # the factorial prior has no sampler state
  num_chains, num_devices = chains.z1.shape[0], mesh.devices.size
  if num_chains % num_devices:
    logging.warning(
      "num_prior_samples=%d is not divisible by the %d devices: every device samples all chains",
      num_chains,
      num_devices,
    )
    return shardings
  split = sharding.batch_sharded(mesh)
  return shardings._replace(sampler_state=shardings.sampler_state._replace(z1=split, z2=split))


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
  schedule = learning_rate_schedule(config.learning_rate, config.num_steps)

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
      z1, z2 = rbm_lib.rao_blackwellize(
        prior, sampler_state.z1, sampler_state.z2, config.rao_blackwell
      )
      prior_samples = (z1, z2, sampler_state.log_z)
    else:
      sampler_state, info, prior_samples = (), {}, None

    def loss_fn(params):
      model = nnx.merge(graphdef, params["model"], state.batch_stats, copy=True)
      loss, terms = objectives.loss_fn(
        model, params["prior"], prior_samples, x, loss_key, method, config.k, kappa
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
      "lr": schedule(state.step),
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


def make_eval_fn(experiment: Experiment, num_samples: int):
  """Jitted ``(params, batch_stats, log_z, x [B, 784], mask [B], key) -> (Σ nll, Σ −ELBO, Σ nll²)``
  of the discrete model with ``num_samples`` importance samples (MATH.md §6)."""
  graphdef = experiment.eval_graphdef
  chunk = min(num_samples, 100)

  def eval_fn(params, batch_stats, log_z, x, mask, key):
    model = nnx.merge(graphdef, params["model"], batch_stats)
    out = evaluation.evaluate(
      model, params["prior"], log_z, x, key, num_samples, sample_chunk=chunk
    )
    nll = out["nll"] * mask
    return jnp.sum(nll), jnp.sum(out["neg_elbo"] * mask), jnp.sum(nll * nll)

  replicated = sharding.replicated(experiment.mesh)
  batch = sharding.batch_sharded(experiment.mesh)
  return jax.jit(
    eval_fn,
    in_shardings=(replicated, replicated, replicated, batch, batch, replicated),
    out_shardings=replicated,
  )


def log_partition(experiment: Experiment, prior, key) -> tuple[float, float]:
  """(log Z, its standard error): AIS for the RBM (MATH.md §3), exact (0, 0) for the factorial
  prior, whose log-probabilities are normalised."""
  config = experiment.config
  if config.prior == "factorial":
    return 0.0, 0.0
  result = samplers_lib.ais_log_partition(
    prior, key, num_chains=config.ais_num_chains, num_temperatures=config.ais_num_temperatures
  )
  return float(sharding.to_host(result.log_z)), float(sharding.to_host(result.stderr))


def sampler_log_partition(
  experiment: Experiment, sampler_state, diagnostic: dict, key
) -> tuple[float, float]:
  """(log Z, stderr) for the parameters of the sampler's population, ``sampler_state.params``: the
  sampler diagnostic's fresh anneals when it ran, else AIS. Not the evaluation's AIS of the
  prior: the train step updates the prior after sampling, so the prior is one step ahead, and
  anchoring the sampler to it would count that step's log Z change twice (0.1–0.2 nats early in the
  default run)."""
  if SAMPLER_DIAGNOSTIC_PREFIX + "reference_log_z" in diagnostic:
    return (
      diagnostic[SAMPLER_DIAGNOSTIC_PREFIX + "reference_log_z"],
      diagnostic[SAMPLER_DIAGNOSTIC_PREFIX + "reference_log_z_stderr"],
    )
  return log_partition(experiment, sampler_state.params, key)


def anchor_sampler_log_z(state: TrainState, log_z: float, log_z_err: float):
  """Replaces the prior sampler's tracked log Z by an independent estimate for its parameters
  (``sampler_log_partition``).

  The persistent sampler tracks log Z by reweighting its population at every parameter change
  (MATH.md §3). Each increment is nearly unbiased, but over thousands of steps the small mixing
  biases of a population that lags the model add up: on the default run the tracked value fell
  ≈ 39 nats below AIS in 20k steps. Gradients never use this value (MATH.md §2), but the reported
  training terms (log_z, kl, neg_elbo) do, so each evaluation re-anchors it to an independent
  estimate and logs the drift it removed (between evaluations, ``make_log_z_tracking``).

  Returns:
    (state with the sampler's log_z, compensation and variance reset, drift = tracked − estimate).
  """
  sampler_state = state.sampler_state
  drift = float(sharding.to_host(sampler_state.log_z)) - log_z

  def like(old, value):
    return jax.device_put(jnp.asarray(value, old.dtype), old.sharding)

  sampler_state = sampler_state._replace(
    log_z=like(sampler_state.log_z, log_z),
    log_z_compensation=like(sampler_state.log_z_compensation, 0.0),
    log_z_variance=like(sampler_state.log_z_variance, log_z_err**2),
  )
  return state._replace(sampler_state=sampler_state), drift


def make_log_z_tracking(experiment: Experiment):
  """Jitted ``(seed, refresh)`` of ``samplers.log_z_tracking`` for the runner, or ``None`` when
  ``log_z_refresh_every`` is 0 or there is no RBM sampler.

  ``seed(key, state) -> tracker`` (replicated); ``refresh(key, tracker, state) -> (tracker, state,
  [drift, new log Z, stderr, stages, smallest ESS])`` donates ``state`` and replaces its sampler's
  log Z by the tracker's.
  """
  config = experiment.config
  if experiment.sampler is None or not config.log_z_refresh_every:
    return None
  replicated = sharding.replicated(experiment.mesh)
  tracking = samplers_lib.log_z_tracking

  def seed(key, state):
    return tracking.seed(key, state.sampler_state, config.log_z_tracker_replicas)

  def refresh(key, tracker, state):
    tracker, sampler_state, drift, info = tracking.refresh(
      key, tracker, state.sampler_state, config.log_z_tracker_sweeps
    )
    values = (drift, tracker.log_z, info.log_z_stderr, info.num_stages, info.ess)
    values = jnp.stack([jnp.asarray(v, jnp.float32) for v in values])
    return tracker, state._replace(sampler_state=sampler_state), values

  return (
    jax.jit(seed, out_shardings=replicated),
    jax.jit(
      refresh,
      donate_argnums=(2,),
      out_shardings=(replicated, experiment.state_sharding, replicated),
    ),
  )


SAMPLER_DIAGNOSTIC_PREFIX = "val/sampler_"


def sampler_diagnostic(experiment: Experiment, sampler_state, key) -> dict[str, float]:
  """``val/sampler_*`` metrics: the persistent population's moment errors (z1, z2, z1z2, pooled) in
  units of the noise of as many independent samples, against two fresh anneals for the population's
  own parameters (``samplers.diagnostics``), the implied relative bias of the log-Z gradient, the
  anneals' log Z and the seconds taken. Empty without an RBM sampler or with
  ``sampler_diagnostic_replicas = 0``."""
  config = experiment.config
  if experiment.sampler is None or not config.sampler_diagnostic_replicas:
    return {}
  t0 = time.perf_counter()
  out = samplers_lib.diagnostics.state_moment_error(
    key,
    sampler_state,
    num_replicas=config.sampler_diagnostic_replicas,
    num_temperatures=config.sampler_diagnostic_temperatures,
  )
  out = {k: float(sharding.to_host(v)) for k, v in out._asdict().items()}
  names = {"z1": "z1_error", "z2": "z2_error", "z1z2": "z1z2_error", "total": "error"}
  names["relative_bias"] = "grad_relative_bias"
  metrics = {SAMPLER_DIAGNOSTIC_PREFIX + names.get(k, k): v for k, v in out.items()}
  metrics[SAMPLER_DIAGNOSTIC_PREFIX + "diagnostic_seconds"] = time.perf_counter() - t0
  return metrics


def sampler_diagnostic_history(workdir: pathlib.Path) -> dict:
  """The ``val/sampler_*`` metrics of every evaluation in ``metrics.jsonl`` as lists, with
  ``steps`` and ``max_error`` (the largest of the four moment errors over the run)."""
  rows = [r for r in metrics_lib.read_metrics(workdir) if SAMPLER_DIAGNOSTIC_PREFIX + "error" in r]
  if not rows:
    return {}
  keys = [k for k in rows[0] if k.startswith(SAMPLER_DIAGNOSTIC_PREFIX)]
  history = {k[len(SAMPLER_DIAGNOSTIC_PREFIX) :]: [r.get(k) for r in rows] for k in keys}
  history["steps"] = [r["step"] for r in rows]
  errors = ("error", "z1_error", "z2_error", "z1z2_error")
  history["max_error"] = max(max(history[k]) for k in errors)
  return history


def evaluate_split(
  experiment: Experiment,
  eval_fn,
  state: TrainState,
  x_all: np.ndarray,
  log_z: float,
  key,
  progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
  """Mean NLL and −ELBO (nats) over the examples ``x_all`` [n, 784] (uint8 or float), and the
  standard error of the mean NLL over the examples (``nll_stderr``). Memory is bounded by one batch
  of ``eval_batch_size`` examples; ``progress(examples done)`` is called after each batch."""
  config, mesh = experiment.config, experiment.mesh
  batch_size = config.eval_batch_size
  n = x_all.shape[0]
  total_nll = total_elbo = total_sq = 0.0
  batch_sharding = sharding.batch_sharded(mesh)
  log_z = sharding.put_global(np.float32(log_z), sharding.replicated(mesh))
  for b, start in enumerate(range(0, n, batch_size)):
    x = np.zeros((batch_size, x_all.shape[1]), np.float32)
    mask = np.zeros((batch_size,), np.float32)
    chunk = x_all[start : start + batch_size]
    x[: len(chunk)], mask[: len(chunk)] = chunk, 1.0
    nll, elbo, nll_sq = eval_fn(
      state.params,
      state.batch_stats,
      log_z,
      sharding.put_global(x, batch_sharding),
      sharding.put_global(mask, batch_sharding),
      jax.random.fold_in(key, b),
    )
    total_nll += float(sharding.to_host(nll))
    total_elbo += float(sharding.to_host(elbo))
    total_sq += float(sharding.to_host(nll_sq))
    if progress is not None:
      progress(min(start + batch_size, n))
  mean = total_nll / n
  variance = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
  return {"nll": mean, "neg_elbo": total_elbo / n, "nll_stderr": math.sqrt(variance / n)}


# ----------------------------------------------------------------------------------------------
# Images.


def model_samples(experiment: Experiment, params, batch_stats, sampler_state, key, num: int):
  """[num', 784] decoder means p(x|z) of prior samples z: the sampler's population (its first
  ``num``) for the RBM, fresh draws for the factorial prior."""
  prior = params["prior"]
  if experiment.sampler is not None:
    z = jnp.concatenate([sampler_state.z1, sampler_state.z2], axis=-1)[:num]
  else:
    z = jax.random.bernoulli(key, jax.nn.sigmoid(prior.logits), (num, prior.logits.shape[0]))
  return decode_means(experiment, params, batch_stats, z)


def decode_means(experiment: Experiment, params, batch_stats, z: jax.Array) -> jax.Array:
  """[n, 784] decoder means sigmoid(logits of p(x|z)) of binary latents ``z`` [n, num_latent]."""
  model = nnx.merge(experiment.eval_graphdef, params["model"], batch_stats)
  return jax.nn.sigmoid(model.decode(z.astype(jnp.float32), use_running_average=True))


def reconstructions(experiment: Experiment, params, batch_stats, key, x: jax.Array) -> jax.Array:
  """[n, 784] decoder means of binary z ~ q(z|x) through the encoder hierarchy (MATH.md §5)."""
  model = nnx.merge(experiment.eval_graphdef, params["model"], batch_stats)
  post = posterior.sample_hierarchy(
    model, x, key, 1, posterior.bernoulli_group, use_running_average=True
  )
  return jax.nn.sigmoid(model.decode(post.zeta[0], use_running_average=True))


def make_image_fn(experiment: Experiment):
  """Jitted ``(state, key, originals [m, 784]) -> (samples [n, 784], reconstructions [m, 784])``."""
  num = experiment.config.num_image_samples

  def image_fn(state: TrainState, key, originals):
    samples = model_samples(
      experiment,
      state.params,
      state.batch_stats,
      state.sampler_state,
      jax.random.fold_in(key, 0),
      num,
    )
    recon = reconstructions(
      experiment, state.params, state.batch_stats, jax.random.fold_in(key, 1), originals
    )
    return samples, recon

  return jax.jit(image_fn, out_shardings=sharding.replicated(experiment.mesh))


def write_images(experiment, image_fn, state, key, workdir, step, writer) -> None:
  """Writes ``samples_STEP.png`` and ``reconstructions_STEP.png`` (and TensorBoard images)."""
  num = experiment.config.num_image_samples
  cols = max(1, int(math.sqrt(num)))
  originals = experiment.dataset.valid[: max(1, num // 2)].astype(np.float32)
  samples, recon = image_fn(
    state, key, sharding.put_global(originals, sharding.replicated(experiment.mesh))
  )
  samples, recon = sharding.to_host(samples), sharding.to_host(recon)
  if jax.process_index() == 0:
    samples_grid = images.tile(samples, cols)
    recon_grid = images.tile(images.interleave(originals, recon), 2 * max(1, cols // 2))
    images.save_png(pathlib.Path(workdir) / f"samples_{step:08d}.png", samples_grid)
    images.save_png(pathlib.Path(workdir) / f"reconstructions_{step:08d}.png", recon_grid)
    writer.write_image(step, "samples", samples_grid)
    writer.write_image(step, "reconstructions", recon_grid)


# ----------------------------------------------------------------------------------------------
# The loop.


def initial_record(
  mesh, *, best_val_nll: float = np.inf, best_step: int = -1, train_seconds: float = 0.0
) -> dict:
  """The run's bookkeeping, saved beside the state: ``checkpoints/STEP`` is ``(state, record)``."""
  record = {
    "best_val_nll": np.float32(best_val_nll),
    "best_step": np.int32(best_step),
    "train_seconds": np.float32(train_seconds),
  }
  return sharding.replicate(record, mesh)


def _check_finite(step: int, metrics_host: dict) -> None:
  bad = [k for k, v in metrics_host.items() if k not in _FLAG_KEYS and not np.all(np.isfinite(v))]
  named = ", ".join(f"{k}={np.asarray(metrics_host[k]).item()}" for k in bad) or "(none named)"
  raise NonFiniteLossError(
    f"non-finite value at training step {step}: {named}. Training stopped; the last good "
    "checkpoint is kept."
  )


def _check_pending(pending: list[tuple[int, dict]], guard: guards.DivergenceGuard) -> None:
  """Raises NonFiniteLossError / guards.DivergenceError for the first (step, metrics) pair holding
  a non-finite value / a diverged one."""
  for step, metrics in pending:
    if not bool(sharding.to_host(metrics["finite"])):
      _check_finite(step, {k: sharding.to_host(v) for k, v in metrics.items()})
    guard.observe(step, metrics)


def eval_subset(x: np.ndarray, num: int) -> np.ndarray:
  """``num`` examples of a split drawn uniformly without replacement (all of them for 0).

  A fixed random subset, not the first ``num``: the binarized MNIST test split is ordered (its
  first 2000 images average 96.6 ink pixels against 103.9 over the split), and a prefix gave test
  NLLs ≈ 20 nats below the validation NLL. The subset depends on the split's size only, so every
  run (any seed, any method) is evaluated on the same images.
  """
  if num == 0 or num >= len(x):
    return x
  index = np.random.default_rng(len(x)).choice(len(x), size=num, replace=False)
  return x[np.sort(index)]


def _check_resumable(workdir: pathlib.Path, config) -> None:
  path = workdir / "config.json"
  if not path.exists():
    return
  old = json.loads(path.read_text())
  new = metrics_lib.to_python(config.to_dict())
  # A key added to the library after the run started holds its default: the run is unchanged.
  defaults = metrics_lib.to_python(base_config.get_config().to_dict())
  old = {**{k: v for k, v in defaults.items() if k not in old and v == new.get(k)}, **old}
  diff = sorted(
    k for k in set(old) | set(new) if k not in _RESUMABLE_DIFFERENCES and old.get(k) != new.get(k)
  )
  if diff:
    details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
    raise WorkdirConfigError(
      f"workdir {workdir} holds a run with a different config ({details}); resume it with the "
      "same config or choose another --workdir"
    )


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
  _check_resumable(workdir, config)
  if primary:
    workdir_lock.check_free_space(workdir, state, config.max_checkpoints)  # before any write
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(
      json.dumps(metrics_lib.to_python(config.to_dict()), indent=1, sort_keys=True)
    )
  latest = checkpointing.Checkpointer(workdir / "checkpoints", config.max_checkpoints)
  best = checkpointing.Checkpointer(workdir / "checkpoints_best", 1)
  record = initial_record(experiment.mesh)
  start, (state, record) = latest.restore_newest((state, record))
  start = start or 0
  if start:
    for stale in [s for s in best.all_steps() if s > start]:
      best.delete(stale)  # written after the checkpoint we resume from
  record = {k: sharding.to_host(v).item() for k, v in record.items()}
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
  eval_fns = {config.val_iw_samples: make_eval_fn(experiment, config.val_iw_samples)}
  val_eval = eval_fns[config.val_iw_samples]
  image_fn = make_image_fn(experiment)
  eval_root = jax.random.key(config.seed + 1)  # independent of the training keys
  # The log Z tracker is seeded at the start and at every checkpoint, so a resumed run tracks as
  # the uninterrupted one did; its refreshes' drifts wait for the next host sync to be written.
  log_z_tracking = make_log_z_tracking(experiment)
  tracking_root = jax.random.fold_in(eval_root, 2**31 - 2)
  if log_z_tracking:
    tracker = log_z_tracking[0](jax.random.fold_in(tracking_root, start), state)
  refresh_drifts = []
  val_x = eval_subset(experiment.dataset.valid, config.eval_num_examples)
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
      if log_z_tracking and done % config.log_z_refresh_every == 0 and not is_eval:
        key = jax.random.fold_in(tracking_root, done)
        tracker, state, drift = log_z_tracking[1](key, tracker, state)
        refresh_drifts.append((done, drift))
      # A signal (SIGTERM / SIGINT) stops the run after this step, with a checkpoint of it.
      stop = preemption.stop_requested(at_sync=sync_each_step or is_log or is_checkpoint)
      if sync_each_step or is_log or is_checkpoint or stop:
        _check_pending(pending, guard)  # waits for the steps: their time is counted below
        pending = []
      train_seconds += time.perf_counter() - t0
      if refresh_drifts and (is_log or is_eval):
        for at, values in refresh_drifts:
          names = ("refresh_drift", "refreshed", "refresh_stderr", "refresh_stages", "refresh_ess")
          values = sharding.to_host(values).tolist()
          writer.write(at, {f"sampler/log_z_{k}": v for k, v in zip(names, values, strict=True)})
        refresh_drifts = []
      if is_log:
        row = {k: sharding.to_host(v).item() for k, v in metrics.items() if k not in _FLAG_KEYS}
        row["steps_per_second"] = (done - logged_step) / max(train_seconds - logged_seconds, 1e-9)
        logged_seconds, logged_step = train_seconds, done
        writer.write(done, row)
        progress.update(done, f"loss {row['loss']:.2f}", log_line=True)
      else:
        progress.update(done)
      if is_eval:
        t0 = time.perf_counter()
        key = jax.random.fold_in(eval_root, done)
        log_z, log_z_err = log_partition(
          experiment, state.params["prior"], jax.random.fold_in(key, 0)
        )
        if experiment.sampler is not None:
          diagnostic = sampler_diagnostic(
            experiment, state.sampler_state, jax.random.fold_in(key, 3)
          )
          anchor = sampler_log_partition(
            experiment, state.sampler_state, diagnostic, jax.random.fold_in(key, 4)
          )
          state, drift = anchor_sampler_log_z(state, *anchor)
          writer.write(done, {"val/sampler_log_z_drift": drift, **diagnostic})
        val = evaluate_split(experiment, val_eval, state, val_x, log_z, jax.random.fold_in(key, 1))
        guard.check_evaluation(
          done, {"val/nll": val["nll"], "val/neg_elbo": val["neg_elbo"], "val/log_z": log_z}
        )
        improved = val["nll"] < record["best_val_nll"]
        if improved:
          record.update(best_val_nll=val["nll"], best_step=done)
          best.save(done, {"params": state.params, "batch_stats": state.batch_stats})
        writer.write(
          done,
          {
            "val/nll": val["nll"],
            "val/neg_elbo": val["neg_elbo"],
            "val/log_z": log_z,
            "val/log_z_stderr": log_z_err,
            "val/best_nll": record["best_val_nll"],
            "eval_seconds": time.perf_counter() - t0,
          },
        )
        progress.message(
          f"step {done}: val NLL {val['nll']:.3f} (best {record['best_val_nll']:.3f}"
          f" at step {record['best_step']}), log Z {log_z:.2f} ± {log_z_err:.2f}"
        )
        write_images(experiment, image_fn, state, jax.random.fold_in(key, 2), workdir, done, writer)
      # While gradients run large (guard.clean is False) checkpoints wait: a checkpoint is a state
      # the guard has passed, and a run resumed from one starts the guard's count afresh.
      if stop or (is_checkpoint and (guard.clean or last)):
        rec = initial_record(
          experiment.mesh,
          best_val_nll=record["best_val_nll"],
          best_step=record["best_step"],
          train_seconds=train_seconds,
        )
        latest.save(done, (state, rec))
        if log_z_tracking:
          tracker = log_z_tracking[0](jax.random.fold_in(tracking_root, done), state)
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
    eval_fns[config.eval_iw_samples] = make_eval_fn(experiment, config.eval_iw_samples)
  results = final_evaluation(
    experiment, eval_fns[config.eval_iw_samples], state, record, workdir, eval_root
  )
  results.update(
    train_seconds=train_seconds,
    wall_seconds_this_session=time.time() - wall_start,
    sampler_diagnostic=sampler_diagnostic_history(workdir),
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
  """Test NLL with ``eval_iw_samples`` importance samples (``test_eval``, from ``make_eval_fn``) at
  the best-validation checkpoint."""
  config = experiment.config
  best = checkpointing.Checkpointer(workdir / "checkpoints_best", 1)
  best_step, restored = best.restore_newest(
    {"params": state.params, "batch_stats": state.batch_stats}
  )
  state = state._replace(**restored)
  best.close()
  key = jax.random.fold_in(eval_root, 2**31 - 1)
  log_z, log_z_err = log_partition(experiment, state.params["prior"], jax.random.fold_in(key, 0))
  test_x = eval_subset(experiment.dataset.test, config.eval_num_examples)
  test = evaluate_split(experiment, test_eval, state, test_x, log_z, jax.random.fold_in(key, 1))
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
