"""Samplers and partition-function estimators for Boltzmann machines, replacing QuPA (math.md §3).

Every sampler below takes a prior that follows ``priors.base.Prior`` (an RBM, a graph machine, a
new kind) and calls its methods (``init_chains``, ``run``, ``run_with_energy``, ``energy``,
``sample_moments``); chains are one array z [S, n] for every prior (`chains`).

Modules: `chains` (checks and log Z_0), `gibbs` (the RBM prior's two-sided block Gibbs kernels and
the random bits every sweep draws from), `ais` (annealed importance sampling),
`population_annealing`
(PA kernels `init` / `step(key, state, m, next_beta)` and the log Z estimators built on them),
`tempering` (schedules and the one adaptive tempering rule), `resampling` (systematic / residual /
multinomial, effective sample size); the persistent training-time samplers `persistent` (their
shared state and `PriorSampler`), `pcd` and `persistent_pa`, each with its `prior_sampler(...)`,
and `external` (states drawn by a host function: a dimod sampler, a QPU);
`prior_sampler` (`make_prior_sampler`: one of them by name); `diagnostics` (is a population in
equilibrium?) and `log_z_tracking` (an independent population that keeps the training log Z
honest). All are pure functions over NamedTuple states; kernels take `(key, state, m, ...)` and
the estimators `(key, m, ...)`: the PRNG key first.
"""

from dvae_jax.samplers import (
  ais,
  chains,
  diagnostics,
  external,
  gibbs,
  log_z_tracking,
  pcd,
  persistent,
  persistent_pa,
  population_annealing,
  resampling,
  tempering,
)
from dvae_jax.samplers.ais import AISResult, ais_log_partition
from dvae_jax.samplers.persistent import PersistentInfo, PersistentState, PriorSampler
from dvae_jax.samplers.population_annealing import PAInfo, PAResult, PAState, pa_log_partition
from dvae_jax.samplers.prior_sampler import make_prior_sampler

__all__ = [
  "AISResult",
  "PAInfo",
  "PAResult",
  "PAState",
  "PersistentInfo",
  "PersistentState",
  "PriorSampler",
  "ais",
  "ais_log_partition",
  "chains",
  "diagnostics",
  "external",
  "gibbs",
  "log_z_tracking",
  "make_prior_sampler",
  "pa_log_partition",
  "pcd",
  "persistent",
  "persistent_pa",
  "population_annealing",
  "resampling",
  "tempering",
]
