"""State and interface shared by the persistent training-time prior samplers (math.md §3).

The two samplers are `pcd` and `persistent_pa`; each offers `init`, `step(key, state, m)` and
`prior_sampler(num_samples, num_sweeps, ...) -> PriorSampler(init, step)`.

Both keep S chains/replicas of the current model, the parameters those chains were last equilibrated
at, and a running estimate of log Z that is updated by importance reweighting whenever the
parameters change. The running estimate starts exact: the initial state belongs to the all-zero
machine (uniform distribution, log Z = n log 2, uniform samples are exact), and the first `step`
moves it to the caller's parameters. Both kinds use the same pytrees, so checkpoints do not depend
on the kind. The machine is any prior with a sampler (an RBM, a graph machine, ...), its chains
one array z [S, n] (`chains`).

Order of a step, and why. In training the new parameters are computed from the very samples held
in the state (the surrogate gradient of math.md §2), and the update lowers the model probability of
those samples relative to fresh ones. Reweighting them immediately would bias every log Z increment
downwards by ≈ lr·Σ_k var(s̄_k) (s̄ the sufficient statistics' sample means): measured −0.69 nats
after 300 steps at lr 0.1 on a 12×12 RBM, against a stderr of 0.03. So each step first runs
`decorrelation_sweeps` (default num_sweeps // 2) under the old parameters, then reweights (and, for
PA, resamples), then runs the remaining sweeps under the new ones; the total stays num_sweeps.
With 5 + 5 sweeps the same run ended at −0.02 ± 0.03 nats (tests/samplers/test_prior_sampler.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dvae_jax import numerics
from dvae_jax.samplers import chains, resampling

Array = jax.Array
Machine = Any  # a prior (priors.base.Prior)


class PersistentState(NamedTuple):
  """Persistent population (a pytree of arrays: jittable, donatable, checkpointable).

  Attributes:
    z: [S, n] samples of the model with parameters `params`.
    log_z: scalar running estimate of log Z(params).
    log_z_compensation: scalar Kahan compensation of the running sum (increments of 1e-3 onto
      |log Z| ≈ 100 over 10^6 steps would otherwise lose precision in float32).
    log_z_variance: scalar accumulated variance estimate of log_z, Σ over reweighting stages of
      1/ESS − 1/S (the delta-method relative variance of each incremental mean weight, stages
      treated as independent). It ignores correlations left by resampling and the bias of imperfect
      mixing; with ≥ 10 sweeps per step it matched the observed spread (tests/samplers/test_pa.py).
    params: the machine (RBM or graph) the population is equilibrated at (to reweight when the
      parameters change).
  """

  z: Array
  log_z: Array
  log_z_compensation: Array
  log_z_variance: Array
  params: Machine


class PersistentInfo(NamedTuple):
  """Scalars describing one `step` of a persistent sampler.

  Attributes:
    log_z: the new running estimate of log Z (same as state.log_z).
    ess: effective sample size (in samples, ≤ S) of the reweighting, the smallest over its stages.
    num_stages: number of reweighting stages (intermediate parameters) used; 1 for PCD.
    log_z_increment: change of the running log Z estimate in this step.
    log_z_stderr: sqrt(state.log_z_variance), the standard error of the running log Z.
  """

  log_z: Array
  ess: Array
  num_stages: Array
  log_z_increment: Array
  log_z_stderr: Array


class PriorSampler(NamedTuple):
  """A pair of pure functions: init(key, m) -> state and step(key, state, m) -> (state, info).

  Both kinds return a `PersistentState` and a `PersistentInfo`.
  """

  init: Callable
  step: Callable


def zero_state(key: Array, m: Machine, num_samples: int) -> PersistentState:
  """Exact state of the all-zero machine shaped like `m`: uniform samples, log Z = n log 2."""
  chains.check(m)
  z = m.init_chains(key, num_samples)
  log_z = jnp.asarray(chains.uniform_log_partition(m), m.dtype)
  zero = jax.tree.map(jnp.zeros_like, m)
  zeros = jnp.zeros_like(log_z)
  return PersistentState(z, log_z, zeros, zeros, zero)


def init_fn(step: Callable, num_samples: int) -> Callable:
  """init(key, m): the exact zero-parameter state of S = num_samples chains moved to m by `step`.

  With m = 0 (the start of training, math.md §2) the result is exact; for other m its accuracy is
  that of one `step` from the uniform distribution.
  """

  def init(key: Array, m: Machine) -> PersistentState:
    k0, k1 = jax.random.split(key)
    return step(k1, zero_state(k0, m, num_samples), m)[0]

  return init


def check_sizes(num_samples: int, num_sweeps: int, decorrelation_sweeps: int | None) -> None:
  """Raises ValueError for a sampler's population size or sweep split that cannot work."""
  if num_samples < 1 or num_sweeps < 1:
    raise ValueError(f"num_samples and num_sweeps must be >= 1, got {num_samples}, {num_sweeps}")
  split_sweeps(num_sweeps, decorrelation_sweeps)


def split_sweeps(num_sweeps: int, decorrelation_sweeps: int | None) -> tuple[int, int]:
  """(sweeps under the old parameters, sweeps under the new ones); see the module docstring."""
  if num_sweeps < 1:
    raise ValueError(f"num_sweeps must be >= 1, got {num_sweeps}")
  before = num_sweeps // 2 if decorrelation_sweeps is None else decorrelation_sweeps
  if not 0 <= before < num_sweeps:
    raise ValueError(
      f"decorrelation_sweeps must lie in [0, num_sweeps) = [0, {num_sweeps}), got {before}"
    )
  return before, num_sweeps - before


def decorrelate(key: Array, state: PersistentState, num_sweeps: int) -> PersistentState:
  """num_sweeps Gibbs sweeps under state.params (the parameters the chains belong to)."""
  if num_sweeps == 0:
    return state
  return state._replace(z=state.params.run(key, state.z, num_sweeps))


def incremental_variance(ess: Array, num: int) -> Array:
  """Delta-method relative variance of a mean of num weights with effective sample size ess.

  var(mean w)/mean(w)² ≈ var(w)/(num mean(w)²) = (num/ESS − 1)/num = 1/ESS − 1/num.
  """
  return jnp.maximum(1.0 / ess - 1.0 / num, 0.0)


def reweight(state: PersistentState, m: Machine) -> tuple[PersistentState, PersistentInfo]:
  """The running log Z moved from state.params to m by importance reweighting state's chains.

  E is linear in θ, so the log-weights are −E_{m − params}(chains) [S]; the increment is their
  log-mean-exp, added with Kahan compensation, and its delta-method variance accumulates. The
  chains are unchanged and `params` becomes m: the caller moves the chains (PCD sweeps them under
  m; `external` draws new ones).

  Returns:
    (state with the new log Z, compensation, variance and params = m; PersistentInfo of one stage).
  """
  delta = jax.tree.map(jnp.subtract, m, state.params)
  log_w = -delta.energy(state.z)
  increment = numerics.log_mean_exp(log_w)
  ess = resampling.effective_sample_size(log_w)
  log_z, comp = numerics.kahan_add(state.log_z, state.log_z_compensation, increment)
  variance = state.log_z_variance + incremental_variance(ess, log_w.shape[0])
  info = PersistentInfo(log_z, ess, jnp.ones((), jnp.int32), increment, jnp.sqrt(variance))
  return PersistentState(state.z, log_z, comp, variance, m), info


def check_state(state: PersistentState, m: Machine) -> None:
  """Raises ValueError unless the state's chains and params fit the prior m (TypeError unless m
  is a prior): a state belongs to one prior structure (kind, sizes, graph)."""
  chains.check_chains(state.z, m, "sampler state chains")
  old, new = jax.tree.structure(state.params), jax.tree.structure(m)
  if old != new:
    raise ValueError(
      f"sampler state params have the structure {old}, the new parameters {new}: a state "
      "belongs to one kind of prior (and one graph)"
    )


def reset_log_z(
  state: PersistentState, log_z: float | Array, stderr: float | Array
) -> PersistentState:
  """The state with its running log Z replaced by an independent estimate for `state.params`.

  The running estimate's increments are nearly unbiased, but the mixing biases of a population
  that lags the model add up over thousands of steps (math.md §3); a caller holding an estimate
  for the population's own parameters (AIS, fresh population annealing) re-anchors the run here.
  The Kahan compensation restarts at 0 and the variance at stderr²; each new leaf keeps the dtype
  and the sharding of the one it replaces.
  """

  def like(old: Array, value) -> Array:
    return jax.device_put(jnp.asarray(value, old.dtype), old.sharding)

  return state._replace(
    log_z=like(state.log_z, log_z),
    log_z_compensation=like(state.log_z_compensation, 0.0),
    log_z_variance=like(state.log_z_variance, stderr**2),
  )
