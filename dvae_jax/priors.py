"""Priors over the binary latents and their relaxed marginals (MATH.md §2, §4).

Three priors, all plain pytrees:

- ``rbm.RBM(b1, b2, w)``: the bipartite Boltzmann machine of MATH.md §2 over ``z = [z1, z2]``, where
  ``z1`` is the first half of the latent vector and ``z2`` the second (``models.StructSpec.n1/n2``).
- ``FactorialBernoulli(logits)``: independent units, p(z_i = 1) = σ(logits_i), a baseline without
  couplings. Its log-partition is analytic, so no sampler and no ``log_z`` are needed.
- ``graphs.BoltzmannMachine(b, w, graph)``: a Boltzmann machine on any graph (a quantum annealer's
  Chimera / Pegasus / Zephyr, ``dvae_jax.graphs``); node k is latent unit k. The RBM is the
  special case ``graphs.from_rbm`` (K_{n1,n2}), and every function here gives the RBM's result for
  it (tests/test_priors.py).

For DVAE# the prior of the relaxed variables ζ is the marginal of an augmented machine (MATH.md §4):

- overlapping smoothing r(ζ|z): p(z, ζ) = e^{−E(z)} Π_i r(ζ_i|z_i) / Z, so
  log p(ζ) = log Z_ζ − log Z with Z_ζ = Σ_z exp(−E(z) + Σ_i [b_i(ζ) z_i + c_i(ζ)]),
  b = log r(ζ|1) − log r(ζ|0), c = log r(ζ|0). ``relaxed_log_partition`` estimates log Z_ζ by mean
  field (a lower bound); ``relaxed_log_partition_exact`` enumerates it (tests, small machines).
- Gaussian integral: ``gaussian_integral_log_prob`` (derivation in its docstring).

``log_z`` arguments are scalars; pass ``rbm.log_partition_surrogate(...)`` (or
``graphs.machine.log_partition_surrogate``) during training so that
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
from dvae_jax.graphs import machine as machine_lib

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


BoltzmannMachine = machine_lib.BoltzmannMachine
Prior = rbm_lib.RBM | FactorialBernoulli | BoltzmannMachine


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
  if isinstance(prior, BoltzmannMachine):
    return prior.num_nodes
  return prior.n1 + prior.n2


def split_sides(prior: Prior, v: Array) -> tuple[Array, Array]:
  """Splits ``v`` ``[..., n]`` into the RBM sides ``[..., n1]``, ``[..., n2]``."""
  if isinstance(prior, BoltzmannMachine):
    raise ValueError("a graph BoltzmannMachine prior has no sides; index its nodes directly")
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
  """log p(z) = −E(z) − log Z of binary states ``z`` ``[..., n]`` (MATH.md §2); ``log_z`` is for the
  Boltzmann priors (RBM, graph machine) only.

  GumBolt evaluates it at relaxed ζ ∈ [0, 1]^n (the energy is a polynomial, defined there too).

  Returns:
    ``[...]``.
  """
  if isinstance(prior, FactorialBernoulli):
    _check_width(prior, z)
    return jnp.sum(bernoulli_log_prob(z, prior.logits), axis=-1)
  if log_z is None:
    raise ValueError(
      "discrete_log_prob of a Boltzmann prior needs log_z (exact, AIS or the training surrogate)"
    )
  if isinstance(prior, BoltzmannMachine):
    return -machine_lib.energy(prior, z) - log_z
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


def graph_mean_field_log_partition(
  m: BoltzmannMachine, a: Array, num_iterations: int = MEAN_FIELD_ITERATIONS
) -> Array:
  """Mean-field lower bound on log Σ_z exp(−E(z) + a·z) for a machine on any graph (MATH.md §4).

  Update order: the magnetisations start at 0.5; one iteration is one pass over the colours of
  the graph's proper colouring in order c = 0, …, C−1, each colour updated at once (its units are
  not coupled to each other) from the newest values of the others,
    m_c ← σ(b_c + a_c + (W_f m)_c),   W_f = ``machine.coupling_matrix(m)``,
  under stop-gradient. Then
    log Ẑ = (b + a)·m + Σ_{e=(i,j)} w_e m_i m_j + H(m) = (b + a)·m + ½ mᵀW_f m + H(m),
  a lower bound on the log-partition for any m in [0, 1]^n (Gibbs' inequality with the factorial
  q(z) = Π_i m_i^{z_i}(1 − m_i)^{1 − z_i}), exact when w = 0. Gradients flow through the energy at
  fixed m (envelope theorem), as in ``mean_field_log_partition``. For ``graphs.from_rbm`` (z2 is
  colour 0, z1 colour 1) the iterates are those of ``mean_field_log_partition``: m2 then m1.

  The couplings are a dense [n, n] matrix: the field of colour c is a matmul with its columns,
  cost O(batch · n²) per iteration, fine for the latent sizes of a DVAE (n ≲ 2000).

  Args:
    m: the machine (n nodes, C colours).
    a: [..., n] extra fields.
    num_iterations: passes over the colours (>= 1).

  Returns:
    ``[...]`` log Ẑ.
  """
  if num_iterations < 1:
    raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
  _check_width(m, a)
  g = m.graph
  h = m.b + a
  w_f = machine_lib.coupling_matrix(m)
  h_sg, w_f_sg = lax.stop_gradient((h, w_f))
  classes = [jnp.asarray(g.colour_class(c)) for c in range(g.num_colours)]

  def update(_, u):
    for nodes in classes:  # colours in order; the colouring is static
      u = u.at[..., nodes].set(h_sg[..., nodes] + jax.nn.sigmoid(u) @ w_f_sg[:, nodes])
    return u

  # Pre-activations u with m = σ(u): u = 0 is m = 0.5; H(m) is computed from u (stable).
  u = lax.fori_loop(0, num_iterations, update, jnp.zeros_like(h_sg))
  mag = jax.nn.sigmoid(u)
  entropy = jnp.sum(bernoulli_entropy(u), -1)
  # −E(m) + a·m = (b + a)·m + ½ mᵀW_f m: a matmul rather than a gather per edge and row.
  neg_energy = jnp.sum(h * mag, -1) + 0.5 * jnp.sum((mag @ w_f) * mag, -1)
  return neg_energy + entropy


def _relaxed_fields(smoothing, zeta: Array) -> tuple[Array, Array]:
  """b(ζ) [..., n] and Σ_i c_i(ζ) [...] (MATH.md §4)."""
  b = smoothing_lib.log_ratio(smoothing, zeta)
  return b, jnp.sum(smoothing_lib.log_r0(smoothing, zeta), axis=-1)


def relaxed_log_partition(
  m: rbm_lib.RBM | BoltzmannMachine,
  smoothing,
  zeta: Array,
  num_iterations: int = MEAN_FIELD_ITERATIONS,
) -> Array:
  """Mean-field log Ẑ_ζ of the augmented machine, ``zeta`` [..., n] → [...] (MATH.md §4).

  RBM: ``mean_field_log_partition``; graph machine: ``graph_mean_field_log_partition``.
  """
  _check_width(m, zeta)
  b, c = _relaxed_fields(smoothing, zeta)
  if isinstance(m, BoltzmannMachine):
    return graph_mean_field_log_partition(m, b, num_iterations) + c
  b1, b2 = split_sides(m, b)
  return mean_field_log_partition(m, b1, b2, num_iterations) + c


def relaxed_log_partition_exact(m: rbm_lib.RBM | BoltzmannMachine, smoothing, zeta: Array) -> Array:
  """Exact log Z_ζ by enumeration (small machines, tests), ``zeta`` [..., n] → [...] (MATH.md §4).

  Z_ζ is the partition function of the machine with biases b + b(ζ), times Π_i r(ζ_i|0).
  """
  _check_width(m, zeta)
  b, c = _relaxed_fields(smoothing, zeta)
  batch = zeta.shape[:-1]
  b = b.reshape(-1, b.shape[-1])
  if isinstance(m, BoltzmannMachine):
    # machine.exact_log_partition checks the size (n − the largest colour class).
    out = jax.vmap(lambda a: machine_lib.exact_log_partition(m.replace(b=m.b + a)))(b)
    return out.reshape(batch) + c
  if min(m.n1, m.n2) > _MAX_EXACT_UNITS:
    raise ValueError(
      f"exact enumeration needs min(n1, n2) <= {_MAX_EXACT_UNITS}, got {min(m.n1, m.n2)}"
    )
  b1, b2 = split_sides(m, b)
  flat = jax.vmap(
    lambda a1, a2: rbm_lib.exact_log_partition(rbm_lib.RBM(m.b1 + a1, m.b2 + a2, m.w))
  )
  return flat(b1, b2).reshape(batch) + c


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

  RBM or graph machine: log Ẑ_ζ − log Z (mean field, or enumeration with ``exact=True``).
  Factorial prior: exact per unit, log p(ζ_i) = log((1 − p_i) r(ζ_i|0) + p_i r(ζ_i|1)); ``log_z``
  is ignored.

  Args:
    prior: ``rbm.RBM``, ``graphs.BoltzmannMachine`` or ``FactorialBernoulli``.
    smoothing: an overlapping smoothing of ``dvae_jax.smoothing`` (not spike-and-exp).
    zeta: [..., n] relaxed samples.
    log_z: scalar log Z of the machine (the training surrogate, AIS or exact).
    num_iterations: mean-field iterations.
    exact: enumerate Z_ζ instead of mean field (small machines only).

  Returns:
    ``[...]``.
  """
  _check_width(prior, zeta)
  if isinstance(prior, FactorialBernoulli):
    return jnp.sum(smoothing_lib.mixture_log_prob_logits(smoothing, zeta, prior.logits), axis=-1)
  if log_z is None:
    raise ValueError("relaxed_log_prob of a Boltzmann prior needs log_z")
  if exact:
    return relaxed_log_partition_exact(prior, smoothing, zeta) - log_z
  return relaxed_log_partition(prior, smoothing, zeta, num_iterations) - log_z


# --------------------------------------------------------------------------------------------------
# DVAE# Gaussian integral (MATH.md §4).


def gaussian_integral_lambda(prior: Prior, beta: float) -> Array:
  """λ = max(σ_max(W) + 5, β), under stop-gradient (W = 0 for the factorial prior) (MATH.md §4).

  For a graph machine σ_max is that of the symmetric coupling matrix W_f (its largest |eigenvalue|;
  for ``graphs.from_rbm`` the same number as the RBM's σ_max(W)).

  λ is a parameter of the relaxation, not of the discrete model: p(z) is the same for every λ, so
  it is held fixed when differentiating.
  """
  if isinstance(prior, FactorialBernoulli):
    sigma_max = jnp.zeros((), prior.logits.dtype)
  elif isinstance(prior, BoltzmannMachine):
    eigenvalues = jnp.linalg.eigvalsh(lax.stop_gradient(machine_lib.coupling_matrix(prior)))
    sigma_max = jnp.max(jnp.abs(eigenvalues))
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

  A graph machine is the same with W_f = ``machine.coupling_matrix`` (any symmetric zero-diagonal
  matrix; p(z) = exp(bᵀz + ½ zᵀW_f z) / Z) and a = b: λ uses W_f's largest |eigenvalue|, and
  log det A comes from the Cholesky factor of the dense [n, n] A (O(n³), fine for n ≲ 2000).

  Args:
    prior: ``rbm.RBM``, ``graphs.BoltzmannMachine`` or ``FactorialBernoulli``.
    zeta: [..., n] relaxed samples (real-valued).
    beta: the smallest allowed λ.
    log_z: scalar log Z of the machine (ignored for the factorial prior).

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
    raise ValueError("gaussian_integral_log_prob of a Boltzmann prior needs log_z")
  if isinstance(prior, BoltzmannMachine):
    a_mat = machine_lib.coupling_matrix(prior) + lam * jnp.eye(n, dtype=zeta.dtype)
    # ½ log det(A/2π) = ½ log det A − (n/2) log 2π; log det A = 2 Σ log diag(chol(A)).
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(a_mat))))
    a_zeta = zeta @ a_mat  # A is symmetric
    quad = jnp.sum(zeta * a_zeta, -1)
    soft = jnp.sum(jax.nn.softplus(a_zeta + prior.b - 0.5 * lam), -1)
    return -log_z + 0.5 * log_det - 0.5 * n * math.log(2.0 * math.pi) - 0.5 * quad + soft
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
