"""The RBM prior: a restricted (bipartite) Boltzmann machine (math.md §2–§4).

An RBM over z = (z1, z2), z1 ∈ {0,1}^n1, z2 ∈ {0,1}^n2, with

  E(z1, z2) = −b1ᵀz1 − b2ᵀz2 − z1ᵀ W z2,      p(z) = exp(−E(z)) / Z.

The parameters are a plain NamedTuple pytree (`RBM`), so they can be differentiated, jitted, vmapped
and checkpointed like any other array tree. Samples are arrays of 0/1 in the dtype of the
parameters.

On the latent vector z [..., n] (the contract of ``priors.base``) z1 is the first n1 units and z2
the other n2; the methods of `RBM` split z there. The module functions take the sides
separately. Gibbs sampling is the two-sided block sweep of ``samplers.gibbs`` (two matmuls per
sweep), run on the sides of the chains z [S, n].

Exact enumeration (`exact_log_partition`, `exact_moments`) sums out the larger side analytically and
enumerates the 2^min(n1, n2) states of the smaller one in chunks, so machines with min(n1, n2) ≤ 24
fit in memory; it is the gold standard the samplers are tested against.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dvae_jax.priors import base
from dvae_jax.priors import graph as graph_lib
from dvae_jax.samplers import gibbs as gibbs_lib

Array = jax.Array

# Enumeration beyond 2^30 states of the smaller side would take hours and overflows int32 indices.
MAX_ENUMERATED_UNITS = base.MAX_ENUMERATED_UNITS
# Exact enumeration of the relaxed Z_ζ (one machine per ζ) is for tests: at most this many units on
# the smaller side.
_MAX_EXACT_FIELD_UNITS = 24
RAO_BLACKWELL_MODES = base.RAO_BLACKWELL_MODES


class RBM(NamedTuple):
  """Parameters of a bipartite Boltzmann machine (math.md §2).

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

  @property
  def num_units(self) -> int:
    return self.n1 + self.n2

  @property
  def dtype(self):
    return self.w.dtype

  @property
  def needs_sampler(self) -> bool:
    return True

  def check(self) -> None:
    check_rbm(self)

  def split(self, v: Array) -> tuple[Array, Array]:
    """``v`` [..., n] as its sides ([..., n1], [..., n2])."""
    base.check_width(self, v)
    return v[..., : self.n1], v[..., self.n1 :]

  # ---- the discrete model (math.md §2)
  def energy(self, z: Array) -> Array:
    """E(z) of z [..., n] = (z1, z2): [...] (``energy``)."""
    return energy(self, *self.split(z))

  def log_prob(self, z: Array, log_z: Array | None) -> Array:
    """log p(z) = −E(z) − log Z: [..., n] → [...]."""
    return base.boltzmann_log_prob(self, z, log_z)

  def training_log_partition(self, z: Array | None, log_z: Array | None) -> Array:
    """``base.log_partition_surrogate`` of samples z [S, n]: gradient: mean (z1, z2, z1z2ᵀ)."""
    return base.log_partition_surrogate(self, z, log_z)

  def rao_blackwellize(self, z: Array, mode: str) -> Array:
    """``rao_blackwellize`` on the sides of z [S, n]: [S, n] or [2S, n] ('symmetric')."""
    return jnp.concatenate(rao_blackwellize(self, *self.split(z), mode), axis=-1)

  def exact_log_partition(self) -> Array:
    return exact_log_partition(self)

  def exact_moments(self) -> Moments:
    return exact_moments(self)

  def sample_moments(self, z: Array) -> Moments:
    """Means over the samples of (z1 [n1], z2 [n2], z1 z2ᵀ [n1, n2]) of chains z [S, n]."""
    z1, z2 = self.split(z)
    return Moments(jnp.mean(z1, 0), jnp.mean(z2, 0), (z1.T @ z2) / z1.shape[0])

  # ---- sampling (math.md §3): the two-sided sweep of samplers.gibbs on the chains' sides
  def colour_classes(self) -> tuple[np.ndarray, ...]:
    """(z2's units, z1's units): a sweep redraws z2 given z1, then z1 given z2."""
    n1, n = self.n1, self.num_units
    return np.arange(n1, n, dtype=np.int32), np.arange(0, n1, dtype=np.int32)

  def init_chains(self, key: Array, num_chains: int) -> Array:
    """Uniform chains [S, n] (``samplers.gibbs.init``: z1 and z2 from two keys)."""
    return jnp.concatenate(gibbs_lib.init(key, self, num_chains), axis=-1)

  def run(self, key: Array, z: Array, num_sweeps: int, beta=1.0) -> Array:
    """``samplers.gibbs.run`` on the sides of z [S, n]: [S, n]."""
    base.check_chains(self, z)
    state = gibbs_lib.run(key, gibbs_lib.GibbsState(*self.split(z)), self, num_sweeps, beta)
    return jnp.concatenate(state, axis=-1)

  def run_with_energy(self, key: Array, z: Array, num_sweeps: int, beta=1.0):
    """``samplers.gibbs.run_with_energy`` on the sides of z [S, n]: ([S, n], E [S])."""
    z1, z2 = z[:, : self.n1], z[:, self.n1 :]
    state, e = gibbs_lib.run_with_energy(key, gibbs_lib.GibbsState(z1, z2), self, num_sweeps, beta)
    return jnp.concatenate(state, axis=-1), e

  # ---- relaxations (math.md §4)
  def mean_field_log_partition(
    self, a: Array, num_iterations: int = base.MEAN_FIELD_ITERATIONS
  ) -> Array:
    """``mean_field_log_partition`` with the fields a [..., n] split into the sides."""
    return mean_field_log_partition(self, *self.split(a), num_iterations)

  def field_log_partition_exact(self, a: Array) -> Array:
    """Exact log Σ_z exp(−E(z) + a·z) for a [n] (the smaller side enumerated)."""
    if min(self.n1, self.n2) > _MAX_EXACT_FIELD_UNITS:
      raise ValueError(
        f"exact enumeration needs min(n1, n2) <= {_MAX_EXACT_FIELD_UNITS}, "
        f"got {min(self.n1, self.n2)}"
      )
    a1, a2 = self.split(a)
    return exact_log_partition(RBM(self.b1 + a1, self.b2 + a2, self.w))

  def relaxed_log_prob(
    self,
    smoothing,
    zeta: Array,
    log_z: Array | None,
    num_iterations: int = base.MEAN_FIELD_ITERATIONS,
    exact: bool = False,
  ) -> Array:
    """log Z_ζ − log Z (``base.boltzmann_relaxed_log_prob``)."""
    return base.boltzmann_relaxed_log_prob(self, smoothing, zeta, log_z, num_iterations, exact)

  def gaussian_integral_lambda(self, beta: float) -> Array:
    """λ = max(σ_max(W) + 5, β) under stop-gradient (σ_max(W) is W_f's largest |eigenvalue|)."""
    sigma_max = jnp.linalg.norm(lax.stop_gradient(self.w), ord=2)
    return jnp.maximum(sigma_max + base.GI_EIGEN_MARGIN, beta)

  def gaussian_integral_log_prob(self, zeta: Array, beta: float, log_z: Array | None) -> Array:
    """log p(ζ) of the Gaussian-integral relaxation (math.md §4), [..., n] → [...].

    Derivation (the augmented machine). With W_f = [[0, W], [Wᵀ, 0]], a = [b1; b2] and A = W_f + λI
    (positive definite since λ > σ_max(W), the largest |eigenvalue| of W_f), take
      p(z, ζ) = p(z) N(ζ; z, A⁻¹),  p(z) = exp(aᵀz + ½ zᵀW_f z) / Z.
    Expanding −½(ζ − z)ᵀA(ζ − z) = −½ζᵀAζ + zᵀAζ − ½ zᵀW_f z − (λ/2) zᵀz and using zᵀz = Σ_i z_i
    for binary z, the quadratic zᵀW_f z cancels against the prior's, so
      p(z, ζ) = det(A/2π)^{1/2} exp(−½ζᵀAζ) exp(Σ_i z_i [(Aζ)_i + a_i − λ/2]) / Z,
    and the sum over z factorises:
      log p(ζ) = −log Z + ½ log det(A/2π) − ½ζᵀAζ + Σ_i softplus((Aζ)_i + a_i − λ/2).
    The prior's marginal over z is untouched, whatever λ. The log-determinant uses the Schur
    complement, det A = λ^{n} det(I − λ⁻² WᵀW), so
      ½ log det(A/2π) = −(n/2) log(2π/λ) + ½ log det(I − λ⁻²WᵀW).
    """
    base.check_width(self, zeta, "zeta")
    if log_z is None:
      raise ValueError("gaussian_integral_log_prob of a Boltzmann prior needs log_z")
    lam = self.gaussian_integral_lambda(beta)
    n = zeta.shape[-1]
    log_norm = -0.5 * n * jnp.log(2.0 * math.pi / lam)
    zeta1, zeta2 = self.split(zeta)
    # I − λ⁻² WᵀW or I − λ⁻² W Wᵀ: the same non-unit eigenvalues, so take the smaller matrix.
    w = self.w if self.n1 >= self.n2 else self.w.T
    gram = jnp.eye(w.shape[1], dtype=w.dtype) - (w.T @ w) / lam**2
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(gram))))
    a_zeta1 = lam * zeta1 + zeta2 @ self.w.T
    a_zeta2 = lam * zeta2 + zeta1 @ self.w
    quad = jnp.sum(zeta1 * a_zeta1, -1) + jnp.sum(zeta2 * a_zeta2, -1)
    soft = jnp.sum(jax.nn.softplus(a_zeta1 + self.b1 - 0.5 * lam), -1) + jnp.sum(
      jax.nn.softplus(a_zeta2 + self.b2 - 0.5 * lam), -1
    )
    return -log_z + log_norm + 0.5 * log_det - 0.5 * quad + soft

  def expected_neg_energy(self, mu: Array, num_groups: int, across: base.Across) -> Array:
    """b1·μ1 + b2·μ2 + across(W, z1's units, z2's units): every unit of z1 is taken to belong to a
    group no later than every unit of z2 (the RBM's sides are the hierarchy's halves), so all its
    couplings go from an earlier unit to a later one; with one group the caller's ``across`` is
    the product of the means."""
    mu1, mu2 = self.split(mu)
    rows, cols = slice(0, self.n1), slice(self.n1, None)
    return mu1 @ self.b1 + mu2 @ self.b2 + across(self.w, rows, cols)

  def coupling_sum_of_squares(self) -> Array:
    return jnp.sum(jnp.square(self.w))

  def graph_machine(self) -> graph_lib.BoltzmannMachine:
    return graph_machine(self)


class Moments(NamedTuple):
  """First and mixed second moments of an RBM: E[z1] [n1], E[z2] [n2], E[z1 z2ᵀ] [n1, n2].

  They are the gradient of log Z with respect to (b1, b2, w), in the same order as `RBM`'s fields.
  """

  z1: Array
  z2: Array
  z1z2: Array


def init_rbm(n1: int, n2: int, dtype=jnp.float32) -> RBM:
  """All-zero parameters (math.md §2: they start at 0, where p is uniform, log Z = n log 2)."""
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
  """E(z1, z2) = −b1·z1 − b2·z2 − z1ᵀ W z2 (math.md §2).

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


def rao_blackwellize(m: RBM, z1: Array, z2: Array, mode: str = "none") -> tuple[Array, Array]:
  """Samples for the training log Z (``RBM.training_log_partition``) with one side replaced by its
  conditional mean.

  The training log Z's gradient is the sample mean of s(z) = (z1, z2, z1 z2ᵀ) (math.md §2). Since
  −E is linear in each side, feeding it E[z2 | z1] = σ(b2 + Wᵀz1) instead of the sampled z2 gives
  the gradient estimate mean_s (z1, μ2(z1), z1 μ2(z1)ᵀ): the same expectation under p (tower rule),
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
  """
  if mode not in RAO_BLACKWELL_MODES:
    raise ValueError(f"unknown Rao-Blackwell mode {mode!r}; choose one of {RAO_BLACKWELL_MODES}")
  _check_states(m, z1, z2)
  if mode == "none":
    return z1, z2
  mean_z2 = jax.nn.sigmoid(m.b2 + jnp.matmul(z1, m.w))
  if mode == "z2":
    return z1, mean_z2
  mean_z1 = jax.nn.sigmoid(m.b1 + jnp.matmul(z2, m.w.T))
  return jnp.concatenate([z1, mean_z1], 0), jnp.concatenate([mean_z2, z2], 0)


def mean_field_log_partition(
  m: RBM, a1: Array, a2: Array, num_iterations: int = base.MEAN_FIELD_ITERATIONS
) -> Array:
  """Mean-field lower bound on log Σ_z exp(−E(z) + a1·z1 + a2·z2) (math.md §4).

  The magnetisations start at 0.5 and take ``num_iterations`` block updates
  m2 ← σ(b2 + a2 + Wᵀm1), m1 ← σ(b1 + a1 + W m2) under stop-gradient; then
  log Ẑ = (b1 + a1)·m1 + (b2 + a2)·m2 + m1ᵀ W m2 + H(m1) + H(m2). By Gibbs' inequality this is a
  lower bound for any m. Gradients flow through the energy term at fixed m (envelope theorem: at a
  fixed point of the updates the derivative with respect to m vanishes).

  Args:
    m: the RBM.
    a1: [..., n1] extra fields on the first side.
    a2: [..., n2] extra fields on the second side.
    num_iterations: block updates (>= 1).

  Returns:
    ``[...]`` log Ẑ.
  """
  base.check_num_iterations(num_iterations)
  h1 = m.b1 + a1
  h2 = m.b2 + a2
  h1_sg, h2_sg, w_sg = lax.stop_gradient((h1, h2, m.w))

  def update(_, carry):
    u1, _u2 = carry
    m1 = jax.nn.sigmoid(u1)
    u2 = h2_sg + m1 @ w_sg
    u1 = h1_sg + jax.nn.sigmoid(u2) @ w_sg.T
    return u1, u2

  # m1 = 0.5 is σ(0); the first update overwrites the initial u2.
  u1, u2 = jnp.zeros_like(h1_sg), jnp.zeros_like(h2_sg)
  u1, u2 = lax.fori_loop(0, num_iterations, update, (u1, u2))
  # After the last update m1 = σ(u1) is newer than the m1 that produced u2; any m is a valid bound.
  m1, m2 = jax.nn.sigmoid(u1), jax.nn.sigmoid(u2)
  entropy = jnp.sum(base.bernoulli_entropy(u1), -1) + jnp.sum(base.bernoulli_entropy(u2), -1)
  neg_energy = jnp.sum(h1 * m1, -1) + jnp.sum(h2 * m2, -1) + jnp.sum((m1 @ m.w) * m2, -1)
  return neg_energy + entropy


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


chunk_states = base.chunk_states


def exact_log_partition(m: RBM, chunk_bits: int = 14) -> Array:
  """Exact log Z by enumerating the smaller side: log Z = logsumexp_{z1} −F(z1) (math.md §2).

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
  """Exact E[z1] [n1], E[z2] [n2], E[z1 z2ᵀ] [n1, n2] by enumerating the smaller side (math.md §2).

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


def graph_machine(m: RBM) -> graph_lib.BoltzmannMachine:
  """The RBM as a machine on K_{n1,n2}: nodes (z1; z2), edge (i, n1 + j) ↦ W_ij (row-major).

  z2 is colour 0 and z1 colour 1, so a pass over the colours in order updates z2 then z1, as the
  RBM's block Gibbs sweep (``samplers.gibbs``) and its mean field (``mean_field_log_partition``)
  do; the graph mean field of this machine then equals the RBM's iterate for iterate.
  """
  check_rbm(m)
  n1, n2 = m.n1, m.n2
  i, j = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
  edges = np.stack([i.ravel(), n1 + j.ravel()], axis=1)
  colours = np.concatenate([np.ones(n1, np.int32), np.zeros(n2, np.int32)])
  graph = graph_lib.Graph(n1 + n2, edges, colours)
  return graph_lib.BoltzmannMachine(jnp.concatenate([m.b1, m.b2]), m.w.reshape(-1), graph)


def init_rbm_prior(num_units: int, dtype=jnp.float32) -> RBM:
  """The all-zero RBM on a latent vector of num_units (even) units: n1 = n2 = num_units / 2."""
  if num_units % 2:
    raise ValueError(f"an RBM prior splits the latents in two halves; got {num_units} units")
  return init_rbm(num_units // 2, num_units // 2, dtype)
