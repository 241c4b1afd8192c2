"""Training-time prior sampler: persistent PA (the reference default) or PCD (MATH.md §3, §6).

  sampler = make_prior_sampler("pa", num_samples=1000, num_sweeps=40)
  state = sampler.init(key, rbm_params)               # PersistentState: z1, z2, log_z, ...
  state, info = sampler.step(key, state, rbm_params)  # every training step, inside jit
  log_z_train = rbm.log_partition_surrogate(rbm_params, state.z1, state.z2, state.log_z)

Both kinds are pure, jittable, with static shapes; the state is a pytree of arrays (donatable and
checkpointable) of the same structure for both kinds; `info` is a `PersistentInfo` of scalars
(log_z, ess, num_stages, log_z_increment, log_z_stderr).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from dvae_jax.samplers import pcd, persistent, population_annealing

KINDS = ("pa", "pcd")
_PA_OPTIONS = (
  "target_ess",
  "max_stages",
  "num_intermediate_sweeps",
  "resampling_scheme",
  "decorrelation_sweeps",
)
_PCD_OPTIONS = ("decorrelation_sweeps",)


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
    **options: for both kinds decorrelation_sweeps (num_sweeps // 2: sweeps under the previous
      parameters before the log Z reweighting, see `persistent`); for 'pa' also target_ess (0.9),
      max_stages (1000), num_intermediate_sweeps (1), resampling_scheme ('systematic').

  Returns:
    PriorSampler(init, step).
  """
  if num_samples < 1 or num_sweeps < 1:
    raise ValueError(f"num_samples and num_sweeps must be >= 1, got {num_samples}, {num_sweeps}")
  valid = {"pa": _PA_OPTIONS, "pcd": _PCD_OPTIONS}.get(kind)
  if valid is None:
    raise ValueError(f"unknown prior sampler kind {kind!r}; choose one of {KINDS}")
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"unknown options {unknown} for kind {kind!r}; valid: {list(valid)}")
  persistent.split_sweeps(num_sweeps, options.get("decorrelation_sweeps"))  # validates early
  if kind == "pa":
    step = functools.partial(population_annealing.step, num_sweeps=num_sweeps, **options)
    init = functools.partial(
      population_annealing.init, num_replicas=num_samples, num_sweeps=num_sweeps, **options
    )
  else:
    step = functools.partial(pcd.step, num_sweeps=num_sweeps, **options)
    init = functools.partial(pcd.init, num_chains=num_samples, num_sweeps=num_sweeps, **options)
  return PriorSampler(init=init, step=step)
