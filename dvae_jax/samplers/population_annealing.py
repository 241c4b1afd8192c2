"""Population annealing (PA) of a Boltzmann machine: log Z with error bars and exact-in-the-limit
samples (math.md §3). The machine is any prior with a sampler (`chains`: an RBM, a graph machine,
...); the replicas are z [S, n].

A population of S replicas starts uniform (β = 0, exact; log Z_0 = n log 2). For each step β → β'
of the schedule:

  1. reweight: log w_s = −(β' − β) E(z_s); log Z += log mean_s w_s;
  2. resample S replicas with probabilities ∝ w_s (systematic by default, see `resampling`);
  3. run block Gibbs sweeps at β'.

The final population approximates p(z) = e^{−E}/Z and

  log Ẑ = log Z_0 + Σ_t log mean_s exp(−(β_{t+1} − β_t) E_s)

is the standard SMC estimator: Ẑ is unbiased for Z for any population size (Del Moral 2004).

Standard error. Resampling couples the replicas (duplicates share their future), so the spread of
the incremental weights underestimates the error. Instead the population is split into G independent
groups of S/G replicas that are reweighted and resampled separately (they share the sweeps' batched
matmuls and, in the adaptive mode, the schedule). Each group gives an unbiased Ẑ_g; the result is
their mean Ẑ = mean_g Ẑ_g (still unbiased, and log Ẑ = logmeanexp_g log Ẑ_g) with the delta-method
error

  stderr(log Ẑ) = std_g(Ẑ_g) / (√G · Ẑ),

which uses only the independence of the groups (calibration checked in tests/samplers/test_pa.py).
With G = 1 no error bar is available and stderr is NaN.

Kernels, in blackjax's shape (smc/base.py, smc/tempered.py, smc/adaptive_tempered.py): `init`
gives a `PAState` (the population at β = 0 with its per-group running log Z), and
`step(key, state, m, next_beta)` is one reweight → resample → sweep move from state.beta to
next_beta, returning `(PAState, PAInfo)`. A fixed schedule ('linear', 'geometric', see `tempering`)
is `anneal` = `lax.scan(step)` over it; 'adaptive' is `anneal_adaptive` = a `lax.while_loop` that
asks `tempering.next_beta` (the one tempering rule, shared with the persistent sampler) for each
next β, bounded by num_temperatures − 1 steps. `pa_log_partition` picks one of them.

The persistent training sampler (annealing in parameter space) is `persistent_pa`; it shares
`reweight_resample` and the tempering rule with this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from dvae_jax import numerics
from dvae_jax.samplers import chains, resampling, tempering

Array = jax.Array
Machine = Any  # a prior (priors.base.Prior)
ResampleFn = Callable[[Array, Array], Array]

SCHEDULES = ("linear", "geometric", "adaptive")


class PAState(NamedTuple):
  """A population annealing population at inverse temperature `beta`.

  Attributes:
    z: [S, n] replicas; replica s is in group s // (S/G).
    energy: [S] energy E(z) at β = 1 of each replica (the next reweighting needs it).
    beta: scalar inverse temperature the population is equilibrated at.
    log_z_ratio: [G] running estimate of log(Z_β / Z_0) of each independent group.
    log_z_compensation: [G] Kahan compensation of log_z_ratio (`numerics.kahan_add`).
  """

  z: Array
  energy: Array
  beta: Array
  log_z_ratio: Array
  log_z_compensation: Array


class PAInfo(NamedTuple):
  """What one `step` did.

  Attributes:
    ess: scalar mean over groups of ESS/(S/G) of the step's incremental weights.
    log_z_increment: [G] log mean exp of each group's incremental log weights.
  """

  ess: Array
  log_z_increment: Array


class PAResult(NamedTuple):
  """Outcome of a population annealing run.

  Attributes:
    log_z: scalar log Ẑ = logmeanexp over groups of the group estimates.
    stderr: scalar standard error of log_z from the spread of the G independent groups (NaN if
      G = 1).
    log_z_groups: [G] per-group estimates.
    num_steps: scalar int32, number of reweighting steps taken (temperatures − 1).
    betas: [num_temperatures] the schedule used, padded with 1.0 after the last step.
    ess: [num_temperatures − 1] mean over groups of ESS/(S/G) at each step, NaN after the last step.
    ess_min: scalar, the smallest entry of ess.
    z: [S, n] final population (equally weighted samples of p); replica s is in group s // (S/G).
  """

  log_z: Array
  stderr: Array
  log_z_groups: Array
  num_steps: Array
  betas: Array
  ess: Array
  ess_min: Array
  z: Array


def reweight_resample(
  key: Array, log_weights: Array, particles, resample_fn: ResampleFn
) -> tuple[Array, Array, object]:
  """Reweights and resamples each group of a population (steps 1–2 of the module docstring).

  Args:
    key: PRNG key (split once per group).
    log_weights: [G, P] incremental log weights; group g holds replicas g·P … (g + 1)·P − 1.
    particles: a pytree of arrays with leading axis S = G·P (e.g. the chains z [S, n]).
    resample_fn: (key, log_weights [P]) -> ancestor indices [P], e.g. `resampling.systematic`.

  Returns:
    (log mean exp of each group's weights [G], mean over groups of ESS/P, the resampled particles
    [S, ...] with every replica drawn from its own group).
  """
  num_groups, per_group = log_weights.shape
  idx = jax.vmap(resample_fn)(jax.random.split(key, num_groups), log_weights)
  rows = (idx + per_group * jnp.arange(num_groups, dtype=idx.dtype)[:, None]).reshape(-1)
  return (
    numerics.log_mean_exp(log_weights, axis=-1),
    tempering.mean_ess_fraction(log_weights),
    jax.tree.map(lambda x: x[rows], particles),
  )


def group_energies(state: PAState) -> Array:
  """[G, P] energies of the replicas, by group."""
  return state.energy.reshape(state.log_z_ratio.shape[0], -1)


def init(key: Array, m: Machine, num_replicas: int, num_groups: int = 16) -> PAState:
  """The exact β = 0 population: S uniform replicas in G groups, log(Z_0 / Z_0) = 0.

  Args:
    key: PRNG key.
    m: the prior (sets the chains' shapes, the dtype and the energies).
    num_replicas: S, a positive multiple of num_groups.
    num_groups: G independent groups (for the standard error).

  Returns:
    PAState at β = 0.
  """
  if num_groups < 1 or num_replicas % num_groups:
    raise ValueError(
      f"num_replicas={num_replicas} must be a positive multiple of num_groups={num_groups}"
    )
  z = m.init_chains(key, num_replicas)
  energy = m.energy(z)
  dtype = m.dtype
  zeros = jnp.zeros((num_groups,), dtype)
  return PAState(z, energy, jnp.zeros((), dtype), zeros, zeros)


def step(
  key: Array,
  state: PAState,
  m: Machine,
  next_beta: Array,
  num_sweeps: int = 1,
  resample_fn: ResampleFn = resampling.systematic,
) -> tuple[PAState, PAInfo]:
  """One population annealing step from state.beta to next_beta (module docstring, steps 1–3).

  Args:
    key: PRNG key.
    state: PAState at β = state.beta.
    m: the prior (an RBM, a graph machine, ...).
    next_beta: scalar next inverse temperature (may be traced).
    num_sweeps: block Gibbs sweeps at next_beta after the resampling.
    resample_fn: (key, log_weights [P]) -> ancestor indices [P] (`resampling`).

  Returns:
    (PAState at next_beta, PAInfo).
  """
  k_res, k_sweep = jax.random.split(key)
  log_w = -(next_beta - state.beta) * group_energies(state)
  increments, ess, z = reweight_resample(k_res, log_w, state.z, resample_fn)
  log_z, comp = numerics.kahan_add(state.log_z_ratio, state.log_z_compensation, increments)
  z, energy = m.run_with_energy(k_sweep, z, num_sweeps, next_beta)
  return PAState(z, energy, next_beta, log_z, comp), PAInfo(ess, increments)


def result(m: Machine, state: PAState, num_steps, betas: Array, ess: Array) -> PAResult:
  """The PAResult of a population annealed to β = 1 (log Z_0 added; stderr from the groups)."""
  log_z0 = chains.uniform_log_partition(m)
  log_mean, stderr = numerics.log_mean_exp_stderr(state.log_z_ratio)
  return PAResult(
    log_z=log_z0 + log_mean,
    stderr=stderr,
    log_z_groups=log_z0 + state.log_z_ratio,
    num_steps=jnp.asarray(num_steps, jnp.int32),
    betas=betas,
    ess=ess,
    ess_min=jnp.nanmin(ess),
    z=state.z,
  )


def anneal(
  key: Array,
  m: Machine,
  betas: Array,
  num_replicas: int,
  num_groups: int = 16,
  num_sweeps: int = 1,
  resample_fn: ResampleFn = resampling.systematic,
) -> PAResult:
  """Population annealing along a fixed schedule: `lax.scan` of `step` over betas[1:].

  Args:
    key: PRNG key.
    m: the prior (an RBM, a graph machine, ...).
    betas: [T] increasing, betas[0] = 0 (uniform start), betas[-1] = 1.
    num_replicas: S, a multiple of num_groups.
    num_groups: G independent sub-populations (for the standard error).
    num_sweeps: block Gibbs sweeps after each resampling.
    resample_fn: (key, log_weights [P]) -> ancestor indices [P] (`resampling`).

  Returns:
    PAResult.
  """
  tempering.check_schedule(m, betas, num_sweeps)
  k_init, k_run = jax.random.split(key)
  state = init(k_init, m, num_replicas, num_groups)
  betas = betas.astype(m.dtype)
  kernel = functools.partial(step, m=m, num_sweeps=num_sweeps, resample_fn=resample_fn)

  def body(state, inputs):
    k, next_beta = inputs
    state, info = kernel(k, state, next_beta=next_beta)
    return state, info.ess

  num_steps = betas.shape[0] - 1
  state, ess = lax.scan(body, state, (jax.random.split(k_run, num_steps), betas[1:]))
  return result(m, state, num_steps, betas, ess)


def anneal_adaptive(
  key: Array,
  m: Machine,
  num_replicas: int,
  max_temperatures: int = 1000,
  target_ess: float = 0.99,
  num_groups: int = 16,
  num_sweeps: int = 1,
  resample_fn: ResampleFn = resampling.systematic,
) -> PAResult:
  """Population annealing with an adaptive schedule: `lax.while_loop` of `tempering.next_beta`
  and `step`.

  Args:
    key: PRNG key.
    m: the prior (an RBM, a graph machine, ...).
    num_replicas: S, a multiple of num_groups.
    max_temperatures: bound on the number of temperatures including β = 0 (so at most
      max_temperatures − 1 steps; no step is shorter than the rest of the path divided by the
      steps left, so the last allowed one ends at β = 1).
    target_ess: ESS fraction in (0, 1) each step should keep (mean over groups).
    num_groups, num_sweeps, resample_fn: as in `anneal`.

  Returns:
    PAResult; result.betas[:result.num_steps + 1] is the schedule that was chosen.
  """
  chains.check(m)
  if max_temperatures < 2:
    raise ValueError(f"max_temperatures must be >= 2, got {max_temperatures}")
  tempering.check_target_ess(target_ess)
  if num_sweeps < 1:
    raise ValueError(f"num_sweeps must be >= 1, got {num_sweeps}")
  dtype = m.dtype
  k_init, k_run = jax.random.split(key)
  state = init(k_init, m, num_replicas, num_groups)
  max_steps = max_temperatures - 1
  target = jnp.asarray(target_ess, dtype)
  kernel = functools.partial(step, m=m, num_sweeps=num_sweeps, resample_fn=resample_fn)

  def cond(carry):
    t, state = carry[0], carry[1]
    return (state.beta < 1.0) & (t < max_steps)

  def body(carry):
    t, state, betas, ess_trace, key = carry
    key, k = jax.random.split(key)
    next_beta = tempering.next_beta(state.beta, t, max_steps, group_energies(state), target)
    state, info = kernel(k, state, next_beta=next_beta)
    return t + 1, state, betas.at[t + 1].set(next_beta), ess_trace.at[t].set(info.ess), key

  carry = (
    jnp.zeros((), jnp.int32),
    state,
    jnp.ones((max_temperatures,), dtype).at[0].set(0.0),
    jnp.full((max_steps,), jnp.nan, dtype),
    k_run,
  )
  t, state, betas, ess_trace, _ = lax.while_loop(cond, body, carry)
  return result(m, state, t, betas, ess_trace)


@functools.partial(
  jax.jit,
  static_argnames=(
    "num_replicas",
    "num_temperatures",
    "schedule",
    "num_groups",
    "num_sweeps",
    "resampling_scheme",
  ),
)
def pa_log_partition(
  key: Array,
  m: Machine,
  num_replicas: int = 1024,
  num_temperatures: int = 1000,
  schedule: str = "linear",
  num_groups: int = 16,
  num_sweeps: int = 1,
  target_ess: float = 0.99,
  beta_min: float = 1e-3,
  resampling_scheme: str = "systematic",
) -> PAResult:
  """log Z of `m` by population annealing.

  Args:
    key: PRNG key.
    m: the prior (an RBM, a graph machine, ...).
    num_replicas: population size S (a multiple of num_groups).
    num_temperatures: T, temperatures including β = 0 and β = 1 (the maximum for 'adaptive').
    schedule: 'linear', 'geometric' (with beta_min) or 'adaptive' (with target_ess).
    num_groups: G independent sub-populations that give the standard error.
    num_sweeps: block Gibbs sweeps per temperature.
    target_ess: ESS fraction kept by the adaptive schedule.
    beta_min: first non-zero β of the geometric schedule.
    resampling_scheme: 'systematic', 'residual' or 'multinomial' (`resampling.get`).

  Returns:
    PAResult with .log_z, .stderr, .ess (per step), .ess_min, .num_steps and the final population.
  """
  resample_fn = resampling.get(resampling_scheme)
  if schedule == "adaptive":
    return anneal_adaptive(
      key, m, num_replicas, num_temperatures, target_ess, num_groups, num_sweeps, resample_fn
    )
  if schedule == "linear":
    betas = tempering.linear_schedule(num_temperatures, m.dtype)
  elif schedule == "geometric":
    betas = tempering.geometric_schedule(num_temperatures, beta_min, m.dtype)
  else:
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
  return anneal(key, m, betas, num_replicas, num_groups, num_sweeps, resample_fn)
