"""Samplers and partition-function estimators for Boltzmann machines, replacing QuPA (MATH.md §3).

Every sampler below takes either an `rbm.RBM` or a graph `graphs.BoltzmannMachine`; `machines`
dispatches on the type and states the chains' z1/z2 layout for both (a graph machine's units are
all in z1, z2 is [S, 0]).

Modules: `machines` (the two machine types behind one interface), `gibbs` (block Gibbs sweeps of
an RBM), `ais` (annealed importance sampling), `population_annealing`
(PA kernels `init` / `step(key, state, m, next_beta)` and the log Z estimators built on them),
`tempering` (schedules and the one adaptive tempering rule), `resampling` (systematic / residual /
multinomial, effective sample size); the persistent training-time samplers `persistent` (their
shared state and `PriorSampler`), `pcd` and `persistent_pa`, each with its `prior_sampler(...)`,
and `external` (states drawn by a host function: a dimod sampler, a QPU);
`prior_sampler` (`make_prior_sampler`: one of them by name); `diagnostics` (is a population in
equilibrium?) and `log_z_tracking` (an independent population that keeps the training log Z
honest). All are pure functions over NamedTuple states; kernels take `(key, state, m, ...)`, the
PRNG key first, except the two estimators below, which take the machine first.
"""

from dvae_jax.samplers import (
  ais,
  diagnostics,
  external,
  gibbs,
  log_z_tracking,
  machines,
  pcd,
  persistent,
  persistent_pa,
  population_annealing,
  resampling,
  tempering,
)
from dvae_jax.samplers.ais import AISResult, ais_log_partition
from dvae_jax.samplers.gibbs import GibbsState
from dvae_jax.samplers.persistent import PersistentInfo, PersistentState, PriorSampler
from dvae_jax.samplers.population_annealing import PAInfo, PAResult, PAState, pa_log_partition
from dvae_jax.samplers.prior_sampler import make_prior_sampler

__all__ = [
  "AISResult",
  "GibbsState",
  "PAInfo",
  "PAResult",
  "PAState",
  "PersistentInfo",
  "PersistentState",
  "PriorSampler",
  "ais",
  "ais_log_partition",
  "diagnostics",
  "external",
  "gibbs",
  "log_z_tracking",
  "machines",
  "make_prior_sampler",
  "pa_log_partition",
  "pcd",
  "persistent",
  "persistent_pa",
  "population_annealing",
  "resampling",
  "tempering",
]
