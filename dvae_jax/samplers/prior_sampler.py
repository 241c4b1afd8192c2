"""Training-time prior sampler: persistent PA (the reference default) or PCD (MATH.md §3, §6).

  sampler = make_prior_sampler("pa", num_samples=1000, num_sweeps=40)
  state = sampler.init(key, rbm_params)               # PersistentState: z1, z2, log_z, ...
  state, info = sampler.step(key, state, rbm_params)  # every training step, inside jit
  log_z_train = rbm.log_partition_surrogate(rbm_params, state.z1, state.z2, state.log_z)

Both kinds are pure, jittable, with static shapes; the state is a pytree of arrays (donatable and
checkpointable) of the same structure for both kinds; `info` is a `PersistentInfo` of scalars
(log_z, ess, num_stages, log_z_increment).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from dvae_jax.samplers import pcd, population_annealing

KINDS = ("pa", "pcd")
_PA_OPTIONS = ("target_ess", "max_stages", "num_intermediate_sweeps", "resampling_scheme")


class PriorSampler(NamedTuple):
  """A pair of pure functions: init(key, m) -> state and step(key, state, m) -> (state, info)."""

  init: Callable
  step: Callable


def make_prior_sampler(
  kind: str = "pa", num_samples: int = 1000, num_sweeps: int = 40, **options
) -> PriorSampler:
  """The persistent prior sampler used by training.

  Args:
    kind: 'pa' (persistent population annealing, see `population_annealing.step`) or 'pcd'.
    num_samples: S, chains / replicas (MATH.md §6: 1000).
    num_sweeps: block Gibbs sweeps per step (MATH.md §6: 40).
    **options: for 'pa': target_ess (0.5), max_stages (1000), num_intermediate_sweeps (1),
      resampling_scheme ('systematic'). 'pcd' takes none.

  Returns:
    PriorSampler(init, step).
  """
  if num_samples < 1 or num_sweeps < 1:
    raise ValueError(f"num_samples and num_sweeps must be >= 1, got {num_samples}, {num_sweeps}")
  if kind == "pa":
    unknown = sorted(set(options) - set(_PA_OPTIONS))
    if unknown:
      raise ValueError(f"unknown options {unknown} for kind 'pa'; valid: {list(_PA_OPTIONS)}")
    step = functools.partial(population_annealing.step, num_sweeps=num_sweeps, **options)
    init = functools.partial(
      population_annealing.init, num_replicas=num_samples, num_sweeps=num_sweeps, **options
    )
  elif kind == "pcd":
    if options:
      raise ValueError(f"kind 'pcd' takes no options, got {sorted(options)}")
    step = functools.partial(pcd.step, num_sweeps=num_sweeps)
    init = functools.partial(pcd.init, num_chains=num_samples, num_sweeps=num_sweeps)
  else:
    raise ValueError(f"unknown prior sampler kind {kind!r}; choose one of {KINDS}")
  return PriorSampler(init=init, step=step)
