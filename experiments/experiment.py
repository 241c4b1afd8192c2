"""Building a run (math.md §5–§6): its static parts (:class:`Experiment`) and its state.

Two levels, so that a reader of a trained run builds only what it needs:

* :func:`build_model`: the data, the model structure, the method and the initial weights
  (:class:`Weights`): what ``experiments.restore`` needs to load a run's weights and score or
  sample it; no optimiser, schedule or prior sampler (a dimod sampler is never imported).
* :func:`create_train_state`: adds the optimiser, its schedule and the prior sampler, and the whole
  initial :class:`TrainState`, placed on the mesh (``state_shardings``). :func:`build` is both.

The keys of a run come from ``config.seed`` alone: ``split(key(seed), 3)`` gives the model's
initialisation key, the training key and the sampler's key. :func:`build_seeds` builds the runs of
a config's ``seeds`` (one program training them all, ``experiments.seeds``): each exactly the run
that ``build`` gives for its seed, and :func:`stack_states` stacks their states along a leading
seed axis (:func:`seed_stacked`: that axis is never split over devices).
"""

from __future__ import annotations

import dataclasses
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
from dvae_jax.samplers import dimod_bridge
from experiments import config_lib, sharding

# Piecewise-constant learning rate of math.md §6 as multiples of the base rate 3e-3:
# [0, 2%) 3e-4, [2%, 60%) 3e-3, [60%, 75%) 1e-3, [75%, 95%) 3e-4, [95%, 100%] 9.1e-5.
LR_BOUNDARIES = (0.02, 0.60, 0.75, 0.95)
LR_MULTIPLIERS = (0.1, 1.0, 1.0 / 3.0, 0.1, 9.1e-5 / 3e-3)


class Weights(NamedTuple):
  """A model's weights: what a best-validation checkpoint holds.

  Attributes:
    params: ``{'model': nnx.State of the nnx.Param leaves, 'prior': the prior}``.
    batch_stats: nnx.State of the BatchNorm running statistics (and fixed data statistics).
  """

  params: dict
  batch_stats: Any


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


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The static parts of a run: data, model structure, method, mesh and, for training (set by
  :func:`create_train_state`; None after :func:`build_model` alone), sampler and optimiser."""

  config: config_dict.FrozenConfigDict
  dataset: data_lib.Dataset
  graphdef: Any
  eval_graphdef: Any
  method: Any
  mesh: jax.sharding.Mesh
  sampler: Any = None  # the prior sampler; None for the factorial prior
  optimizer: optax.GradientTransformation | None = None
  learning_rate: optax.Schedule | None = None  # the optimiser's, logged as `lr`
  state_sharding: Any = None  # a TrainState of NamedShardings, see `state_shardings`


def learning_rate_schedule(base: float, num_steps: int) -> optax.Schedule:
  """The piecewise-constant schedule of math.md §6, scaled by ``base`` (3e-3 in the paper).

  Constant pieces joined at the boundaries, not ``optax.piecewise_constant_schedule``: its product
  of scale factors puts the last piece one float32 ulp off (9.100001e-5), enough to change a run.
  """
  boundaries = [int(round(f * num_steps)) for f in LR_BOUNDARIES]
  values = base * np.array(LR_MULTIPLIERS, np.float32)
  return optax.join_schedules([optax.constant_schedule(v) for v in values], boundaries)


def _keys(config) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(model initialisation, training, sampler) keys of the run."""
  init_key, train_key, sampler_key = jax.random.split(jax.random.key(config.seed), 3)
  return init_key, train_key, sampler_key


def build_model(config, *, mesh=None, dataset=None) -> tuple[Experiment, Weights]:
  """Loads the data (unless ``dataset``, the config's data already loaded, is given) and builds
  the model and its initial weights (not placed on the mesh).

  The struct's widths take the data's dimension (``Dataset.num_pixels``); the experiment's config
  records the data's identity (``dataset_md5``, ``config_lib.with_data_identity``).

  Raises:
    config_lib.ConfigError: an invalid config. ValueError: a batch size the mesh does not divide.
    dvae_jax.data.DataNotFoundError, dvae_jax.data.DataFileError: the dataset is missing or bad,
      or not the data the config's ``dataset_md5`` names.
  """
  config = config_lib.resolve_config(config)
  mesh = mesh or sharding.make_mesh()
  sharding.check_divisible("batch_size", config.batch_size, mesh)
  sharding.check_divisible("eval_batch_size", config.eval_batch_size, mesh)
  if dataset is None:
    dataset = data_lib.load_dataset(
      config.dataset,
      config.data_dir or None,
      binarization=config.binarization,
      feature=config.data_feature,
    )
  config = config_lib.with_data_identity(config, dataset)
  method = objectives.get_method(config.method, config.beta, relaxed_sampler=config.relaxed_sampler)
  spec = models.get_struct(config.struct, num_pixels=dataset.num_pixels)
  init_key, _, _ = _keys(config)
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
  weights = Weights({"model": params_model, "prior": prior}, batch_stats)
  return Experiment(config, dataset, graphdef, eval_graphdef, method, mesh), weights


def place_weights(experiment: Experiment, weights: Weights) -> Weights:
  """``weights`` replicated over the experiment's mesh (as in a TrainState)."""
  replicated = jax.tree.map(lambda _: sharding.replicated(experiment.mesh), weights)
  return sharding.place(weights, replicated)


def create_train_state(experiment: Experiment, weights: Weights) -> tuple[Experiment, TrainState]:
  """The experiment with its optimiser, schedule and prior sampler, and the initial state.

  Raises:
    config_lib.ConfigError: the prior sampler cannot be made (e.g. a dimod sampler's name).
  """
  config, mesh = experiment.config, experiment.mesh
  _, train_key, sampler_key = _keys(config)
  params = weights.params
  prior = params["prior"]
  learning_rate = learning_rate_schedule(config.learning_rate, config.num_steps)
  optimizer = optim.adam(
    learning_rate,
    eps=config.adam_eps,
    eps_mode=config.adam_eps_mode,
  )
  sampler = make_prior_sampler(config, prior, mesh)
  sampler_state = () if sampler is None else jax.jit(sampler.init)(sampler_key, prior)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=weights.batch_stats,
    opt_state=optimizer.init(params),
    sampler_state=sampler_state,
    key=train_key,
  )
  state_sharding = state_shardings(state, mesh)
  state = sharding.place(state, state_sharding)
  experiment = dataclasses.replace(
    experiment,
    sampler=sampler,
    optimizer=optimizer,
    learning_rate=learning_rate,
    state_sharding=state_sharding,
  )
  return experiment, state


def build(config, *, mesh=None) -> tuple[Experiment, TrainState]:
  """Loads the data and builds the model, the optimiser and the initial (placed) state."""
  return create_train_state(*build_model(config, mesh=mesh))


def build_seeds(config, *, mesh=None) -> list[tuple[Experiment, TrainState]]:
  """``build(config_lib.seed_config(config, seed))`` for each seed of ``config.seeds``, in order,
  loading the data once: the experiments differ in their config's seed alone, the states are each
  seed's initial state.

  Raises:
    config_lib.ConfigError: an invalid config, or ``seeds`` unset.
  """
  config = config_lib.resolve_config(config)
  seeds = config_lib.seed_list(config)
  if not seeds:
    raise config_lib.ConfigError("build_seeds needs seeds (e.g. '0,1'); build makes a single run")
  runs, dataset = [], None
  for seed in seeds:
    experiment, weights = build_model(
      config_lib.seed_config(config, seed), mesh=mesh, dataset=dataset
    )
    mesh, dataset = experiment.mesh, experiment.dataset
    runs.append(create_train_state(experiment, weights))
  return runs


def seed_stacked(shardings: Any) -> Any:
  """The shardings of a tree stacked along a new leading seed axis from those of one tree: the
  seed axis whole on every device, the other axes split as before."""
  return jax.tree.map(
    lambda s: jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec(None, *s.spec)),
    shardings,
  )


def stack_states(experiment: Experiment, states: list[TrainState]) -> TrainState:
  """``states`` (each placed as ``experiment.state_sharding``) stacked along a leading seed axis,
  placed as ``seed_stacked(experiment.state_sharding)``."""
  stacked = seed_stacked(experiment.state_sharding)
  return jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s), out_shardings=stacked)(
    *states
  )


def make_prior_sampler(config, prior, mesh):
  """The training-time prior sampler of the config (``samplers.make_prior_sampler``, or the dimod
  sampler named by ``config.dimod_sampler``, checked now); None for the factorial prior."""
  if not prior.needs_sampler:
    return None
  if config.sampler != "dimod":
    return samplers_lib.make_prior_sampler(
      config.sampler, config.num_prior_samples, config.num_sweeps
    )
  if mesh.size != 1:
    raise config_lib.ConfigError(
      f"sampler='dimod' draws the whole population on the host and runs on one device; this mesh "
      f"has {mesh.size} (set CUDA_VISIBLE_DEVICES or JAX_PLATFORMS to use one)"
    )
  try:
    return dimod_bridge.prior_sampler(
      config.dimod_sampler, config.dimod_kwargs, config.num_prior_samples, prior
    )
  except ValueError as err:  # dimod_bridge.DimodConfigError: a name or keyword that cannot be used
    raise config_lib.ConfigError(f"sampler='dimod': {err}") from err


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
