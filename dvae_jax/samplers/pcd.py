"""Persistent contrastive divergence (PCD) prior sampler with a tracked log Z (math.md §3).

S persistent chains z [S, n] of a prior (an RBM, a graph machine, ...) and k Gibbs sweeps per
training step (math.md §3 and §6: S = 1000, k = 40). Of the k sweeps, `decorrelation_sweeps`
(default k // 2) run under the previous parameters before the log Z reweighting and the rest under
the new ones (see `persistent` for why).

log Z tracking (for reporting the training objective; it does not affect any gradient): when the
parameters move from θ_old (those the chains were swept under) to θ_new, the chains are treated as
samples of p_old and

  log Z_new ≈ log Z_old + log mean_s exp(−E_new(z_s) + E_old(z_s)),

an importance-sampling estimate of log(Z_new/Z_old). Biases, to keep in mind when reading it: (i)
Jensen: E[log mean w] ≤ log E[w], a downward bias of ≈ (S/ESS − 1)/(2S) per step that accumulates
over steps; (ii) the chains are not exact samples of p_old (finite k, poor mixing of multimodal
models), a bias of unknown sign; (iii) unlike PA, the weights are dropped after each step, so
information lost to a low ESS is not recovered. The estimate is exact at the start (parameters 0)
and good while the parameters change slowly and the chains mix; for evaluation use AIS or PA.
"""

from __future__ import annotations

import functools

import jax
from jax import lax

from dvae_jax.samplers import persistent
from dvae_jax.samplers.persistent import Machine, PersistentInfo, PersistentState, PriorSampler

Array = jax.Array


def step(
  key: Array,
  state: PersistentState,
  m: Machine,
  num_sweeps: int = 40,
  decorrelation_sweeps: int | None = None,
) -> tuple[PersistentState, PersistentInfo]:
  """One PCD step: sweeps under state.params, log Z reweighting to m, sweeps under m.

  Args:
    key: PRNG key.
    state: PersistentState with chains z [S, n].
    m: the new parameters.
    num_sweeps: k, block Gibbs sweeps per step in total (≥ 1).
    decorrelation_sweeps: how many of them run under the old parameters before the reweighting
      (default k // 2; see `persistent`).

  Returns:
    (new PersistentState with params = m, PersistentInfo).
  """
  persistent.check_state(state, m)
  before, after = persistent.split_sweeps(num_sweeps, decorrelation_sweeps)
  k_before, k_after = jax.random.split(key)
  state = persistent.decorrelate(k_before, state, before)
  state, info = persistent.reweight(state, m)
  return state._replace(z=m.run(k_after, state.z, after)), info


def prior_sampler(
  num_samples: int = 1000, num_sweeps: int = 40, decorrelation_sweeps: int | None = None
) -> PriorSampler:
  """PriorSampler(init, step) of PCD; the arguments are `step`'s (num_samples: S chains).

  init(key, m) is the exact zero-parameter state followed by one `step` to m: exact for m = 0 (the
  start of training, math.md §2); for other m the first log Z increment is a single
  importance-sampling jump from the uniform distribution, accurate only for weak m.
  """
  persistent.check_sizes(num_samples, num_sweeps, decorrelation_sweeps)
  kernel = functools.partial(step, num_sweeps=num_sweeps, decorrelation_sweeps=decorrelation_sweeps)
  return PriorSampler(init=persistent.init_fn(kernel, num_samples), step=kernel)


def init(
  key: Array,
  m: Machine,
  num_chains: int = 1000,
  num_sweeps: int = 40,
  decorrelation_sweeps: int | None = None,
) -> PersistentState:
  """`prior_sampler(num_chains, num_sweeps, decorrelation_sweeps).init(key, m)`."""
  return prior_sampler(num_chains, num_sweeps, decorrelation_sweeps).init(key, m)


def run(
  key: Array,
  state: PersistentState,
  params_sequence: Machine,
  num_sweeps: int = 40,
  decorrelation_sweeps: int | None = None,
) -> tuple[PersistentState, PersistentInfo]:
  """Apply `step` along a sequence of parameters stacked on a leading axis [T, ...] (lax.scan).

  Returns:
    (final PersistentState, PersistentInfo with [T] fields).
  """
  kernel = functools.partial(step, num_sweeps=num_sweeps, decorrelation_sweeps=decorrelation_sweeps)

  def body(s, inputs):
    k, m = inputs
    return kernel(k, s, m)

  num = jax.tree.leaves(params_sequence)[0].shape[0]
  return lax.scan(body, state, (jax.random.split(key, num), params_sequence))
