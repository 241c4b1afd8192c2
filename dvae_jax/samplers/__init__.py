"""Samplers and partition-function estimators for RBMs, replacing QuPA (MATH.md §3).

Modules: `gibbs` (block Gibbs sweeps), `pcd` (persistent chains), `population_annealing` (PA: log Z
with error bars, and a persistent training sampler), `ais` (annealed importance sampling),
`resampling` (systematic / residual / multinomial, effective sample size), `prior_sampler`
(the training-time factory), `diagnostics` (is a population in equilibrium?), `log_z_tracking`
(an independent population that keeps the training log Z honest). All are pure functions over
NamedTuple states with the PRNG key first, except the two estimators below, which take the RBM
first.
"""

from dvae_jax.samplers import (
  ais,
  diagnostics,
  gibbs,
  log_z_tracking,
  pcd,
  persistent,
  population_annealing,
  resampling,
)
from dvae_jax.samplers.ais import AISResult, ais_log_partition
from dvae_jax.samplers.gibbs import GibbsState
from dvae_jax.samplers.persistent import PersistentInfo, PersistentState
from dvae_jax.samplers.population_annealing import PAResult, pa_log_partition
from dvae_jax.samplers.prior_sampler import PriorSampler, make_prior_sampler

__all__ = [
  "AISResult",
  "GibbsState",
  "PAResult",
  "PersistentInfo",
  "PersistentState",
  "PriorSampler",
  "ais",
  "ais_log_partition",
  "diagnostics",
  "gibbs",
  "log_z_tracking",
  "make_prior_sampler",
  "pa_log_partition",
  "pcd",
  "persistent",
  "population_annealing",
  "resampling",
]
