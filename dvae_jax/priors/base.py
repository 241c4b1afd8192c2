"""The prior contract: what objectives, samplers and evaluation ask of a prior (math.md §2–§4).

A prior is a pytree of its parameters (differentiated, jitted, vmapped and checkpointed like any
array tree) with the methods of ``Prior`` below. Every prior lives on the latent vector z ∈ {0,1}^n
(``num_units`` = n), unit k being latent unit k, and every chain array is ``z [S, n]``: the
samplers hold, reweight and resample such arrays without knowing the prior's kind, and a kind with
a faster layout (the RBM's two sides) rearranges them inside its own sweep.

Each kind is one module (distrax's one distribution per file; blackjax's kernels take functions,
never ask a model's type): ``factorial`` (independent units, normalised), ``rbm`` (the bipartite
machine with its two-sided block Gibbs sweep), ``graph`` (a machine on any graph with its chromatic
sweep). A new kind implements the methods of ``Prior``; the helpers below are the method-independent
algorithms a Boltzmann machine with a dense coupling matrix can reuse (mean field over a colouring,
the Gaussian integral, exact enumeration, the training log Z surrogate), so that a small new kind is
one short class (tests/priors/test_new_kind.py).

Everything specific to a training method (DVAE's Rolfe term, DVAE++'s ν, GumBolt's proxy) stays in
``dvae_jax.objectives``: a prior offers the primitives those are built from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dvae_jax import numerics
from dvae_jax import smoothing as smoothing_lib

Array = jax.Array

# Mean-field iterations for log Z_ζ (math.md §4).
MEAN_FIELD_ITERATIONS = 5
# Gaussian integral: λ = max(σ_max(W) + GI_EIGEN_MARGIN, β) keeps A = W_f + λI positive definite,
# with its smallest eigenvalue at least GI_EIGEN_MARGIN (math.md §4).
GI_EIGEN_MARGIN = 5.0
# Enumeration beyond 2^30 states would take hours and overflows int32 state indices.
MAX_ENUMERATED_UNITS = 30
RAO_BLACKWELL_MODES = ("none", "z2", "symmetric")

# ``across(w, rows, cols) -> [...]``: an estimate of Σ_{e across groups} w_e E_q[z_i z_j] for the
# coupling block w [r, c] from the earlier units ``rows`` to the later units ``cols`` (index
# arrays or slices of the latent vector). The estimate is the training method's (objectives).
Across = Callable[[Array, Any, Any], Array]


@runtime_checkable
class Prior(Protocol):
  """The operations every prior offers. Shapes: z, ζ, μ [..., n] (n = ``num_units``); chains
  z [S, n], 0/1 in ``dtype``; log_z a scalar log Z (exact, AIS/PA, or the training surrogate)."""

  @property
  def num_units(self) -> int:
    """n, the width of the latent vector."""

  @property
  def dtype(self):
    """The parameters' dtype (that of chains and energies)."""

  @property
  def needs_sampler(self) -> bool:
    """Whether log Z needs a sampler (Boltzmann machines) or is analytic (factorial): without one,
    ``log_prob`` and the relaxed log-probabilities ignore ``log_z``."""

  def check(self) -> None:
    """Raises ValueError for inconsistent parameter shapes."""

  # ---- the discrete model (math.md §2)
  def energy(self, z: Array) -> Array:
    """E(z): [..., n] → [...]; p(z) = e^{−E(z)} / Z. Defined for relaxed ζ ∈ [0, 1]^n too."""

  def log_prob(self, z: Array, log_z: Array | None) -> Array:
    """log p(z) = −E(z) − log Z: [..., n] → [...]."""

  def training_log_partition(self, z: Array | None, log_z: Array | None) -> Array:
    """The training log Z of math.md §2 from model samples z [S, n]: value log_z, gradient the
    samples' mean sufficient statistics (analytic for a normalised prior)."""

  def rao_blackwellize(self, z: Array, mode: str) -> Array:
    """Samples [S, n] (or [2S, n]) for ``training_log_partition`` with conditional means in place
    of sampled units (``RAO_BLACKWELL_MODES``; 'none' is the identity for every kind)."""

  def exact_log_partition(self) -> Array:
    """Exact log Z by enumeration (small machines; tests, references)."""

  def exact_moments(self):
    """Exact E[s(z)] of the sufficient statistics (= ∇ log Z), a NamedTuple of arrays."""

  def sample_moments(self, z: Array):
    """Sample means of the sufficient statistics of chains z [S, n], as ``exact_moments``."""

  # ---- sampling (math.md §3)
  def colour_classes(self) -> tuple[np.ndarray, ...]:
    """The blocks of the Gibbs sweep, in sweep order: index arrays of units that share no
    coupling (a proper colouring)."""

  def init_chains(self, key: Array, num_chains: int) -> Array:
    """num_chains chains from the uniform distribution (exact at β = 0): [S, n]."""

  def run(self, key: Array, z: Array, num_sweeps: int, beta=1.0) -> Array:
    """num_sweeps block Gibbs sweeps of chains z [S, n] at inverse temperature β: [S, n]."""

  def run_with_energy(self, key: Array, z: Array, num_sweeps: int, beta=1.0):
    """num_sweeps (≥ 1) sweeps at β: (chains [S, n], E(chains) [S] at β = 1). No input checks."""

  # ---- relaxations (math.md §4)
  def mean_field_log_partition(self, a: Array, num_iterations: int) -> Array:
    """Mean-field lower bound on log Σ_z exp(−E(z) + a·z), a [..., n] → [...]."""

  def field_log_partition_exact(self, a: Array) -> Array:
    """Exact log Σ_z exp(−E(z) + a·z) for one field a [n] (enumeration; small machines)."""

  def relaxed_log_prob(
    self, smoothing, zeta: Array, log_z: Array | None, num_iterations: int, exact: bool
  ) -> Array:
    """log p(ζ) of the overlapping-smoothing relaxation (DVAE#): [..., n] → [...]."""

  def gaussian_integral_lambda(self, beta: float) -> Array:
    """λ = max(σ_max(W_f) + GI_EIGEN_MARGIN, β) under stop-gradient."""

  def gaussian_integral_log_prob(self, zeta: Array, beta: float, log_z: Array | None) -> Array:
    """log p(ζ) of the Gaussian-integral relaxation: [..., n] → [...]."""

  def expected_neg_energy(self, mu: Array, num_groups: int, across: Across) -> Array:
    """An estimate of E_q[−E(z)] for a hierarchical posterior of ``num_groups`` equal groups with
    means μ [..., n]: the linear term b·μ, μ_i μ_j for the couplings inside a group, and
    ``across`` for the couplings from an earlier group to a later one. [...]."""

  def coupling_sum_of_squares(self) -> Array:
    """Σ w² over the couplings (the prior's share of the weight decay, math.md §2); 0 without."""

  def graph_machine(self):
    """The prior as a ``graph.BoltzmannMachine`` (for dimod export); ValueError if it has none."""


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
# Checks and small shared pieces.


def check_width(prior: Prior, v: Array, what: str = "input") -> None:
  """Raises ValueError unless ``v``'s trailing dimension is the prior's n."""
  n = prior.num_units
  if v.shape[-1:] != (n,):
    raise ValueError(f"{what}: expected a trailing dimension of {n}, got shape {v.shape}")


def check_chains(prior: Prior, z: Array, what: str = "chains") -> None:
  """Raises ValueError unless ``z`` is [S, n] for the prior's n (and the prior is consistent)."""
  prior.check()
  n = prior.num_units
  if z.ndim != 2 or z.shape[1] != n:
    raise ValueError(f"{what} have shape {tuple(z.shape)}; expected [S, {n}] for this prior")


def check_num_iterations(num_iterations: int) -> None:
  if num_iterations < 1:
    raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")


def boltzmann_log_prob(prior: Prior, z: Array, log_z: Array | None) -> Array:
  """−E(z) − log Z of a Boltzmann prior (``log_z`` required)."""
  if log_z is None:
    raise ValueError(
      "the log-probability of a Boltzmann prior needs log_z (exact, AIS or the training surrogate)"
    )
  return -prior.energy(z) - log_z


def log_partition_surrogate(prior: Prior, z: Array, log_z: Array) -> Array:
  """The training log Z of math.md §2: value log_z, gradient the model expectation from samples.

    logZ_train = sg(log_z) + mean_s(−E(z_s)) − sg(mean_s(−E(z_s))).

  −E is linear in the parameters, so the gradient is the sample average of the sufficient
  statistics, an unbiased estimate of ∇ log Z when z [S, n] are drawn from p. The samples and
  log_z are treated as constants. Returns a scalar equal to log_z.
  """
  if z is None or log_z is None:
    raise ValueError("a Boltzmann prior's training log Z needs model samples z [S, n] and log_z")
  check_width(prior, z, "samples")
  if z.ndim != 2:
    raise ValueError(f"expected samples z [S, n], got shape {z.shape}")
  neg_e = jnp.mean(-prior.energy(lax.stop_gradient(z)))
  return lax.stop_gradient(log_z) + neg_e - lax.stop_gradient(neg_e)


def rao_blackwell_none_only(z: Array, mode: str, kind: str) -> Array:
  """``rao_blackwellize`` of a kind without the RBM's two sides: 'none' only."""
  if mode not in RAO_BLACKWELL_MODES:
    raise ValueError(f"unknown Rao-Blackwell mode {mode!r}; choose one of {RAO_BLACKWELL_MODES}")
  if mode != "none":
    raise ValueError(
      f"Rao-Blackwell mode {mode!r} needs an RBM prior (two sides), got {kind}; use "
      "rao_blackwell='none'"
    )
  return z


def relaxed_fields(smoothing, zeta: Array) -> tuple[Array, Array]:
  """b(ζ) = log r(ζ|1) − log r(ζ|0) [..., n] and Σ_i log r(ζ_i|0) [...] (math.md §4)."""
  b = smoothing_lib.log_ratio(smoothing, zeta)
  return b, jnp.sum(smoothing_lib.log_r0(smoothing, zeta), axis=-1)


def boltzmann_relaxed_log_prob(
  prior: Prior, smoothing, zeta: Array, log_z: Array | None, num_iterations: int, exact: bool
) -> Array:
  """log p(ζ) = log Z_ζ − log Z of the augmented machine of an overlapping smoothing (math.md §4).

  p(z, ζ) = e^{−E(z)} Π_i r(ζ_i|z_i) / Z, so Z_ζ = Σ_z exp(−E(z) + b(ζ)·z) Π_i r(ζ_i|0): log Z_ζ is
  the machine's log-partition with the extra fields b(ζ) (mean field, a lower bound; or
  enumeration with ``exact``) plus Σ_i log r(ζ_i|0).
  """
  check_width(prior, zeta, "zeta")
  if log_z is None:
    raise ValueError("relaxed_log_prob of a Boltzmann prior needs log_z")
  b, c = relaxed_fields(smoothing, zeta)
  if exact:
    batch = zeta.shape[:-1]
    flat = jax.vmap(prior.field_log_partition_exact)(b.reshape(-1, b.shape[-1]))
    return flat.reshape(batch) + c - log_z
  return prior.mean_field_log_partition(b, num_iterations) + c - log_z


# --------------------------------------------------------------------------------------------------
# Algorithms for a Boltzmann machine given by its biases b [n] and a dense symmetric coupling matrix
# W_f [n, n] (zero diagonal): E(z) = −bᵀz − ½ zᵀW_f z. The graph machine uses them, and so can any
# new dense kind.


def dense_energy(b: Array, w_f: Array, z: Array) -> Array:
  """E(z) = −b·z − ½ zᵀW_f z: [..., n] → [...]."""
  return -(z @ b) - 0.5 * jnp.sum((z @ w_f) * z, -1)


def colour_mean_field_log_partition(
  b: Array, w_f: Array, classes: Sequence[np.ndarray], a: Array, num_iterations: int
) -> Array:
  """Mean-field lower bound on log Σ_z exp(−E(z) + a·z) over a proper colouring (math.md §4).

  The magnetisations start at 0.5; one iteration is one pass over the colour classes in order,
  each colour updated at once from the newest values of the others,
    m_c ← σ(b_c + a_c + (W_f m)_c),
  under stop-gradient. Then log Ẑ = (b + a)·m + ½ mᵀW_f m + H(m), a lower bound for any m ∈ [0, 1]^n
  (Gibbs' inequality with the factorial q), exact when W_f = 0. Gradients flow through the energy
  at fixed m (envelope theorem). Dense: O(batch · n²) per iteration, fine for n ≲ 2000.

  Args:
    b: [n] biases.
    w_f: [n, n] symmetric coupling matrix with zero diagonal.
    classes: the colour classes (index arrays), in update order.
    a: [..., n] extra fields.
    num_iterations: passes over the colours (>= 1).

  Returns:
    ``[...]`` log Ẑ.
  """
  check_num_iterations(num_iterations)
  h = b + a
  h_sg, w_f_sg = lax.stop_gradient((h, w_f))
  classes = [jnp.asarray(c) for c in classes]

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


def dense_gaussian_integral_lambda(w_f: Array, beta: float) -> Array:
  """λ = max(σ_max(W_f) + GI_EIGEN_MARGIN, β) under stop-gradient (σ_max: largest |eigenvalue|).

  λ is a parameter of the relaxation, not of the discrete model: p(z) is the same for every λ, so
  it is held fixed when differentiating (math.md §4).
  """
  eigenvalues = jnp.linalg.eigvalsh(lax.stop_gradient(w_f))
  return jnp.maximum(jnp.max(jnp.abs(eigenvalues)) + GI_EIGEN_MARGIN, beta)


def dense_gaussian_integral_log_prob(
  b: Array, w_f: Array, zeta: Array, beta: float, log_z: Array | None
) -> Array:
  """log p(ζ) of the Gaussian-integral relaxation of a dense machine (math.md §4).

  With A = W_f + λI (positive definite since λ > σ_max(W_f)) and p(z, ζ) = p(z) N(ζ; z, A⁻¹), the
  quadratic zᵀW_f z cancels (zᵀz = Σ z_i for binary z) and the sum over z factorises:
    log p(ζ) = −log Z + ½ log det(A/2π) − ½ζᵀAζ + Σ_i softplus((Aζ)_i + b_i − λ/2).
  log det A from the Cholesky factor of the dense [n, n] A (O(n³), fine for n ≲ 2000). The
  derivation in full is in ``rbm.RBM.gaussian_integral_log_prob``.
  """
  if log_z is None:
    raise ValueError("gaussian_integral_log_prob of a Boltzmann prior needs log_z")
  n = zeta.shape[-1]
  lam = dense_gaussian_integral_lambda(w_f, beta)
  a_mat = w_f + lam * jnp.eye(n, dtype=zeta.dtype)
  # ½ log det(A/2π) = ½ log det A − (n/2) log 2π; log det A = 2 Σ log diag(chol(A)).
  log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(a_mat))))
  a_zeta = zeta @ a_mat  # A is symmetric
  quad = jnp.sum(zeta * a_zeta, -1)
  soft = jnp.sum(jax.nn.softplus(a_zeta + b - 0.5 * lam), -1)
  return -log_z + 0.5 * log_det - 0.5 * n * math.log(2.0 * math.pi) - 0.5 * quad + soft


def group_couplings(w_f: Array, num_groups: int) -> tuple[Array, Array]:
  """A dense coupling matrix split by the encoder groups: (W_later, W_same), each [n, n].

  Group g holds units [g·n/G, (g+1)·n/G). (W_later)_ij = (W_f)_ij for g(i) < g(j) (rows the
  earlier end, zero elsewhere), W_same the couplings inside one group: Σ_{e across} w_e u_i v_j =
  uᵀ W_later v and Σ_{e inside} w_e u_i u_j = ½ uᵀ W_same u.
  """
  n = w_f.shape[-1]
  if num_groups < 1 or n % num_groups:
    raise ValueError(f"{n} latent units cannot be split into {num_groups} equal groups")
  group = np.arange(n) // (n // num_groups)
  later = group[None, :] > group[:, None]
  same = group[None, :] == group[:, None]
  return w_f * later, w_f * same


def dense_expected_neg_energy(
  b: Array, w_f: Array, mu: Array, num_groups: int, across: Across
) -> Array:
  """``Prior.expected_neg_energy`` of a dense machine: b·μ + across(W_later, :, :) + ½ μᵀW_same μ
  (no couplings across groups with one group)."""
  w_later, w_same = group_couplings(w_f, num_groups)
  within = 0.5 * jnp.sum((mu @ w_same) * mu, -1)
  every = slice(None)
  cross = jnp.zeros_like(within) if num_groups == 1 else across(w_later, every, every)
  return mu @ b + cross + within


chunk_states = numerics.chunk_states


def enumerate_log_partition(energy: Callable[[Array], Array], n: int, dtype) -> Array:
  """log Σ_z exp(−E(z)) over all 2^n states by brute force (n ≤ 20: tests and new small kinds)."""
  if n > 20:
    raise ValueError(f"brute-force enumeration of 2^{n} states; n must be <= 20")
  states = chunk_states(jnp.zeros((), jnp.int32), 1 << n, n, dtype)
  return jax.nn.logsumexp(-energy(states))


def enumerate_moments(energy: Callable[[Array], Array], stats: Callable, n: int, dtype):
  """E_p[stats(z)] over all 2^n states by brute force (n ≤ 20); ``stats`` maps [N, n] to a pytree
  of [N, ...] arrays."""
  if n > 20:
    raise ValueError(f"brute-force enumeration of 2^{n} states; n must be <= 20")
  states = chunk_states(jnp.zeros((), jnp.int32), 1 << n, n, dtype)
  p = jax.nn.softmax(-energy(states))
  return jax.tree.map(lambda s: jnp.tensordot(p, s, axes=1), stats(states))
