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
  tempering.check_schedule(m, betas, num_sweeps)
  k_init, k_run = jax.random.split(key)
  state = m.init_chains(k_init, num_chains)
  e = m.energy(state)
  zeros = jnp.zeros((num_chains,), m.dtype)
  betas = betas.astype(m.dtype)

  def step(carry, inputs):
    state, e, log_w, comp = carry
    k, beta_prev, beta = inputs
    log_w, comp = numerics.kahan_add(log_w, comp, -(beta - beta_prev) * e)
    state, e = m.run_with_energy(k, state, num_sweeps, beta)
    return (state, e, log_w, comp), None

  num_steps = betas.shape[0] - 1
  inputs = (jax.random.split(k_run, num_steps), betas[:-1], betas[1:])
  (state, _, log_w, _), _ = lax.scan(step, (state, e, zeros, zeros), inputs)
  log_mean, stderr = numerics.log_mean_exp_stderr(log_w)
  log_z0 = chains.uniform_log_partition(m)
  ess = resampling.effective_sample_size(log_w)
  return AISResult(log_z0 + log_mean, stderr, log_w, ess, state)


@functools.partial(jax.jit, static_argnames=("num_chains", "num_temperatures", "num_sweeps"))
def ais_log_partition(
  key: Array, m: Machine, num_chains: int = 1024, num_temperatures: int = 1000, num_sweeps: int = 1
) -> AISResult:
  """log Z of `m` by AIS with the evaluation defaults of math.md §3.

  Uniform base (log Z_0 = n log 2), `num_temperatures` linearly spaced β from 0 to 1,
  `num_chains` chains, `num_sweeps` block Gibbs sweep(s) per temperature.

  Returns:
    AISResult with .log_z, .stderr, .ess, .log_weights [S], and the final chains.
  """
  betas = tempering.linear_schedule(num_temperatures, m.dtype)
  return run(key, m, betas, num_chains, num_sweeps)
