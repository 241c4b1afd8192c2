"""Annealed importance sampling (AIS) of a Boltzmann machine's log partition function (§3).

The machine is any prior with a sampler (`chains`: an RBM, a graph machine, ...).
Independent chains start from the uniform distribution (β = 0, Z_0 = 2^n) and follow inverse
temperatures 0 = β_0 < β_1 < … < β_{T−1} = 1. Chain s accumulates the log weight

  log w_s = Σ_{t=1}^{T−1} −(β_t − β_{t−1}) E(z_s^{(t−1)}),

where z^{(t)} is obtained from z^{(t−1)} by block Gibbs sweeps that leave p_{β_t} invariant. Then
E[w_s] = Z/Z_0 and

  log Ẑ = log Z_0 + log mean_s w_s,

which is unbiased for Z (hence biased low, by ≈ var/2, for log Z). Standard error by the delta
method: var(mean w)/mean(w)² ≈ var_s(w)/(S·mean(w)²), the chains being independent, so stderr(log Ẑ)
= std_s(w) / (√S · mean_s(w)). It is reliable when the weights are not heavy tailed, which the
effective sample size ESS = (Σw)²/Σw² diagnoses (the calibration is tested).

Per chain, log weights are summed with Kahan compensation (`numerics.kahan_add`): with 1000
increments of ≈0.1 onto sums of order |log Z| ≈ 100, plain float32 summation would drift by
1e-4–1e-3 nats. The schedule and its checks are `tempering`'s, the sweeps the prior's
`run_with_energy`.
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


class AISResult(NamedTuple):
  """Outcome of an AIS run.

  Attributes:
    log_z: scalar estimate log Z_0 + logmeanexp(log_weights).
    stderr: scalar delta-method standard error of log_z (`numerics.log_mean_exp_stderr`; NaN for a
      single chain, which has no error bar).
    log_weights: [S] per-chain log importance weights (without log Z_0).
    ess: scalar effective sample size of the weights, in chains (S at best).
    z: [S, n] final states of the chains (a weighted sample of p, weights log_weights).
  """

  log_z: Array
  stderr: Array
  log_weights: Array
  ess: Array
  z: Array


class AISState(NamedTuple):
  """The chains part way along the schedule: `z` [S, n] at the last temperature reached, their
  energies `energy` [S], the log weights so far `log_w` [S] and their Kahan compensation `comp`."""

  z: Array
  energy: Array
  log_w: Array
  comp: Array


def init(key: Array, m: Machine, num_chains: int) -> AISState:
  """`num_chains` chains drawn from the uniform distribution (β = 0), log weights 0."""
  z = m.init_chains(key, num_chains)
  zeros = jnp.zeros((num_chains,), m.dtype)
  return AISState(z, m.energy(z), zeros, zeros)


def advance(
  m: Machine, state: AISState, keys: Array, betas_from: Array, betas_to: Array, num_sweeps: int
) -> AISState:
  """Moves the chains along part of the schedule: for each t, adds −(β'_t − β_t) E(z) to the log
  weights, then `num_sweeps` block Gibbs sweeps at β'_t (math.md §3). `keys` [T] PRNG keys,
  `betas_from` and `betas_to` [T] (β_{t−1} and β_t of the whole schedule's steps)."""

  def step(carry, inputs):
    z, e, log_w, comp = carry
    k, beta_prev, beta = inputs
    log_w, comp = numerics.kahan_add(log_w, comp, -(beta - beta_prev) * e)
    z, e = m.run_with_energy(k, z, num_sweeps, beta)
    return AISState(z, e, log_w, comp), None

  state, _ = lax.scan(step, state, (keys, betas_from, betas_to))
  return state


def finish(m: Machine, state: AISState) -> AISResult:
  """The estimate from chains that reached β = 1."""
  log_mean, stderr = numerics.log_mean_exp_stderr(state.log_w)
  log_z0 = chains.uniform_log_partition(m)
  ess = resampling.effective_sample_size(state.log_w)
  return AISResult(log_z0 + log_mean, stderr, state.log_w, ess, state.z)


def _schedule(key: Array, m: Machine, betas: Array, num_sweeps: int):
  """The initial key and, per step of the schedule, its key, β_{t−1} and β_t."""
  tempering.check_schedule(m, betas, num_sweeps)
  k_init, k_run = jax.random.split(key)
  betas = betas.astype(m.dtype)
  return k_init, (jax.random.split(k_run, betas.shape[0] - 1), betas[:-1], betas[1:])


def run(key: Array, m: Machine, betas: Array, num_chains: int, num_sweeps: int = 1) -> AISResult:
  """AIS along the schedule `betas` (math.md §3).

  Args:
    key: PRNG key.
    m: the prior (an RBM, a graph machine, ...).
    betas: [T] increasing inverse temperatures with betas[0] = 0 (the chains start uniform) and
      betas[-1] = 1 (log Z of m itself).
    num_chains: S independent chains.
    num_sweeps: block Gibbs sweeps at each intermediate temperature.

  Returns:
    AISResult.
  """
  k_init, steps = _schedule(key, m, betas, num_sweeps)
  state = advance(m, init(k_init, m, num_chains), *steps, num_sweeps)
  return finish(m, state)


_jit_init = jax.jit(init, static_argnames="num_chains")
_jit_advance = jax.jit(advance, static_argnames="num_sweeps")
_jit_finish = jax.jit(finish)


def run_with_progress(
  key: Array,
  m: Machine,
  betas: Array,
  num_chains: int,
  num_sweeps: int = 1,
  *,
  progress: Callable[[int], None],
  num_chunks: int = 20,
) -> AISResult:
  """`run`, driven from the host in `num_chunks` parts so that `progress(temperatures done)` can
  report between them. Same keys and the same arithmetic per step as `run`, hence the same result
  (tested); a chunk's length is fixed, so one program serves every chunk but a shorter last one."""
  k_init, (keys, betas_from, betas_to) = _schedule(key, m, betas, num_sweeps)
  state = _jit_init(k_init, m, num_chains)
  total = keys.shape[0]
  size = max(1, -(-total // num_chunks))
  for start in range(0, total, size):
    stop = min(start + size, total)
    state = _jit_advance(
      m, state, keys[start:stop], betas_from[start:stop], betas_to[start:stop], num_sweeps
    )
    jax.block_until_ready(state.log_w)
    progress(stop)
  return _jit_finish(m, state)


@functools.partial(jax.jit, static_argnames=("num_chains", "num_temperatures", "num_sweeps"))
def _ais_log_partition(key, m, num_chains, num_temperatures, num_sweeps):
  return run(key, m, tempering.linear_schedule(num_temperatures, m.dtype), num_chains, num_sweeps)


def ais_log_partition(
  key: Array,
  m: Machine,
  num_chains: int = 1024,
  num_temperatures: int = 1000,
  num_sweeps: int = 1,
  progress: Callable[[int], None] | None = None,
) -> AISResult:
  """log Z of `m` by AIS with the evaluation defaults of math.md §3.

  Uniform base (log Z_0 = n log 2), `num_temperatures` linearly spaced β from 0 to 1,
  `num_chains` chains, `num_sweeps` block Gibbs sweep(s) per temperature. One compiled program;
  with `progress`, `run_with_progress` instead (`progress(temperatures done)` between parts, of
  `num_temperatures − 1` steps in all), with the same result.

  Returns:
    AISResult with .log_z, .stderr, .ess, .log_weights [S], and the final chains.
  """
  if progress is None:
    return _ais_log_partition(key, m, num_chains, num_temperatures, num_sweeps)
  betas = tempering.linear_schedule(num_temperatures, m.dtype)
  return run_with_progress(key, m, betas, num_chains, num_sweeps, progress=progress)
