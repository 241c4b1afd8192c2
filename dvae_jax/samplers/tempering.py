"""Annealing schedules and the one adaptive tempering rule (math.md §3).

Shared by AIS (`ais`), population annealing (`population_annealing`) and persistent population
annealing (`persistent_pa`). β here is an inverse temperature (0 = uniform, 1 = the model); the
persistent sampler uses the same rule for its parameter-space path θ_α = θ_old + α (θ_new − θ_old),
with α in place of β.

Fixed schedules: `linear_schedule` and `geometric_schedule` (β = 0 followed by a geometric sequence
from beta_min to 1).

Adaptive schedules (`next_beta`): each step is the largest Δβ that keeps the mean over groups of
ESS/P of the incremental weights exp(−Δβ · direction) at or above `target_ess` (bisection: that ESS
is non-increasing in Δβ), but never shorter than the rest of the path divided by the steps left, so
a run bounded to max_steps steps ends at 1 and, when the bound binds, degrades towards even spacing
instead of one large final jump (which cost 1.6 nats RMSE in the accuracy benchmark before the
rule).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dvae_jax.samplers import chains, resampling

Array = jax.Array

# Bisection steps for an adaptive Δβ: the step is found to 2^-30 of the remaining interval, far
# below anything that changes the ESS noticeably.
_BISECTION_STEPS = 30


def linear_schedule(num_temperatures: int, dtype=jnp.float32) -> Array:
  """[T] inverse temperatures 0, 1/(T−1), …, 1 (linearly spaced, both ends included)."""
  if num_temperatures < 2:
    raise ValueError(f"num_temperatures must be >= 2 (β = 0 and β = 1), got {num_temperatures}")
  return jnp.linspace(0.0, 1.0, num_temperatures, dtype=dtype)


def geometric_schedule(num_temperatures: int, beta_min: float = 1e-3, dtype=jnp.float32) -> Array:
  """[T] inverse temperatures 0 followed by T−1 geometrically spaced values from beta_min to 1."""
  if num_temperatures < 3:
    raise ValueError(f"a geometric schedule needs num_temperatures >= 3, got {num_temperatures}")
  if not 0.0 < beta_min < 1.0:
    raise ValueError(f"beta_min must lie in (0, 1), got {beta_min}")
  tail = jnp.geomspace(beta_min, 1.0, num_temperatures - 1, dtype=dtype)
  return jnp.concatenate([jnp.zeros((1,), dtype), tail.at[-1].set(1.0)])


def check_schedule(m, betas: Array, num_sweeps: int) -> None:
  """Validates an annealing schedule [T] (betas[0] = 0 … betas[-1] = 1) and the sweeps per step.

  The end points are checked when betas is concrete (a traced schedule passes); m is the prior.
  """
  chains.check(m)
  if betas.ndim != 1 or betas.shape[0] < 2:
    raise ValueError(
      f"betas must be a 1-D schedule with at least 2 entries, got shape {betas.shape}"
    )
  if num_sweeps < 1:
    raise ValueError(f"num_sweeps must be >= 1, got {num_sweeps}")
  if isinstance(betas, jax.core.Tracer):
    return
  ends = np.asarray(betas)[[0, -1]]  # NumPy: also inside a trace that closes over the schedule
  if ends[0] != 0.0 or ends[1] != 1.0:
    raise ValueError(
      f"betas must start at 0 (the uniform start) and end at 1, got {ends[0]} … {ends[1]}"
    )


def check_target_ess(target_ess) -> None:
  """Raises ValueError for a concrete target ESS fraction outside (0, 1) (traced values pass)."""
  if isinstance(target_ess, (int, float)) and not 0.0 < target_ess < 1.0:
    raise ValueError(f"target_ess must lie in (0, 1), got {target_ess}")


def mean_ess_fraction(log_weights: Array) -> Array:
  """Mean over the leading (group) axis of ESS/P for log weights [G, P]."""
  return jnp.mean(resampling.effective_sample_size(log_weights)) / log_weights.shape[-1]


def adaptive_step(direction: Array, max_step: Array, target_ess: Array) -> Array:
  """Largest Δ ∈ (0, max_step] with mean_ess_fraction(−Δ · direction) ≥ target_ess (bisection).

  Args:
    direction: [G, P] per-replica energy (differences); the log weights are −Δ · direction.
    max_step: scalar upper bound (the rest of the path).
    target_ess: scalar target ESS fraction in (0, 1).

  Returns:
    Scalar Δ: max_step if the whole rest of the path keeps the ESS at the target; otherwise the
    bisection's lower end, or its (tiny, positive) upper end if even that fails, so the path
    advances.
  """

  def ok(delta):
    return mean_ess_fraction(-delta * direction) >= target_ess

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    good = ok(mid)
    return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

  zero = jnp.zeros_like(max_step)
  lo, hi = lax.fori_loop(0, _BISECTION_STEPS, body, (zero, max_step))
  return jnp.where(ok(max_step), max_step, jnp.where(lo > 0, lo, hi))


def next_beta(
  beta: Array, num_done: Array, max_steps: int, direction: Array, target_ess: Array
) -> Array:
  """The adaptive schedule's next point after `beta` (module docstring).

  Args:
    beta: scalar current point of the path, in [0, 1).
    num_done: scalar int, steps already taken (< max_steps).
    max_steps: the bound on the number of steps.
    direction: [G, P] per-replica energy (differences) that weight the step: log w = −Δ · direction.
    target_ess: scalar target mean ESS fraction in (0, 1).

  Returns:
    Scalar next point in (beta, 1]: exactly 1 once the step reaches the end of the path.
  """
  one = jnp.ones_like(beta)
  even = (one - beta) / (max_steps - num_done).astype(beta.dtype)
  step = jnp.maximum(adaptive_step(direction, one - beta, target_ess), even)
  return jnp.where(step >= one - beta, one, jnp.minimum(beta + step, one))
