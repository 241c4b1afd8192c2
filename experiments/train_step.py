"""The train step (math.md §2, §6): a pure jitted function ``(state, x) -> (state, metrics)`` over
the whole :class:`~experiments.experiment.TrainState`, which it donates; and the fused steps the
runner dispatches (``make_fused_steps``): S such steps in one ``lax.scan`` over S batches gathered
on the device from the training set, so that one launch does S steps' work.

The randomness of step ``t`` comes from ``fold_in(state.key, t)``: split into the prior sampler's,
the loss's and the dynamic binarization's keys. One key drives the whole global batch, so the
result does not depend on the number of devices. The step samples the prior with its persistent
sampler, computes the loss and its gradient, applies Adam, and reports the loss's terms, the
sampler's info and the divergence guard's flags (``experiments.guards``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dvae_jax import data as data_lib
from dvae_jax import objectives
from experiments import experiment as experiment_lib
from experiments import guards, sharding
from experiments.experiment import Experiment, TrainState


def kl_warmup(step: jax.Array, num_steps: int, fraction: float) -> jax.Array:
  """κ = min(t / (fraction · num_steps), 1) (math.md §6); 1 when ``fraction`` is 0."""
  if fraction <= 0:
    return jnp.ones((), jnp.float32)
  return jnp.minimum(step.astype(jnp.float32) / (fraction * num_steps), 1.0)


def weight_decay_penalty(coefficient: float, params: dict) -> jax.Array:
  """``coefficient`` · ½‖w‖² on dense kernels, BN scales and the RBM couplings (math.md §2, §6)."""
  return objectives.weight_decay(params["model"], params["prior"], coefficient=coefficient)


def make_step_fn(experiment: Experiment) -> Callable[[TrainState, jax.Array], tuple]:
  """The step ``(state, x [batch, 784]) -> (state, metrics)``, not jitted: the body of both
  ``make_train_step`` and ``make_fused_steps``. ``metrics`` maps names to [] arrays."""
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

  return step_fn


def make_train_step(experiment: Experiment) -> Callable[[TrainState, jax.Array], tuple]:
  """The jitted step ``(state, x [batch, 784]) -> (state, metrics)``; ``state`` is donated."""
  return jax.jit(
    make_step_fn(experiment),
    donate_argnums=(0,),
    in_shardings=(experiment.state_sharding, sharding.batch_sharded(experiment.mesh)),
    out_shardings=(experiment.state_sharding, sharding.replicated(experiment.mesh)),
  )


def make_fused_steps(experiment: Experiment) -> Callable[[TrainState, jax.Array, jax.Array], tuple]:
  """The jitted fused steps ``(state, train_x [n, 784], indices [S, batch]) -> (state, metrics)``:
  S train steps in one ``lax.scan``, step ``i`` on the examples ``train_x[indices[i]]`` (as
  float32, exactly what ``data.train_batch`` gives on the host). ``state`` is donated.

  ``train_x`` is the training set placed once on the device, replicated (``prepare_train_x``);
  ``indices`` are ``data.batching.slab_indices`` of the S steps, split over the devices along the
  batch. The metrics come back stacked, each [S] (step ``i`` at row ``i``), so the host reads every
  step's loss and guard flags at its next sync without a sync per step. Each length S compiles
  once. The body is ``make_step_fn``'s: the randomness of step ``t`` is still
  ``fold_in(state.key, t)``, so S steps fused give the steps one at a time.
  """
  mesh = experiment.mesh
  return jax.jit(
    _fused_fn(experiment),
    donate_argnums=(0,),
    in_shardings=(experiment.state_sharding, sharding.replicated(mesh), slab_sharded(mesh)),
    out_shardings=(experiment.state_sharding, sharding.replicated(mesh)),
  )


def make_seeds_fused_steps(
  experiment: Experiment,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple]:
  """``make_fused_steps`` of independent runs at once: ``(state, train_x [n, 784], indices [R, S,
  batch]) -> (state, metrics)`` with every leaf of ``state`` stacked along a leading axis of R runs
  (``experiment.stack_states``), run ``r`` on the slab ``indices[r]`` (its own seed's data order);
  the metrics come back [R, S]. One ``vmap`` of the same fused steps over the runs: parameters,
  optimiser state, the sampler's population and log Z, keys. The run axis stays whole on every
  device; the batch and the chains are split as for one run. ``state`` is donated.
  """
  mesh = experiment.mesh
  stacked = experiment_lib.seed_stacked(experiment.state_sharding)
  return jax.jit(
    jax.vmap(_fused_fn(experiment), in_axes=(0, None, 0)),
    donate_argnums=(0,),
    in_shardings=(stacked, sharding.replicated(mesh), seeds_slab_sharded(mesh)),
    out_shardings=(stacked, sharding.replicated(mesh)),
  )


def _fused_fn(experiment: Experiment):
  """The body of the fused steps, not jitted: ``lax.scan`` of ``make_step_fn`` over a slab."""
  step_fn = make_step_fn(experiment)
  batch = sharding.batch_sharded(experiment.mesh)

  def fused_fn(state: TrainState, train_x: jax.Array, indices: jax.Array):
    def body(state, idx):
      x = jax.lax.with_sharding_constraint(train_x[idx].astype(jnp.float32), batch)
      return step_fn(state, x)

    return jax.lax.scan(body, state, indices)

  return fused_fn


def slab_sharded(mesh) -> jax.sharding.NamedSharding:
  """Sharding of a slab of batch indices [S, batch]: the batch axis split over the devices."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.DATA_AXIS))


def seeds_slab_sharded(mesh) -> jax.sharding.NamedSharding:
  """Sharding of the slabs of several runs [R, S, batch]: the batch axis split over the devices."""
  return jax.sharding.NamedSharding(
    mesh, jax.sharding.PartitionSpec(None, None, sharding.DATA_AXIS)
  )


def prepare_train_x(experiment: Experiment) -> jax.Array:
  """The training set [n, 784] on the mesh, replicated, in its stored dtype (uint8 for a fixed
  binarization: a quarter of float32's memory); ``make_fused_steps`` gathers each batch from it."""
  return sharding.put_global(experiment.dataset.train, sharding.replicated(experiment.mesh))


def _info_dict(info) -> dict:
  """The numeric fields of a sampler's info (a NamedTuple such as ``PersistentInfo``), as float."""
  items = info._asdict().items() if hasattr(info, "_asdict") else dict(info).items()
  return {
    k: jnp.asarray(v, jnp.float32)
    for k, v in items
    if isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jnp.number)
  }
