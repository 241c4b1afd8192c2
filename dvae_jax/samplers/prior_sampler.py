"""Training-time prior sampler by name: persistent PA (the default) or PCD (math.md §3, §6).

  sampler = make_prior_sampler("pa", num_samples=1000, num_sweeps=40)
  state = sampler.init(key, prior)                # PersistentState: z [S, n], log_z, ...
  state, info = sampler.step(key, state, prior)   # every training step, inside jit
  log_z_train = prior.training_log_partition(state.z, state.log_z)

Both kinds are pure, jittable, with static shapes; the state is a pytree of arrays (donatable and
checkpointable) of the same structure for both kinds; `info` is a `PersistentInfo` of scalars
(log_z, ess, num_stages, log_z_increment, log_z_stderr). The factory only picks the module: each
sampler module offers its own `prior_sampler(num_samples, num_sweeps, ...)` with explicit keyword
arguments (`persistent_pa.prior_sampler`, `pcd.prior_sampler`), which the options are passed to.
"""

from __future__ import annotations

import inspect

from dvae_jax.samplers import pcd, persistent_pa
from dvae_jax.samplers.persistent import PriorSampler

FACTORIES = {"pa": persistent_pa.prior_sampler, "pcd": pcd.prior_sampler}
KINDS = tuple(FACTORIES)


def make_prior_sampler(
  kind: str = "pa", num_samples: int = 1000, num_sweeps: int = 40, **options
) -> PriorSampler:
  """The persistent prior sampler used by training: `FACTORIES[kind](num_samples, num_sweeps,
  **options)`.

  Args:
    kind: 'pa' (persistent population annealing, `persistent_pa`) or 'pcd'.
    num_samples: S, chains / replicas (math.md §6: 1000).
    num_sweeps: block Gibbs sweeps per step (math.md §6: 40).
    **options: the keyword arguments of the kind's `prior_sampler`: for both kinds
      decorrelation_sweeps (num_sweeps // 2: sweeps under the previous parameters before the log Z
      reweighting, see `persistent`); for 'pa' also target_ess (0.9), max_stages (1000),
      num_intermediate_sweeps (1), resample_fn (`resampling.systematic`).

  Returns:
    PriorSampler(init, step).
  """
  factory = FACTORIES.get(kind)
  if factory is None:
    raise ValueError(f"unknown prior sampler kind {kind!r}; choose one of {KINDS}")
  # A clear error naming the kind, rather than Python's TypeError from the call below.
  valid = [
    p for p in inspect.signature(factory).parameters if p not in ("num_samples", "num_sweeps")
  ]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"unknown options {unknown} for kind {kind!r}; valid: {valid}")
  return factory(num_samples=num_samples, num_sweeps=num_sweeps, **options)
