"""What the samplers need of a prior besides its methods: checks of the chains and log Z_0.

Every sampler takes a prior that follows the contract of ``dvae_jax.priors.base.Prior`` (an RBM, a
graph machine, a factorial prior or a new kind) and holds its chains as one array z [S, n]
(0/1 in ``m.dtype``, unit k of the latent vector in column k). Sweeps are ``m.run`` /
``m.run_with_energy`` (each kind's own block Gibbs sweep at inverse temperature β, leaving
p_β(z) ∝ exp(−β E(z)) invariant), energies ``m.energy``; the chains start from ``m.init_chains``,
the exact β = 0 (uniform) distribution, whose log Z_0 = n log 2 (`uniform_log_partition`).
"""

from __future__ import annotations

import math

import jax

Array = jax.Array


def check(m) -> None:
  """Raises ValueError for a prior with inconsistent parameter shapes; TypeError for a sampler
  state or anything else without the prior contract's ``check``."""
  check_fn = getattr(m, "check", None)
  if not callable(check_fn):
    raise TypeError(
      f"expected a prior (priors.base.Prior: an RBM, a graph machine, ...), got "
      f"{type(m).__module__}.{type(m).__qualname__}; sampler kernels take (key, state, m, ...), "
      "the state before the prior"
    )
  check_fn()


def check_chains(z: Array, m, what: str = "chains") -> None:
  """Raises ValueError unless z is [S, n] for the prior m's n units."""
  check(m)
  n = m.num_units
  if z.ndim != 2 or z.shape[1] != n:
    raise ValueError(
      f"{what} have shape {tuple(z.shape)}, which does not match the prior's {n} units: "
      f"expected [S, {n}]"
    )


def uniform_log_partition(m) -> float:
  """log Z_0 = n log 2 of the all-zero machine (the β = 0 end of every annealing path)."""
  return m.num_units * math.log(2.0)
