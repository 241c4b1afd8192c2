"""Restricted (bipartite) Boltzmann machine: energy, free energy, exact log partition (MATH.md §2).

An RBM over z = (z1, z2), z1 ∈ {0,1}^n1, z2 ∈ {0,1}^n2, with

  E(z1, z2) = −b1ᵀz1 − b2ᵀz2 − z1ᵀ W z2,      p(z) = exp(−E(z)) / Z.

The parameters are a plain NamedTuple pytree (`RBM`), so they can be differentiated, jitted, vmapped
and checkpointed like any other array tree. Samples are arrays of 0/1 in the dtype of the
parameters.

Exact enumeration (`exact_log_partition`, `exact_moments`) sums out the larger side analytically and
enumerates the 2^min(n1, n2) states of the smaller one in chunks, so machines with min(n1, n2) ≤ 24
fit in memory; it is the gold standard the samplers are tested against.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# Enumeration beyond 2^30 states of the smaller side would take hours and overflows int32 indices.
MAX_ENUMERATED_UNITS = 30


class RBM(NamedTuple):
  """Parameters of a bipartite Boltzmann machine (MATH.md §2).

  Attributes:
    b1: [n1] biases of the first side z1.
    b2: [n2] biases of the second side z2.
    w: [n1, n2] couplings; E contains −z1ᵀ W z2.
  """

  b1: Array
  b2: Array
  w: Array

  @property
  def n1(self) -> int:
    return self.b1.shape[-1]

  @property
  def n2(self) -> int:
    return self.b2.shape[-1]


class Moments(NamedTuple):
  """First and mixed second moments of an RBM: E[z1] [n1], E[z2] [n2], E[z1 z2ᵀ] [n1, n2].

  They are the gradient of log Z with respect to (b1, b2, w), in the same order as `RBM`'s fields.
  """

  z1: Array
  z2: Array
  z1z2: Array


def init_rbm(n1: int, n2: int, dtype=jnp.float32) -> RBM:
  """All-zero parameters (MATH.md §2: they start at 0, where p is uniform, log Z = n log 2)."""
  if n1 < 1 or n2 < 1:
    raise ValueError(f"an RBM needs n1 >= 1 and n2 >= 1 units, got n1={n1}, n2={n2}")
  return RBM(jnp.zeros((n1,), dtype), jnp.zeros((n2,), dtype), jnp.zeros((n1, n2), dtype))


def check_rbm(m: RBM) -> None:
  """Raises ValueError unless b1 [n1], b2 [n2], w [n1, n2] have consistent shapes."""
  if m.b1.ndim != 1 or m.b2.ndim != 1 or m.w.ndim != 2:
    raise ValueError(
      f"RBM expects b1 [n1], b2 [n2], w [n1, n2]; "
      f"got shapes {m.b1.shape}, {m.b2.shape}, {m.w.shape}"
    )
  if m.w.shape != (m.b1.shape[0], m.b2.shape[0]):
    raise ValueError(
      f"RBM weight shape {m.w.shape} does not match the biases: "
      f"expected {(m.b1.shape[0], m.b2.shape[0])}"
    )


def _check_states(m: RBM, z1: Array | None, z2: Array | None) -> None:
  check_rbm(m)
  if z1 is not None and z1.shape[-1:] != (m.n1,):
    raise ValueError(f"z1 must have trailing dimension n1={m.n1}, got shape {z1.shape}")
  if z2 is not None and z2.shape[-1:] != (m.n2,):
    raise ValueError(f"z2 must have trailing dimension n2={m.n2}, got shape {z2.shape}")


def transpose(m: RBM) -> RBM:
  """The machine with its sides swapped: energy(transpose(m), z2, z1) = energy(m, z1, z2)."""
  return RBM(m.b2, m.b1, m.w.T)


def energy(m: RBM, z1: Array, z2: Array) -> Array:
  """E(z1, z2) = −b1·z1 − b2·z2 − z1ᵀ W z2 (MATH.md §2).

  Args:
    m: the RBM.
    z1: [..., n1] states of the first side.
    z2: [..., n2] states of the second side; leading batch dimensions broadcast against z1's.

  Returns:
    [...] energies.
  """
  _check_states(m, z1, z2)
  coupling = jnp.sum(jnp.matmul(z1, m.w) * z2, axis=-1)
  return -(jnp.matmul(z1, m.b1) + jnp.matmul(z2, m.b2) + coupling)


def free_energy(m: RBM, z1: Array) -> Array:
  """F(z1) = −b1·z1 − Σ_j softplus(b2_j + (z1ᵀW)_j), z2 summed out: p(z1) = e^{−F(z1)}/Z (§2).

  Args:
    m: the RBM.
    z1: [..., n1] states (any real values are accepted; the formula is the binary-state one).

  Returns:
    [...] free energies.
  """
  _check_states(m, z1, None)
  return -jnp.matmul(z1, m.b1) - jnp.sum(jax.nn.softplus(m.b2 + jnp.matmul(z1, m.w)), axis=-1)


def log_prob(m: RBM, z1: Array, z2: Array, log_z: Array) -> Array:
  """log p(z1, z2) = −E(z1, z2) − log Z for a given (exact or estimated) log Z; shapes: `energy`."""
  return -energy(m, z1, z2) - log_z


def log_partition_surrogate(m: RBM, z1: Array, z2: Array, log_z: Array) -> Array:
  """The training log Z of MATH.md §2: value log_z, gradient the model expectation from samples.

    logZ_train = sg(log_z) + mean_s(−E(z_s)) − sg(mean_s(−E(z_s))).

  Since ∂(−E)/∂(b1, b2, W) = (z1, z2, z1 z2ᵀ), the gradient with respect to `m` is the sample
  average of the sufficient statistics, an unbiased estimate of ∇ log Z = E_p[(z1, z2, z1 z2ᵀ)]
  when the samples are drawn from p. The samples and log_z are treated as constants.

  Args:
    m: the RBM (the gradient flows into it).
    z1: [S, n1] samples of the model.
    z2: [S, n2] samples of the model.
    log_z: scalar estimate of log Z (e.g. from a prior sampler's state).

  Returns:
    Scalar equal to log_z.
  """
  _check_states(m, z1, z2)
  if z1.ndim != 2 or z2.ndim != 2 or z1.shape[0] != z2.shape[0]:
    raise ValueError(
      f"expected z1 [S, n1] and z2 [S, n2] with the same S, got {z1.shape}, {z2.shape}"
    )
  neg_e = jnp.mean(-energy(m, lax.stop_gradient(z1), lax.stop_gradient(z2)))
  return lax.stop_gradient(log_z) + neg_e - lax.stop_gradient(neg_e)


RAO_BLACKWELL_MODES = ("none", "z2", "symmetric")


def rao_blackwellize(m: RBM, z1: Array, z2: Array, mode: str = "none") -> tuple[Array, Array]:
  """Samples for `log_partition_surrogate` with one side replaced by its conditional mean.

  The surrogate's gradient is the sample mean of s(z) = (z1, z2, z1 z2ᵀ) (MATH.md §2). Since −E is
  linear in each side, feeding it E[z2 | z1] = σ(b2 + Wᵀz1) instead of the sampled z2 gives the
  gradient estimate mean_s (z1, μ2(z1), z1 μ2(z1)ᵀ): the same expectation under p (tower rule),
  lower variance (Rao-Blackwell), no extra sweeps. 'symmetric' averages that with the mirror image
  (μ1(z2), z2, μ1(z2) z2ᵀ), μ1(z2) = σ(b1 + W z2), by returning both sets stacked ([2S, ·]).
  Variance reduction measured by exact enumeration in tests/test_rbm.py and BUILD_NOTES.md. The
  value of the surrogate is unchanged (it is log_z); the conditional means are treated as
  constants like the samples.

  Args:
    m: the RBM the samples belong to (in training, the sampler state's params = the prior).
    z1: [S, n1] samples.
    z2: [S, n2] samples.
    mode: 'none' (the samples as they are), 'z2' or 'symmetric'.

  Returns:
    (z1', z2'): [S, ·] each ('none', 'z2') or [2S, ·] each ('symmetric').

  Only the RBM has the two sides this needs: for any other prior (a graph machine) 'none' returns
  the samples unchanged and the other modes raise ValueError.
  """
  if mode not in RAO_BLACKWELL_MODES:
    raise ValueError(f"unknown Rao-Blackwell mode {mode!r}; choose one of {RAO_BLACKWELL_MODES}")
  if not isinstance(m, RBM):
    if mode != "none":
      raise ValueError(
        f"Rao-Blackwell mode {mode!r} needs an RBM prior (two sides), got {type(m).__name__}; "
        "use rao_blackwell='none'"
      )
    return z1, z2
  _check_states(m, z1, z2)
  if mode == "none":
    return z1, z2
  mean_z2 = jax.nn.sigmoid(m.b2 + jnp.matmul(z1, m.w))
  if mode == "z2":
    return z1, mean_z2
  mean_z1 = jax.nn.sigmoid(m.b1 + jnp.matmul(z2, m.w.T))
  return jnp.concatenate([z1, mean_z1], 0), jnp.concatenate([mean_z2, z2], 0)


def _smaller_side_first(m: RBM) -> tuple[RBM, bool]:
  """The machine oriented so that its first side is the smaller one, and whether it was swapped."""
  check_rbm(m)
  if m.n1 <= m.n2:
    return m, False
  return transpose(m), True


def _enumeration_plan(n: int, chunk_bits: int) -> tuple[int, int]:
  if n > MAX_ENUMERATED_UNITS:
    raise ValueError(
      f"exact enumeration needs min(n1, n2) <= {MAX_ENUMERATED_UNITS}, got {n}; use "
      "samplers.ais_log_partition or samplers.pa_log_partition for larger machines"
    )
  bits = min(n, chunk_bits)
  return 1 << bits, 1 << (n - bits)


def chunk_states(chunk_index: Array, chunk_size: int, n: int, dtype) -> Array:
  """[chunk_size, n] states: the bits of the integers chunk_index·chunk_size + [0, chunk_size)."""
  idx = chunk_index * chunk_size + jnp.arange(chunk_size, dtype=jnp.int32)
  return ((idx[:, None] >> jnp.arange(n, dtype=jnp.int32)) & 1).astype(dtype)


def exact_log_partition(m: RBM, chunk_bits: int = 14) -> Array:
  """Exact log Z by enumerating the smaller side: log Z = logsumexp_{z1} −F(z1) (MATH.md §2).

  The 2^min(n1, n2) states are visited in chunks of 2^chunk_bits with `lax.map`, so memory stays at
  O(2^chunk_bits · max(n1, n2)) and min(n1, n2) ≤ 24 runs in seconds to minutes. Computed in the
  dtype of `m` (use float64 parameters under `with jax.enable_x64(True):` for float64).

  Args:
    m: the RBM.
    chunk_bits: log2 of the number of states evaluated at once.

  Returns:
    Scalar log Z.
  """
  m, _ = _smaller_side_first(m)
  chunk_size, num_chunks = _enumeration_plan(m.n1, chunk_bits)
  dtype = m.w.dtype

  def chunk_logsumexp(c):
    return jax.nn.logsumexp(-free_energy(m, chunk_states(c, chunk_size, m.n1, dtype)))

  per_chunk = lax.map(chunk_logsumexp, jnp.arange(num_chunks, dtype=jnp.int32))
  return jax.nn.logsumexp(per_chunk)


def exact_moments(m: RBM, chunk_bits: int = 14) -> Moments:
  """Exact E[z1] [n1], E[z2] [n2], E[z1 z2ᵀ] [n1, n2] by enumerating the smaller side (MATH.md §2).

  With the smaller side z_a enumerated, p(z_a) = e^{−F(z_a)}/Z and the other side is conditionally
  independent: E[z_b | z_a] = σ(b_b + z_aᵀW). The sums are accumulated chunk by chunk in a
  `lax.scan` (a second pass after log Z), so memory is as in `exact_log_partition`. These moments
  equal ∇_{b1, b2, W} log Z.
  """
  oriented, swapped = _smaller_side_first(m)
  chunk_size, num_chunks = _enumeration_plan(oriented.n1, chunk_bits)
  dtype = oriented.w.dtype
  log_z = exact_log_partition(oriented, chunk_bits)

  def accumulate(acc, c):
    za = chunk_states(c, chunk_size, oriented.n1, dtype)
    field = oriented.b2 + za @ oriented.w
    p = jnp.exp(za @ oriented.b1 + jnp.sum(jax.nn.softplus(field), axis=-1) - log_z)
    zb = jax.nn.sigmoid(field)
    pza = p[:, None] * za
    return (acc[0] + jnp.sum(pza, 0), acc[1] + p @ zb, acc[2] + pza.T @ zb), None

  init = (
    jnp.zeros((oriented.n1,), dtype),
    jnp.zeros((oriented.n2,), dtype),
    jnp.zeros((oriented.n1, oriented.n2), dtype),
  )
  (ma, mb, mab), _ = lax.scan(accumulate, init, jnp.arange(num_chunks, dtype=jnp.int32))
  if swapped:
    return Moments(mb, ma, mab.T)
  return Moments(ma, mb, mab)


def uniform_log_partition(n1: int, n2: int) -> float:
  """log Z of the all-zero machine: (n1 + n2) log 2 (the β = 0 end of every annealing path)."""
  return (n1 + n2) * math.log(2.0)
