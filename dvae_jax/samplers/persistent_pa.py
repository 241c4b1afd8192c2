"""Persistent population annealing: the reference training-time prior sampler (math.md §3, §6).

A population of S replicas z [S, n] of the current prior (an RBM, a graph machine, ...), kept
across training steps with a running log Z (`persistent.PersistentState`). When the parameters
move from θ_old (stored in the state) to θ_new, `step` anneals in parameter space along
θ_α = θ_old + α (θ_new − θ_old), α: 0 → 1, where E_α = E_old + α ΔE with ΔE = E_new − E_old.
Each stage is a population annealing step (`population_annealing`): reweight by exp(−Δα ΔE)
(log Z += log mean exp), resample (`population_annealing.reweight_resample`), sweep under θ_α; Δα
comes from the same adaptive rule as adaptive PA (`tempering.next_beta`, with α for β and
max_stages for the step bound). Then it runs the remaining sweeps under θ_new. When the
parameters change slowly (training), a single stage with ESS ≈ S suffices. `persistent` explains
the order of the sweeps around the reweighting.

  sampler = persistent_pa.prior_sampler(num_samples=1000, num_sweeps=40)
  state = sampler.init(key, m)
  state, info = sampler.step(key, state, m)   # PersistentState, PersistentInfo
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from dvae_jax import numerics
from dvae_jax.samplers import persistent, resampling, tempering
from dvae_jax.samplers.persistent import Machine, PersistentInfo, PersistentState, PriorSampler
from dvae_jax.samplers.population_annealing import ResampleFn, reweight_resample

Array = jax.Array


def step(
  key: Array,
  state: PersistentState,
  m: Machine,
  num_sweeps: int = 40,
  target_ess: float = 0.9,
  max_stages: int = 1000,
  num_intermediate_sweeps: int = 1,
  resample_fn: ResampleFn = resampling.systematic,
  decorrelation_sweeps: int | None = None,
) -> tuple[PersistentState, PersistentInfo]:
  """Move the persistent population from state.params to m, updating log Z (module docstring).

  Args:
    key: PRNG key.
    state: PersistentState (z [S, n], log_z, params).
    m: the new parameters (the same kind of prior as state.params).
    num_sweeps: block Gibbs sweeps per step in total: `decorrelation_sweeps` of them (default
      num_sweeps // 2) under state.params before the reweighting (see `persistent` for why), the
      rest under m after the re-annealing.
    target_ess: ESS fraction below which the parameter change is split into stages.
    max_stages: bound on the number of stages (as in `population_annealing.anneal_adaptive`, no
      stage is shorter than the rest of the path divided by the stages left).
    num_intermediate_sweeps: sweeps under each intermediate θ_α.
    resample_fn: (key, log_weights [S]) -> ancestor indices [S] (`resampling`).
    decorrelation_sweeps: see num_sweeps.

  Returns:
    (PersistentState at m, PersistentInfo).
  """
  persistent.check_state(state, m)
  before, after = persistent.split_sweeps(num_sweeps, decorrelation_sweeps)
  _check_options(target_ess, max_stages, num_intermediate_sweeps, resample_fn)
  dtype = m.dtype
  num = state.z.shape[0]
  k_before, key = jax.random.split(key)
  state = persistent.decorrelate(k_before, state, before)
  delta = jax.tree.map(jnp.subtract, m, state.params)
  target = jnp.asarray(target_ess, dtype)

  def cond(carry):
    return (carry[1] < 1.0) & (carry[0] < max_stages)

  def body(carry):
    stage, alpha, chains, log_z, comp, variance, ess_min, key = carry
    key, k_res, k_sweep = jax.random.split(key, 3)
    de = delta.energy(chains)[None]  # [1, S]: one group; E is linear in θ
    alpha_next = tempering.next_beta(alpha, stage, max_stages, de, target)
    inc, ess, chains = reweight_resample(k_res, -(alpha_next - alpha) * de, chains, resample_fn)
    log_z, comp = numerics.kahan_add(log_z, comp, inc[0])
    variance = variance + persistent.incremental_variance(ess * num, num)

    def intermediate(chains):
      m_alpha = jax.tree.map(lambda a, d: a + alpha_next * d, state.params, delta)
      # β = 1: the path interpolates the parameters, not the temperature.
      return m_alpha.run(k_sweep, chains, num_intermediate_sweeps)

    # Intermediate stages sweep under θ_α; the final sweeps under m follow the loop.
    chains = lax.cond(alpha_next < 1.0, intermediate, lambda c: c, chains)
    ess_min = jnp.minimum(ess_min, ess * num)
    return stage + 1, alpha_next, chains, log_z, comp, variance, ess_min, key

  carry = (
    jnp.zeros((), jnp.int32),
    jnp.zeros((), dtype),
    state.z,
    state.log_z,
    state.log_z_compensation,
    state.log_z_variance,
    jnp.asarray(num, dtype),
    key,
  )
  stages, _, chains, log_z, comp, variance, ess_min, key = lax.while_loop(cond, body, carry)
  chains = m.run(key, chains, after)
  new_state = PersistentState(chains, log_z, comp, variance, m)
  info = PersistentInfo(log_z, ess_min, stages, log_z - state.log_z, jnp.sqrt(variance))
  return new_state, info


def _check_options(target_ess, max_stages, num_intermediate_sweeps, resample_fn) -> None:
  if num_intermediate_sweeps < 1 or max_stages < 1:
    raise ValueError(
      "num_intermediate_sweeps and max_stages must be >= 1, got "
      f"{num_intermediate_sweeps}, {max_stages}"
    )
  tempering.check_target_ess(target_ess)
  if not callable(resample_fn):
    raise TypeError(
      f"resample_fn must be a function (key, log_weights) -> indices, e.g. "
      f"resampling.systematic or resampling.get(name); got {resample_fn!r}"
    )


def prior_sampler(
  num_samples: int = 1000,
  num_sweeps: int = 40,
  target_ess: float = 0.9,
  max_stages: int = 1000,
  num_intermediate_sweeps: int = 1,
  resample_fn: ResampleFn = resampling.systematic,
  decorrelation_sweeps: int | None = None,
) -> PriorSampler:
  """PriorSampler(init, step) of persistent PA; the arguments are `step`'s (num_samples: S).

  init(key, m) is the exact zero-parameter state annealed to m by one `step` (exact at m = 0,
  math.md §2; for other m, adaptive PA in parameter space from the uniform distribution).
  """
  persistent.check_sizes(num_samples, num_sweeps, decorrelation_sweeps)
  _check_options(target_ess, max_stages, num_intermediate_sweeps, resample_fn)
  kernel = functools.partial(
    step,
    num_sweeps=num_sweeps,
    target_ess=target_ess,
    max_stages=max_stages,
    num_intermediate_sweeps=num_intermediate_sweeps,
    resample_fn=resample_fn,
    decorrelation_sweeps=decorrelation_sweeps,
  )
  return PriorSampler(init=persistent.init_fn(kernel, num_samples), step=kernel)


def init(
  key: Array, m: Machine, num_replicas: int = 1000, num_sweeps: int = 40, **step_options
) -> PersistentState:
  """`prior_sampler(num_replicas, num_sweeps, **step_options).init(key, m)`."""
  return prior_sampler(num_replicas, num_sweeps, **step_options).init(key, m)
