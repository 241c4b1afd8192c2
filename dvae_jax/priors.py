"""Priors over the binary latents and their relaxed marginals (MATH.md §2, §4).

Two priors, both plain pytrees:

- ``rbm.RBM(b1, b2, w)``: the bipartite Boltzmann machine of MATH.md §2 over ``z = [z1, z2]``, where
  ``z1`` is the first half of the latent vector and ``z2`` the second (``models.StructSpec.n1/n2``).
- ``FactorialBernoulli(logits)``: independent units, p(z_i = 1) = σ(logits_i), a baseline without
  couplings. Its log-partition is analytic, so no sampler and no ``log_z`` are needed.

For DVAE# the prior of the relaxed variables ζ is the marginal of an augmented machine (MATH.md §4):

- overlapping smoothing r(ζ|z): p(z, ζ) = e^{−E(z)} Π_i r(ζ_i|z_i) / Z, so
  log p(ζ) = log Z_ζ − log Z with Z_ζ = Σ_z exp(−E(z) + Σ_i [b_i(ζ) z_i + c_i(ζ)]),
  b = log r(ζ|1) − log r(ζ|0), c = log r(ζ|0). ``relaxed_log_partition`` estimates log Z_ζ by mean
  field (a lower bound); ``relaxed_log_partition_exact`` enumerates it (tests, small machines).
- Gaussian integral: ``gaussian_integral_log_prob`` (derivation in its docstring).

``log_z`` arguments are scalars; pass ``rbm.log_partition_surrogate(...)`` during training so that
the gradient of −log Z is the model expectation (MATH.md §2), or an AIS / exact value at
evaluation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from dvae_jax import rbm as rbm_lib
from dvae_jax import smoothing as smoothing_lib

Array = jax.Array

# Mean-field iterations for log Z_ζ (MATH.md §4).
MEAN_FIELD_ITERATIONS = 5
# Gaussian integral: λ = max(σ_max(W) + GI_EIGEN_MARGIN, β) keeps A = W_f + λI positive definite,
# with its smallest eigenvalue at least GI_EIGEN_MARGIN (MATH.md §4).
GI_EIGEN_MARGIN = 5.0
# Exact enumeration of Z_ζ is for tests; beyond this many units on the smaller side it is hopeless.
_MAX_EXACT_UNITS = 24


class FactorialBernoulli(NamedTuple):
  """Independent Bernoulli prior over the latent vector: p(z_i = 1) = σ(logits_i).

  Attributes:
    logits: [n] natural parameters; 0 is the uniform prior.
  """

  logits: Array


Prior = rbm_lib.RBM | FactorialBernoulli


def init_prior(kind: str, struct_spec) -> Prior:
  """All-zero prior for a struct (MATH.md §2: the RBM starts at 0).

  Args:
    kind: ``'rbm'`` (sides ``struct_spec.n1``, ``struct_spec.n2``) or ``'factorial'``.
    struct_spec: a ``models.StructSpec`` (anything with ``n1``, ``n2``, ``num_latent``).
  """
  if kind == "rbm":
    return rbm_lib.init_rbm(struct_spec.n1, struct_spec.n2)
  if kind == "factorial":
    return FactorialBernoulli(jnp.zeros((struct_spec.num_latent,), jnp.float32))
  raise ValueError(f"unknown prior kind {kind!r}; valid kinds: 'rbm', 'factorial'")


def num_units(prior: Prior) -> int:
  """Width of the latent vector the prior is defined on."""
  if isinstance(prior, FactorialBernoulli):
    return prior.logits.shape[-1]
  return prior.n1 + prior.n2


def split_sides(prior: Prior, v: Array) -> tuple[Array, Array]:
  """Splits ``v`` ``[..., n]`` into the RBM sides ``[..., n1]``, ``[..., n2]``."""
  if v.shape[-1] != num_units(prior):
    raise ValueError(f"expected a trailing dimension of {num_units(prior)}, got shape {v.shape}")
  n1 = prior.n1 if isinstance(prior, rbm_lib.RBM) else v.shape[-1] // 2
  return v[..., :n1], v[..., n1:]


# --------------------------------------------------------------------------------------------------
# Bernoulli helpers (elementwise, from logits, numerically safe).


def bernoulli_log_prob(z: Array, logits: Array) -> Array:
  """log Bernoulli(z; σ(logits)) elementwise, = z·l − softplus(l), valid for z ∈ {0, 1}."""
  return z * logits - jax.nn.softplus(logits)


def bernoulli_entropy(logits: Array) -> Array:
  """Entropy of Bernoulli(σ(l)) elementwise: softplus(l) − σ(l)·l."""
  return jax.nn.softplus(logits) - jax.nn.sigmoid(logits) * logits


def bernoulli_kl(q_logits: Array, p_logits: Array) -> Array:
  """KL(Bernoulli(σ(q_logits)) ‖ Bernoulli(σ(p_logits))) elementwise.

  KL = q (log q − log p) + (1 − q)(log(1 − q) − log(1 − p)), with log σ(l) = −softplus(−l); written
  as −H(q) − [q·l_p − softplus(l_p)].
  """
  q = jax.nn.sigmoid(q_logits)
  return -bernoulli_entropy(q_logits) - (q * p_logits - jax.nn.softplus(p_logits))


# --------------------------------------------------------------------------------------------------
# Discrete log-probabilities.


def discrete_log_prob(prior: Prior, z: Array, log_z: Array | None = None) -> Array:
  """log p(z) of binary states ``z`` ``[..., n]`` (MATH.md §2); ``log_z`` is for the RBM only.

  Returns:
    ``[...]``.
  """
  if isinstance(prior, FactorialBernoulli):
    _check_width(prior, z)
    return jnp.sum(bernoulli_log_prob(z, prior.logits), axis=-1)
  if log_z is None:
    raise ValueError(
      "discrete_log_prob of an RBM needs log_z (exact, AIS or the training surrogate)"
    )
  z1, z2 = split_sides(prior, z)
  return rbm_lib.log_prob(prior, z1, z2, log_z)


def _check_width(prior: Prior, v: Array) -> None:
  if v.shape[-1] != num_units(prior):
    raise ValueError(f"expected a trailing dimension of {num_units(prior)}, got shape {v.shape}")


# --------------------------------------------------------------------------------------------------
# DVAE# relaxed marginal with an overlapping smoothing (MATH.md §4).


def mean_field_log_partition(
  m: rbm_lib.RBM, a1: Array, a2: Array, num_iterations: int = MEAN_FIELD_ITERATIONS
) -> Array:
  """Mean-field lower bound on log Σ_z exp(−E(z) + a1·z1 + a2·z2) (MATH.md §4).

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
  if num_iterations < 1:
    raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
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
  entropy = jnp.sum(bernoulli_entropy(u1), -1) + jnp.sum(bernoulli_entropy(u2), -1)
  neg_energy = jnp.sum(h1 * m1, -1) + jnp.sum(h2 * m2, -1) + jnp.sum((m1 @ m.w) * m2, -1)
  return neg_energy + entropy


def _relaxed_fields(prior: Prior, smoothing, zeta: Array) -> tuple[Array, Array, Array]:
  """b(ζ) split into the sides, and Σ_i c_i(ζ) (MATH.md §4)."""
  b = smoothing_lib.log_ratio(smoothing, zeta)
  c = jnp.sum(smoothing_lib.log_r0(smoothing, zeta), axis=-1)
  b1, b2 = split_sides(prior, b)
  return b1, b2, c


def relaxed_log_partition(
  m: rbm_lib.RBM, smoothing, zeta: Array, num_iterations: int = MEAN_FIELD_ITERATIONS
) -> Array:
  """Mean-field log Ẑ_ζ of the augmented machine, ``zeta`` [..., n] → [...] (MATH.md §4)."""
  _check_width(m, zeta)
  b1, b2, c = _relaxed_fields(m, smoothing, zeta)
  return mean_field_log_partition(m, b1, b2, num_iterations) + c


def relaxed_log_partition_exact(m: rbm_lib.RBM, smoothing, zeta: Array) -> Array:
  """Exact log Z_ζ by enumeration (small machines, tests), ``zeta`` [..., n] → [...] (MATH.md §4).

  Z_ζ is the partition function of the RBM with biases b + b(ζ), times Π_i r(ζ_i|0).
  """
  _check_width(m, zeta)
  if min(m.n1, m.n2) > _MAX_EXACT_UNITS:
    raise ValueError(
      f"exact enumeration needs min(n1, n2) <= {_MAX_EXACT_UNITS}, got {min(m.n1, m.n2)}"
    )
  b1, b2, c = _relaxed_fields(m, smoothing, zeta)
  batch = zeta.shape[:-1]
  flat = jax.vmap(
    lambda a1, a2: rbm_lib.exact_log_partition(rbm_lib.RBM(m.b1 + a1, m.b2 + a2, m.w))
  )
  out = flat(b1.reshape(-1, m.n1), b2.reshape(-1, m.n2))
  return out.reshape(batch) + c


def relaxed_log_prob(
  prior: Prior,
  smoothing,
  zeta: Array,
  log_z: Array | None = None,
  *,
  num_iterations: int = MEAN_FIELD_ITERATIONS,
  exact: bool = False,
) -> Array:
  """log p(ζ) of the DVAE# relaxed prior with an overlapping smoothing (MATH.md §4).

  RBM: log Ẑ_ζ − log Z (mean field, or enumeration with ``exact=True``). Factorial prior: exact per
  unit, log p(ζ_i) = log((1 − p_i) r(ζ_i|0) + p_i r(ζ_i|1)); ``log_z`` is ignored.

  Args:
    prior: ``rbm.RBM`` or ``FactorialBernoulli``.
    smoothing: an overlapping smoothing of ``dvae_jax.smoothing`` (not spike-and-exp).
    zeta: [..., n] relaxed samples.
    log_z: scalar log Z of the RBM (the training surrogate, AIS or exact).
    num_iterations: mean-field iterations.
    exact: enumerate Z_ζ instead of mean field (small machines only).

  Returns:
    ``[...]``.
  """
  _check_width(prior, zeta)
  if isinstance(prior, FactorialBernoulli):
    return jnp.sum(smoothing_lib.mixture_log_prob_logits(smoothing, zeta, prior.logits), axis=-1)
  if log_z is None:
    raise ValueError("relaxed_log_prob of an RBM needs log_z")
  if exact:
    return relaxed_log_partition_exact(prior, smoothing, zeta) - log_z
  return relaxed_log_partition(prior, smoothing, zeta, num_iterations) - log_z


# --------------------------------------------------------------------------------------------------
# DVAE# Gaussian integral (MATH.md §4).


def gaussian_integral_lambda(prior: Prior, beta: float) -> Array:
  """λ = max(σ_max(W) + 5, β), under stop-gradient (W = 0 for the factorial prior) (MATH.md §4).

  λ is a parameter of the relaxation, not of the discrete model: p(z) is the same for every λ, so
  it is held fixed when differentiating.
  """
  if isinstance(prior, FactorialBernoulli):
    sigma_max = jnp.zeros((), prior.logits.dtype)
  else:
    sigma_max = jnp.linalg.norm(lax.stop_gradient(prior.w), ord=2)
  return jnp.maximum(sigma_max + GI_EIGEN_MARGIN, beta)


def gaussian_integral_log_prob(
  prior: Prior, zeta: Array, beta: float, log_z: Array | None = None
) -> Array:
  """log p(ζ) of the Gaussian-integral relaxation of the prior (MATH.md §4).

  Derivation (the augmented machine). With W_f = [[0, W], [Wᵀ, 0]], a = [b1; b2] and A = W_f + λI
  (positive definite since λ > σ_max(W), the largest |eigenvalue| of W_f), take
    p(z, ζ) = p(z) N(ζ; z, A⁻¹),  p(z) = exp(aᵀz + ½ zᵀW_f z) / Z.
  Expanding −½(ζ − z)ᵀA(ζ − z) = −½ζᵀAζ + zᵀAζ − ½ zᵀW_f z − (λ/2) zᵀz and using zᵀz = Σ_i z_i for
  binary z, the quadratic zᵀW_f z cancels against the prior's, so
    p(z, ζ) = det(A/2π)^{1/2} exp(−½ζᵀAζ) exp(Σ_i z_i [(Aζ)_i + a_i − λ/2]) / Z,
  and the sum over z factorises:
    log p(ζ) = −log Z + ½ log det(A/2π) − ½ζᵀAζ + Σ_i softplus((Aζ)_i + a_i − λ/2).
  The prior's marginal over z is untouched, whatever λ. The log-determinant uses the Schur
  complement, det A = λ^{n} det(I − λ⁻² WᵀW), so
    ½ log det(A/2π) = −(n/2) log(2π/λ) + ½ log det(I − λ⁻²WᵀW).
  For the factorial prior (W = 0) this is the per-unit mixture
  (1 − p_i) N(ζ_i; 0, 1/λ) + p_i N(ζ_i; 1, 1/λ).

  Args:
    prior: ``rbm.RBM`` or ``FactorialBernoulli``.
    zeta: [..., n] relaxed samples (real-valued).
    beta: the smallest allowed λ.
    log_z: scalar log Z of the RBM (ignored for the factorial prior).

  Returns:
    ``[...]``.
  """
  _check_width(prior, zeta)
  lam = gaussian_integral_lambda(prior, beta)
  n = zeta.shape[-1]
  log_norm = -0.5 * n * jnp.log(2.0 * math.pi / lam)
  if isinstance(prior, FactorialBernoulli):
    a = prior.logits
    log_z_fact = jnp.sum(jax.nn.softplus(a))
    field = lam * zeta + a - 0.5 * lam
    return (
      log_norm - 0.5 * lam * jnp.sum(zeta**2, -1) + jnp.sum(jax.nn.softplus(field), -1) - log_z_fact
    )
  if log_z is None:
    raise ValueError("gaussian_integral_log_prob of an RBM needs log_z")
  m = prior
  zeta1, zeta2 = split_sides(m, zeta)
  # I − λ⁻² WᵀW or I − λ⁻² W Wᵀ: the same non-unit eigenvalues, so take the smaller matrix.
  w = m.w if m.n1 >= m.n2 else m.w.T
  gram = jnp.eye(w.shape[1], dtype=w.dtype) - (w.T @ w) / lam**2
  log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(gram))))
  a_zeta1 = lam * zeta1 + zeta2 @ m.w.T
  a_zeta2 = lam * zeta2 + zeta1 @ m.w
  quad = jnp.sum(zeta1 * a_zeta1, -1) + jnp.sum(zeta2 * a_zeta2, -1)
  soft = jnp.sum(jax.nn.softplus(a_zeta1 + m.b1 - 0.5 * lam), -1) + jnp.sum(
    jax.nn.softplus(a_zeta2 + m.b2 - 0.5 * lam), -1
  )
  return -log_z + log_norm + 0.5 * log_det - 0.5 * quad + soft
