"""Block Gibbs sampling of an RBM at inverse temperature β (math.md §2–§3): the RBM prior's sweep.

One sweep updates the two sides in turn from their exact conditionals,

  z2 ~ Bernoulli(σ(β (b2 + Wᵀ z1))),   then   z1 ~ Bernoulli(σ(β (b1 + W z2))),

for all chains at once (two [S, n1] × [n1, n2] matmuls per sweep). It leaves p_β(z) ∝ exp(−β E(z))
invariant. States are 0/1 arrays in the dtype of the parameters, chains along the leading axis,
held as the two sides `GibbsState(z1, z2)`; ``priors.rbm.RBM`` runs these kernels on the sides of
its chains z [S, n] (the samplers see only z). The machine ``m`` is any object with the RBM's
fields b1 [n1], b2 [n2], w [n1, n2] and a ``check()``.

Random bits: with a threefry key (JAX's default) each Threefry-2x32 hash yields two words and both
are used (counters over half of the last axis; the two outputs fill its two halves). JAX's
`jax.random.bits` in its default "partitionable" mode spends one hash per word, and the flat
`threefry_2x32(key, iota(N))` form, which also uses both words, concatenates the halves of a flat
array, which stopped XLA from fusing the bits into the comparison; the form used here fuses and
was ≈1.5× faster per sweep than `jax.random.uniform < sigmoid` at 100×100 on CPU
(benchmarks/sampler_speed.py). Other key implementations (rbg, unsafe_rbg) go through
`jax.random.bits`. A unit is set when the top 24 bits of its word, read as an integer u, satisfy
u < σ(βh)·2^24: the same 2^-24 resolution as a float32 uniform, with one shift, one conversion and
one compare instead of building a float.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.random import threefry2x32_p

Array = jax.Array
RBM = Any  # priors.rbm.RBM (not imported: the RBM prior imports this module)

UNIFORM_BITS = 24
UNIFORM_SCALE = float(2**UNIFORM_BITS)


class GibbsState(NamedTuple):
  """Chains of a block Gibbs sampler: z1 [S, n1], z2 [S, n2] (0/1 in the parameters' dtype)."""

  z1: Array
  z2: Array


def random_bits(key: Array, shape: tuple[int, ...]) -> Array:
  """Uniform uint32 words of the given shape from one key (see the module docstring).

  For a threefry key, one Threefry-2x32 hash per pair of words: the counters run over
  [..., ceil(d/2)] and the hash's two output words fill the two halves of the last axis.
  """
  if jax.random.key_impl(key) != "threefry2x32" or not shape:
    return jax.random.bits(key, shape, jnp.uint32)
  *lead, last = shape
  half = (last + 1) // 2
  counter = lax.iota(jnp.uint32, math.prod(lead) * half).reshape(*lead, half)
  key_words = jax.random.key_data(key)
  y0, y1 = threefry2x32_p.bind(key_words[0], key_words[1], counter, jnp.zeros_like(counter))
  return jnp.concatenate([y0, y1], axis=-1)[..., :last]


def bernoulli_logits(key: Array, logits: Array) -> Array:
  """Independent z ~ Bernoulli(σ(logits)) as 0/1 values of logits.dtype, same shape as logits."""
  u = (random_bits(key, logits.shape) >> (32 - UNIFORM_BITS)).astype(logits.dtype)
  return (u < jax.nn.sigmoid(logits) * UNIFORM_SCALE).astype(logits.dtype)


def check_beta(beta) -> None:
  """Raises ValueError for a concrete inverse temperature outside [0, ∞) (traced values pass)."""
  if isinstance(beta, (int, float)) and not (beta >= 0 and math.isfinite(beta)):
    raise ValueError(f"inverse temperature beta must be finite and >= 0, got {beta}")


def _check_chains(state: GibbsState, m: RBM) -> None:
  if isinstance(m, GibbsState):
    raise TypeError("Gibbs kernels take (key, state, m, ...): the state comes before the RBM")
  m.check()
  z1, z2 = state.z1, state.z2
  if z1.ndim != 2 or z1.shape[1] != m.n1:
    raise ValueError(f"z1 must have shape [num_chains, n1={m.n1}], got {z1.shape}")
  if z2.ndim != 2 or z2.shape != (z1.shape[0], m.n2):
    raise ValueError(f"z2 must have shape [num_chains={z1.shape[0]}, n2={m.n2}], got {z2.shape}")


def init(key: Array, m: RBM, num_chains: int) -> GibbsState:
  """Chains drawn from the uniform distribution (the exact β = 0 distribution of every RBM).

  Args:
    key: PRNG key.
    m: the RBM (sets n1, n2 and the dtype).
    num_chains: S.

  Returns:
    GibbsState with z1 [S, n1], z2 [S, n2].
  """
  m.check()
  if num_chains < 1:
    raise ValueError(f"num_chains must be >= 1, got {num_chains}")
  k1, k2 = jax.random.split(key)
  dtype = m.w.dtype
  z1 = (random_bits(k1, (num_chains, m.n1)) >> 31).astype(dtype)
  z2 = (random_bits(k2, (num_chains, m.n2)) >> 31).astype(dtype)
  return GibbsState(z1, z2)


def _sweep(key: Array, m: RBM, z1: Array, beta) -> tuple[Array, Array, Array]:
  """One sweep; returns z1' [S, n1], z2' [S, n2] and the field b1 + W z2' [S, n1]."""
  k2, k1 = jax.random.split(key)
  h2 = m.b2 + z1 @ m.w
  z2 = bernoulli_logits(k2, beta * h2)
  h1 = m.b1 + z2 @ m.w.T
  return bernoulli_logits(k1, beta * h1), z2, h1


def sweep_with_energy(key: Array, state: GibbsState, m: RBM, beta=1.0) -> tuple[GibbsState, Array]:
  """One block Gibbs sweep at inverse temperature beta, also returning E(z1', z2') at β = 1.

  The energy comes for free from the field of the second half-step: E = −z1·(b1 + W z2) − b2·z2.
  Annealing samplers (AIS, PA) need it for their weights. No input checks (an inner-loop kernel).

  Args:
    key: PRNG key.
    state: GibbsState, z1 [S, n1] (its z2 does not enter: it is redrawn first).
    m: the RBM.
    beta: scalar inverse temperature β ≥ 0 (may be traced).

  Returns:
    (GibbsState(z1 [S, n1], z2 [S, n2]), energy [S]) after the sweep.
  """
  z1, z2, h1 = _sweep(key, m, state.z1, beta)
  return GibbsState(z1, z2), -jnp.sum(z1 * h1, axis=-1) - z2 @ m.b2


def sweep(key: Array, state: GibbsState, m: RBM, beta=1.0) -> GibbsState:
  """One block Gibbs sweep: z2 ~ σ(β(b2 + Wᵀz1)), then z1 ~ σ(β(b1 + W z2)) (math.md §2).

  Args:
    key: PRNG key.
    state: GibbsState, z1 [S, n1], z2 [S, n2] (z2 is redrawn first, so its value does not
      influence the result).
    m: the RBM.
    beta: inverse temperature β ≥ 0 (a Python float or a traced scalar).

  Returns:
    GibbsState(z1 [S, n1], z2 [S, n2]).
  """
  _check_chains(state, m)
  check_beta(beta)
  return sweep_with_energy(key, state, m, beta)[0]


def run(key: Array, state: GibbsState, m: RBM, num_sweeps: int, beta=1.0) -> GibbsState:
  """num_sweeps block Gibbs sweeps at inverse temperature beta, in a `lax.scan`.

  Args:
    key: PRNG key (split once per sweep).
    state: GibbsState with z1 [S, n1], z2 [S, n2].
    m: the RBM.
    num_sweeps: number of sweeps (static, ≥ 0).
    beta: inverse temperature β ≥ 0.

  Returns:
    The GibbsState after the sweeps.
  """
  _check_chains(state, m)
  check_beta(beta)
  if num_sweeps < 0:
    raise ValueError(f"num_sweeps must be >= 0, got {num_sweeps}")
  if num_sweeps == 0:
    return state

  def body(carry, k):
    z1, z2, _ = _sweep(k, m, carry.z1, beta)
    return GibbsState(z1, z2), None

  state, _ = lax.scan(body, state, jax.random.split(key, num_sweeps))
  return state


def run_with_energy(
  key: Array, state: GibbsState, m: RBM, num_sweeps: int, beta=1.0
) -> tuple[GibbsState, Array]:
  """num_sweeps (≥ 1) sweeps at β, returning the final state and its energies [S] at β = 1.

  The annealing samplers' move step (AIS, PA): like `run`, but the energy of the final state comes
  from its last sweep. No input checks (the callers validate once, outside their loops).
  """

  def body(carry, k):
    return sweep_with_energy(k, carry[0], m, beta), None

  energy = jnp.zeros(state.z1.shape[:1], state.z1.dtype)
  (state, energy), _ = lax.scan(body, (state, energy), jax.random.split(key, num_sweeps))
  return state, energy
