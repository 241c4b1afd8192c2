"""Resampling of weighted populations and the effective sample size (math.md §3).

Each scheme maps normalised-or-not log weights [N] to ancestor indices [M] (M = N by default) such
that the expected number of copies of particle i is M·w_i with w = softmax(log_weights): all three
are unbiased. They differ in variance: multinomial (M independent draws) > residual (⌊M w_i⌋
deterministic copies plus multinomial draws for the remainder) ≳ systematic (one uniform, M evenly
spaced points, each count within one of M·w_i). Shapes are static, so the functions jit and vmap
(e.g. over groups).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def normalized_weights(log_weights: Array) -> Array:
  """w = softmax(log_weights) along the last axis (−inf log weights get weight 0)."""
  return jax.nn.softmax(log_weights, axis=-1)


def effective_sample_size(log_weights: Array) -> Array:
  """ESS = (Σ w)² / Σ w², computed stably from log weights along the last axis.

  Equals N for equal weights and 1 when one weight dominates. Returns [...] for log weights
  [..., N].
  """
  log_sum = jax.nn.logsumexp(log_weights, axis=-1)
  log_sum_sq = jax.nn.logsumexp(2.0 * log_weights, axis=-1)
  return jnp.exp(2.0 * log_sum - log_sum_sq)


def _check(log_weights: Array, num_samples: int | None) -> int:
  if log_weights.ndim != 1:
    raise ValueError(
      f"log_weights must be 1-D [N] (vmap for batches), got shape {log_weights.shape}"
    )
  num = log_weights.shape[0] if num_samples is None else num_samples
  if num < 1:
    raise ValueError(f"num_samples must be >= 1, got {num}")
  return num


def _inverse_cdf(cumulative: Array, points: Array) -> Array:
  """Index of the first cumulative weight above each point in [0, 1) (cumulative ends at 1)."""
  idx = jnp.searchsorted(cumulative, points, side="right")
  # Rounding can leave cumulative[-1] a hair below a point close to 1.
  return jnp.minimum(idx, cumulative.shape[0] - 1).astype(jnp.int32)


def _cumulative(log_weights: Array) -> Array:
  c = jnp.cumsum(normalized_weights(log_weights))
  return c / c[-1]


def multinomial(key: Array, log_weights: Array, num_samples: int | None = None) -> Array:
  """M independent draws from Categorical(w). Returns int32 ancestor indices [M]."""
  num = _check(log_weights, num_samples)
  return jax.random.categorical(key, log_weights, shape=(num,)).astype(jnp.int32)


def systematic(key: Array, log_weights: Array, num_samples: int | None = None) -> Array:
  """Systematic resampling: points (U + k)/M, k = 0..M−1, one U ~ Uniform[0, 1).

  Each point lands in particle i with probability M·w_i summed over points, so E[count_i] = M w_i,
  and count_i ∈ {⌊M w_i⌋, ⌈M w_i⌉} up to rounding. Returns sorted int32 indices [M].
  """
  num = _check(log_weights, num_samples)
  u = jax.random.uniform(key, (), dtype=log_weights.dtype)
  points = (u + jnp.arange(num, dtype=log_weights.dtype)) / num
  return _inverse_cdf(_cumulative(log_weights), points)


def residual(key: Array, log_weights: Array, num_samples: int | None = None) -> Array:
  """Residual resampling: ⌊M w_i⌋ copies of particle i, the R = M − Σ⌊M w_i⌋ others multinomial.

  The remainder is drawn from Categorical((M w_i − ⌊M w_i⌋)/R), so E[count_i] = ⌊M w_i⌋ +
  R (M w_i − ⌊M w_i⌋)/R = M w_i. Returns int32 indices [M]: the deterministic copies first.
  """
  num = _check(log_weights, num_samples)
  scaled = num * normalized_weights(log_weights)
  copies = jnp.floor(scaled)
  remainder = scaled - copies
  copies = copies.astype(jnp.int32)
  # Slot k < Σ copies belongs to the particle whose cumulative copy count first exceeds k.
  ends = jnp.cumsum(copies)
  slots = jnp.arange(num, dtype=jnp.int32)
  deterministic = jnp.minimum(
    jnp.searchsorted(ends, slots, side="right"), log_weights.shape[0] - 1
  ).astype(jnp.int32)
  log_rem = jnp.where(remainder > 0, jnp.log(jnp.maximum(remainder, 1e-30)), -jnp.inf)
  # If the remainders all vanish (every M w_i an integer up to rounding) no slot needs a draw.
  log_rem = jnp.where(jnp.any(remainder > 0), log_rem, 0.0)
  drawn = jax.random.categorical(key, log_rem, shape=(num,)).astype(jnp.int32)
  return jnp.where(slots < ends[-1], deterministic, drawn)


RESAMPLERS: dict[str, Callable[..., Array]] = {
  "multinomial": multinomial,
  "systematic": systematic,
  "residual": residual,
}


def get(name: str) -> Callable[..., Array]:
  """The resampling function called `name` ('systematic', 'residual' or 'multinomial')."""
  try:
    return RESAMPLERS[name]
  except KeyError:
    raise ValueError(
      f"unknown resampling scheme {name!r}; choose one of {sorted(RESAMPLERS)}"
    ) from None
