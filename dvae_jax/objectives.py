"""Training objectives of DVAE, DVAE++ and DVAE# (MATH.md §4), one entry per method.

| name             | family        | posterior relaxation     | prior term                        |
|------------------|---------------|--------------------------|-----------------------------------|
| dvae             | dvae          | spike-and-exp            | discrete KL (Rolfe 2017 surrogate |
|                  |               |                          | gradient for > 1 group)           |
| dvae_pp_exp      | dvae_pp       | exponential              | discrete KL = CE − H with ν       |
| dvae_pp_power    | dvae_pp       | power function           | discrete KL = CE − H with ν       |
| dvae_sharp_exp   | dvae_sharp    | exponential              | relaxed marginal, mean-field Z_ζ  |
| dvae_sharp_unexp | dvae_sharp    | uniform+exponential      | relaxed marginal, mean-field Z_ζ  |
| dvae_sharp_gauss | dvae_sharp    | Gaussian                 | relaxed marginal, mean-field Z_ζ  |
| dvae_sharp       | dvae_sharp    | power function           | relaxed marginal, mean-field Z_ζ  |
| dvae_sharp_gi    | dvae_sharp_gi | shifted Gaussian mixture | Gaussian-integral marginal        |
| gumbolt          | gumbolt       | binary concrete (τ = β)  | −E(ζ) − log Z, discrete Z (proxy) |

``loss_fn`` is a pure function of the model (a merged NNX module), the prior pytree, the prior
sampler's samples and a PRNG key; the runner differentiates it with respect to the model's
``nnx.Param`` state and the prior. ``weight_decay`` is added by the runner (MATH.md §6).

Shapes: x [batch, pixels]; K = num_samples posterior samples per example; the latent vector
``zeta`` [K, batch, num_latent] is the concatenation of the groups. The hierarchy is walked by
``posterior.sample_hierarchy`` (the same loop as evaluation's), each group drawn by this module's
``relaxed_group_sampler``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import log_ndtr

from dvae_jax import models, numerics
from dvae_jax import posterior as posterior_lib
from dvae_jax import priors as priors_lib
from dvae_jax import rbm as rbm_lib
from dvae_jax import smoothing as smoothing_lib
from dvae_jax.graphs import machine as machine_lib

Array = jax.Array

FAMILY_DVAE = "dvae"
FAMILY_DVAE_PP = "dvae_pp"
FAMILY_DVAE_SHARP = "dvae_sharp"
FAMILY_DVAE_SHARP_GI = "dvae_sharp_gi"
FAMILY_GUMBOLT = "gumbolt"
# The families trained with the importance-weighted bound on relaxed samples (MATH.md §4).
_RELAXED_FAMILIES = (FAMILY_DVAE_SHARP, FAMILY_DVAE_SHARP_GI, FAMILY_GUMBOLT)

# Weight decay coefficient of MATH.md §2 and §6: 1e-4 · ½‖w‖².
WEIGHT_DECAY = 1e-4

_METHOD_TABLE: dict[str, tuple[str, Any]] = {
  "dvae": (FAMILY_DVAE, smoothing_lib.SpikeAndExp),
  "dvae_pp_exp": (FAMILY_DVAE_PP, smoothing_lib.Exponential),
  "dvae_pp_power": (FAMILY_DVAE_PP, smoothing_lib.PowerFunction),
  "dvae_sharp_exp": (FAMILY_DVAE_SHARP, smoothing_lib.Exponential),
  "dvae_sharp_unexp": (FAMILY_DVAE_SHARP, smoothing_lib.UniformExponential),
  "dvae_sharp_gauss": (FAMILY_DVAE_SHARP, smoothing_lib.Gaussian),
  "dvae_sharp": (FAMILY_DVAE_SHARP, smoothing_lib.PowerFunction),
  "dvae_sharp_gi": (FAMILY_DVAE_SHARP_GI, None),
  "gumbolt": (FAMILY_GUMBOLT, None),
}
METHODS: tuple[str, ...] = tuple(_METHOD_TABLE)


class Method(NamedTuple):
  """A training objective (MATH.md §4).

  Attributes:
    name: one of ``METHODS``.
    family: ``'dvae'``, ``'dvae_pp'``, ``'dvae_sharp'``, ``'dvae_sharp_gi'`` or ``'gumbolt'``.
    smoothing: the smoothing of ``dvae_jax.smoothing`` (``None`` for the Gaussian integral, whose
      posterior is the shifted Gaussian mixture of this module, and for GumBolt, whose relaxation
      is the binary concrete of ``sample_binary_concrete``).
    beta: the method's β of MATH.md §6: the sharpness of the smoothing (not an inverse
      temperature), or for ``dvae_sharp_gi`` the floor λ_min of the Gaussian integral's shift
      λ = max(σ_max(W) + 5, β) (MATH.md §4), or for ``gumbolt`` the concrete temperature τ
      (smaller is closer to discrete: the opposite direction to a smoothing's sharpness).
    mean_field_iterations: iterations of the mean-field log Z_ζ (DVAE# overlapping smoothings).
    relaxed_sampler: how relaxed samples of the overlapping smoothings are drawn (MATH.md §1):
      ``'ancestral'`` (z ~ Bern(q), ζ ~ r(·|z), implicit-gradient surrogate) or ``'inverse_cdf'``
      (ζ = F⁻¹(ρ; q) by the numerical solver with the implicit-gradient custom JVP). Both give the
      same joint law of (ζ, dζ/dq) — the implicit gradient is a function of (ζ, q) only — so the
      gradient estimators are identical in distribution; ancestral is 12–18× faster on CPU
      (benchmarks/smoothing_throughput.py), hence the default.
  """

  name: str
  family: str
  smoothing: Any
  beta: float
  mean_field_iterations: int = priors_lib.MEAN_FIELD_ITERATIONS
  relaxed_sampler: str = "ancestral"


RELAXED_SAMPLERS = ("ancestral", "inverse_cdf")


def get_method(
  name: str,
  beta: float,
  *,
  mean_field_iterations: int = priors_lib.MEAN_FIELD_ITERATIONS,
  relaxed_sampler: str = "ancestral",
) -> Method:
  """The method called ``name`` with its β (``Method.beta``: smoothing sharpness, λ_min for
  ``dvae_sharp_gi``, the concrete temperature τ for ``gumbolt``; MATH.md §4, §6 for the values)."""
  if name not in _METHOD_TABLE:
    raise ValueError(f"unknown method {name!r}; valid names: {', '.join(METHODS)}")
  if not beta > 0:
    raise ValueError(f"beta must be > 0, got {beta}")
  if mean_field_iterations < 1:
    raise ValueError(f"mean_field_iterations must be >= 1, got {mean_field_iterations}")
  if relaxed_sampler not in RELAXED_SAMPLERS:
    raise ValueError(
      f"unknown relaxed_sampler {relaxed_sampler!r}; valid: {', '.join(RELAXED_SAMPLERS)}"
    )
  family, smoothing_cls = _METHOD_TABLE[name]
  smoothing = None if smoothing_cls is None else smoothing_cls(beta=float(beta))
  return Method(name, family, smoothing, float(beta), mean_field_iterations, relaxed_sampler)


# --------------------------------------------------------------------------------------------------
# The shifted Gaussian mixture posterior of the Gaussian integral (MATH.md §4, §1).

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def shifted_gaussian_mixture_log_prob(
  zeta: Array, logits: Array, shift: Array, scale: Array
) -> Array:
  """log[(1 − q) N(ζ; Δμ, s²) + q N(ζ; 1 + Δμ, s²)] elementwise, q = σ(logits) (MATH.md §4)."""
  u0 = (zeta - shift) / scale
  u1 = u0 - 1.0 / scale
  mix = jnp.logaddexp(
    jax.nn.log_sigmoid(-logits) - 0.5 * u0**2, jax.nn.log_sigmoid(logits) - 0.5 * u1**2
  )
  return mix - jnp.log(scale) - _HALF_LOG_2PI


def _log_ndtr_diff(a: Array, b: Array) -> Array:
  """log(Φ(a) − Φ(b)) for a > b; uses Φ(−b) − Φ(−a) in the upper tail to avoid cancellation."""
  upper = (a + b) > 0
  hi = jnp.where(upper, -b, a)
  lo = jnp.where(upper, -a, b)
  log_hi = log_ndtr(hi)
  return log_hi + numerics.log1mexp(log_ndtr(lo) - log_hi)


def shifted_gaussian_mixture_dzeta_dq(
  zeta: Array, logits: Array, shift: Array, scale: Array
) -> Array:
  """Implicit derivative dζ/dq = (R0(ζ) − R1(ζ)) / q(ζ) of the shifted mixture (MATH.md §1).

  R0, R1 are the component CDFs Φ((ζ − Δμ)/s), Φ((ζ − 1 − Δμ)/s) and q(ζ) the mixture density;
  computed in log space, so it stays finite wherever the density is positive.
  """
  u0 = (zeta - shift) / scale
  log_diff = _log_ndtr_diff(u0, u0 - 1.0 / scale)
  return jnp.exp(log_diff - shifted_gaussian_mixture_log_prob(zeta, logits, shift, scale))


def sample_shifted_gaussian_mixture(key: Array, logits: Array, shift: Array, scale: Array) -> Array:
  """ζ = z + Δμ + s·ε, z ~ Bernoulli(σ(logits)), ε ~ N(0, 1), with the implicit q-gradient.

  Ancestral form of MATH.md §1: z carries no gradient; the surrogate
  ζ + sg(dζ/dq)·q − sg(sg(dζ/dq)·q) attaches the implicit gradient with respect to q, while Δμ and s
  get their pathwise gradients (dζ/dΔμ = 1, dζ/ds = ε), which are unbiased for the implicit ones.

  Args:
    key: PRNG key.
    logits: [...] Bernoulli logits l.
    shift: [...] Δμ (broadcastable).
    scale: [...] s > 0 (broadcastable).

  Returns:
    [...] samples, the shape of ``logits``.
  """
  key_z, key_eps = jax.random.split(key)
  q = jax.nn.sigmoid(logits)
  z = jax.random.uniform(key_z, logits.shape, logits.dtype) < lax.stop_gradient(q)
  eps = jax.random.normal(key_eps, logits.shape, logits.dtype)
  zeta = z.astype(logits.dtype) + shift + scale * eps
  dzeta_dq = lax.stop_gradient(shifted_gaussian_mixture_dzeta_dq(zeta, logits, shift, scale))
  return zeta + dzeta_dq * q - lax.stop_gradient(dzeta_dq * q)


# --------------------------------------------------------------------------------------------------
# GumBolt's binary concrete relaxation (Khoshaman & Amin 2018; Maddison et al. 2017).


def sample_binary_concrete(key: Array, logits: Array, temperature: float) -> Array:
  """ζ = σ((l + log u − log(1 − u)) / τ), u ~ U(0, 1): the binary concrete relaxation of
  Bernoulli(σ(l)), reparameterised (pathwise gradient in l). As τ → 0, ζ → z = 1[l + L > 0] ~
  Bernoulli(σ(l)). Shapes: ``logits`` [...] → [...]."""
  noise = jax.random.logistic(key, logits.shape, logits.dtype)
  return jax.nn.sigmoid((logits + noise) / temperature)


def gumbolt_log_q(zeta: Array, logits: Array) -> Array:
  """GumBolt's proxy posterior log q̆(ζ|x) = Σ_i ζ_i log q_i + (1 − ζ_i) log(1 − q_i): the discrete
  Bernoulli log-probability at the relaxed ζ (not the concrete density, which diverges as τ → 0).
  [..., n] → [...]."""
  return jnp.sum(priors_lib.bernoulli_log_prob(zeta, logits), -1)


# --------------------------------------------------------------------------------------------------
# The relaxed hierarchical posterior (MATH.md §4).


def _sample_relaxed_group(
  key: Array, method: Method, enc: models.GroupEncoding, scale: Array | None
) -> posterior_lib.GroupSample:
  """One group's relaxed (ζ, logits, log q, z) from its encoder output ``enc``."""
  logits = enc.logits
  if method.family == FAMILY_GUMBOLT:
    zeta = sample_binary_concrete(key, logits, method.beta)
    return posterior_lib.GroupSample(zeta, logits, gumbolt_log_q(zeta, logits), None)
  if method.family == FAMILY_DVAE_SHARP_GI:
    shift = models.gaussian_shift(enc.shift_logits)
    zeta = sample_shifted_gaussian_mixture(key, logits, shift, scale)
    log_q = jnp.sum(shifted_gaussian_mixture_log_prob(zeta, logits, shift, scale), -1)
    return posterior_lib.GroupSample(zeta, logits, log_q, None)
  s = method.smoothing
  if method.family == FAMILY_DVAE:
    # Spike-and-exp: z = 1 exactly when ρ > 1 − q, the branch of the inverse CDF (MATH.md §1).
    rho = jax.random.uniform(key, logits.shape, logits.dtype)
    q = jax.nn.sigmoid(logits)
    zeta = smoothing_lib.inverse_cdf(s, rho, q)
    z = (rho > 1.0 - lax.stop_gradient(q)).astype(logits.dtype)
    return posterior_lib.GroupSample(zeta, logits, None, z)
  if method.relaxed_sampler == "ancestral":
    zeta = smoothing_lib.sample_ancestral(s, key, logits)
  else:
    zeta = smoothing_lib.sample(s, key, logits)
  if method.family == FAMILY_DVAE_PP:
    return posterior_lib.GroupSample(zeta, logits, None, None)
  log_q = jnp.sum(smoothing_lib.mixture_log_prob_logits(s, zeta, logits), -1)
  return posterior_lib.GroupSample(zeta, logits, log_q, None)


def relaxed_group_sampler(method: Method, model: models.DVAENet) -> posterior_lib.SampleGroup:
  """The training ``sample_group`` of ``method`` for ``posterior.sample_hierarchy`` (MATH.md §4).

  Relaxed samples of the method's smoothing (``method.relaxed_sampler``: ancestral or numerical
  inverse CDF, both with the implicit gradient); the Gaussian integral always uses its ancestral
  shifted-mixture sampler with the model's per-unit scales. ``log_q`` is given for the DVAE#
  families, ``z`` for spike-and-exp.
  """
  gaussian_integral = method.family == FAMILY_DVAE_SHARP_GI
  if gaussian_integral and not model.gaussian_integral:
    raise ValueError(f"method {method.name!r} needs a DVAENet built with gaussian_integral=True")
  scale_all = model.gaussian_scale() if gaussian_integral else None
  units = model.spec.units_per_group

  def sample_group(key, group, enc):
    scale = None if scale_all is None else scale_all[group * units : (group + 1) * units]
    return _sample_relaxed_group(key, method, enc, scale)

  return sample_group


def sample_posterior(
  model: models.DVAENet, x: Array, key: Array, method: Method, num_samples: int = 1
) -> posterior_lib.PosteriorSample:
  """K relaxed samples of the hierarchical posterior (MATH.md §4): ``posterior.sample_hierarchy``
  with ``relaxed_group_sampler(method, model)``.

  Args:
    model: the network (train or eval mode as set on the module).
    x: [batch, pixels] data.
    key: one PRNG key for the whole batch.
    method: from ``get_method``.
    num_samples: K.

  Returns:
    ``posterior.PosteriorSample`` with leading dimensions [K, batch]: relaxed ζ, logits, log q(ζ|x)
    (DVAE# families; else ``None``) and the binary z behind ζ (spike-and-exp; else ``None``).
  """
  sample_group = relaxed_group_sampler(method, model)
  return posterior_lib.sample_hierarchy(model, x, key, num_samples, sample_group)


def reconstruction_log_prob(model: models.DVAENet, zeta: Array, x: Array) -> Array:
  """log p(x|ζ) summed over pixels: ``zeta`` [K, batch, n], x [batch, pixels] → [K, batch]."""
  k, batch, n = zeta.shape
  logits = model.decode(zeta.reshape(k * batch, n)).reshape(k, batch, -1)
  return jnp.sum(priors_lib.bernoulli_log_prob(x, logits), axis=-1)


# --------------------------------------------------------------------------------------------------
# DVAE / DVAE++ KL terms (MATH.md §4).


def dvae_pp_cross_entropy(m: rbm_lib.RBM, logits: Array, nu1: Array, log_z: Array) -> Array:
  """DVAE++ cross-entropy CE = −b1·μ1 − b2·μ2 − ν1ᵀ W μ2 + log Z (MATH.md §4).

  Args:
    m: the RBM.
    logits: [..., n] posterior logits (μ = σ(logits)).
    nu1: [..., n1] E[z1 | ζ1] (= μ1 with one group, mean field).
    log_z: scalar log Z (the training surrogate for gradients).

  Returns:
    [...] cross-entropies.
  """
  mu1, mu2 = priors_lib.split_sides(m, jax.nn.sigmoid(logits))
  return -(mu1 @ m.b1 + mu2 @ m.b2 + jnp.sum((nu1 @ m.w) * mu2, -1)) + log_z


def dvae_cross_term(m: rbm_lib.RBM, z1: Array, logits1: Array, mu2: Array) -> Array:
  """E_q[z1ᵀ W z2] of a hierarchical spike-and-exp posterior: Rolfe (2017) eqs. 11–12 (MATH.md §4).

  Every unit of z1 belongs to a group no later than every unit of z2, so q_j (j in z2) depends on
  ζ_i (i in z1) but not the other way round. With ρ_i uniform, z_i = 1[ρ_i > 1 − q_i] and ζ_i
  continuous in ρ_i (ζ_i = 0 at the switch),
    ∂/∂φ E[z_i z_j] = E[ (1 − z_i)/(1 − q_i) · q_j · ∂q_i/∂φ + z_i · ∂q_j/∂φ ],
  the first term being the boundary term of the moving threshold (q_j at ζ_i = 0, i.e. on the
  z_i = 0 samples) and the second the pathwise term. The returned value is the unbiased
  single-sample estimate Σ_ij z_i W_ij q_j; its gradient is that of the surrogate
    Σ_i q_i · sg((1 − z_i)/(1 − q_i) Σ_j W_ij q_j) + Σ_ij sg(z_i) W_ij q_j
  (W gets the gradient z_i q_j from the second term only).

  Args:
    m: the RBM.
    z1: [..., n1] binary states of the first side (no gradient).
    logits1: [..., n1] their posterior logits.
    mu2: [..., n2] posterior means of the second side given the earlier relaxed samples.

  Returns:
    [...] estimates of E[z1ᵀ W z2].
  """
  return _rolfe_cross_term(m.w, z1, logits1, mu2)


def _rolfe_cross_term(w: Array, z1: Array, logits1: Array, mu2: Array) -> Array:
  """``dvae_cross_term`` for a coupling matrix w [n1, n2] whose rows are earlier units than its
  columns (rows ``z1``/``logits1`` [..., n1], columns ``mu2`` [..., n2]); zero entries are fine."""
  z1 = lax.stop_gradient(z1)
  q1 = jax.nn.sigmoid(logits1)
  # (1 − z)/(1 − q) = (1 − z)(1 + e^l); the exponent is clamped where z = 1 (where it is unused)
  # so that no inf·0 appears; a z = 0 draw with l > 80 has probability < e^-80.
  inv_one_minus_q = 1.0 + jnp.exp(jnp.where(z1 > 0, 0.0, jnp.minimum(logits1, 80.0)))
  boundary = lax.stop_gradient((1.0 - z1) * inv_one_minus_q * (mu2 @ w.T))
  surrogate = jnp.sum(q1 * boundary, -1) + jnp.sum((z1 @ w) * mu2, -1)
  value = jnp.sum((z1 @ w) * mu2, -1)
  return lax.stop_gradient(value) + surrogate - lax.stop_gradient(surrogate)


def group_couplings(m: machine_lib.BoltzmannMachine, num_groups: int) -> tuple[Array, Array]:
  """The graph machine's couplings split by the encoder groups: (W_later, W_same), each [n, n].

  Node k is latent unit k and group g holds units [g·n/G, (g+1)·n/G). (W_later)_ij = w_e for an
  edge e = (i, j) with g(i) < g(j) (rows the earlier end, zero elsewhere), and W_same the symmetric
  coupling matrix of the edges inside one group: Σ_{e across groups} w_e u_i v_j = uᵀ W_later v and
  Σ_{e inside groups} w_e u_i u_j = ½ uᵀ W_same u. Dense (n ≲ 2000). For ``graphs.from_rbm`` with
  G ≥ 2 groups, W_later = [[0, W], [0, 0]] and W_same = 0.
  """
  n = m.num_nodes
  if num_groups < 1 or n % num_groups:
    raise ValueError(f"{n} latent units cannot be split into {num_groups} equal groups")
  group = np.arange(n) // (n // num_groups)
  w_f = machine_lib.coupling_matrix(m)
  later = group[None, :] > group[:, None]
  same = group[None, :] == group[:, None]
  return w_f * later, w_f * same


def discrete_kl(
  prior: priors_lib.Prior,
  log_z: Array | None,
  post: posterior_lib.PosteriorSample,
  method: Method,
  num_groups: int,
) -> Array:
  """KL(q(z|x) ‖ p(z)) for DVAE and DVAE++ from one posterior sample per row (MATH.md §4).

  RBM prior: KL = CE − H, H = Σ_i H_Bernoulli(q_i) over all groups (conditionals given the earlier
  relaxed samples). One group: CE with ν1 = μ1 (mean field, exact). Several groups: DVAE++ uses
  ν1 = σ(l1 + b(ζ1)), E[z1|ζ1] under the overlapping smoothing; DVAE uses the Rolfe (2017) gradient
  surrogate of ``dvae_cross_term``. Factorial prior: Σ_i KL(Bernoulli(q_i) ‖ Bernoulli(p_i)).

  Graph machine prior (node k = unit k, ``group_couplings``): CE = −b·μ − Σ_e w_e T_e + log Z with
  T_e an unbiased estimate of E_q[z_i z_j] for the edge e = (i, j):
  - i, j in one group g: given ζ_<g the group is factorial, so E[z_i z_j | ζ_<g] = μ_i μ_j;
  - g(i) < g(j): q(z_j | ζ_<g(j)) = μ_j, and given ζ_<g(j) the unit z_i depends on the later
    relaxed samples only through its own ζ_i, so E[z_i | ζ_<g(j)] = σ(l_i + b(ζ_i)) = ν_i and
    E[z_i z_j] = E[ν_i μ_j] (DVAE++); for DVAE, z_i μ_j with Rolfe's boundary + pathwise gradient
    surrogate (``dvae_cross_term`` with W_later).
  With one group every edge is of the first kind. This is the RBM's CE for ``graphs.from_rbm``
  (every edge joins an earlier z1 unit to a later z2 unit: ν1ᵀ W μ2, or the Rolfe term), and the
  RBM code path is kept for the RBM (its dense sides are cheaper).

  Returns:
    [K, batch] KL estimates (their gradient is the KL gradient).
  """
  logits = post.logits
  if isinstance(prior, priors_lib.FactorialBernoulli):
    return jnp.sum(priors_lib.bernoulli_kl(logits, prior.logits), -1)
  entropy = jnp.sum(priors_lib.bernoulli_entropy(logits), -1)
  if isinstance(prior, machine_lib.BoltzmannMachine):
    return _graph_cross_entropy(prior, log_z, post, method, num_groups) - entropy
  logits1, _ = priors_lib.split_sides(prior, logits)
  if method.family == FAMILY_DVAE and num_groups > 1:
    mu1, mu2 = priors_lib.split_sides(prior, jax.nn.sigmoid(logits))
    z1, _ = priors_lib.split_sides(prior, post.z)
    cross = dvae_cross_term(prior, z1, logits1, mu2)
    ce = -(mu1 @ prior.b1 + mu2 @ prior.b2 + cross) + log_z
    return ce - entropy
  if num_groups == 1:
    nu1 = jax.nn.sigmoid(logits1)
  else:
    zeta1, _ = priors_lib.split_sides(prior, post.zeta)
    nu1 = jax.nn.sigmoid(logits1 + smoothing_lib.log_ratio(method.smoothing, zeta1))
  return dvae_pp_cross_entropy(prior, logits, nu1, log_z) - entropy


def _graph_cross_entropy(
  m: machine_lib.BoltzmannMachine,
  log_z: Array,
  post: posterior_lib.PosteriorSample,
  method: Method,
  num_groups: int,
) -> Array:
  """−E_q[log p(z)] for a graph machine prior, [K, batch] (the estimate of ``discrete_kl``)."""
  logits = post.logits
  mu = jax.nn.sigmoid(logits)
  w_later, w_same = group_couplings(m, num_groups)
  within = 0.5 * jnp.sum((mu @ w_same) * mu, -1)
  if num_groups == 1:
    across = jnp.zeros_like(within)
  elif method.family == FAMILY_DVAE:
    across = _rolfe_cross_term(w_later, post.z, logits, mu)
  else:
    nu = jax.nn.sigmoid(logits + smoothing_lib.log_ratio(method.smoothing, post.zeta))
    across = jnp.sum((nu @ w_later) * mu, -1)
  return -(mu @ m.b + across + within) + log_z


# --------------------------------------------------------------------------------------------------
# The loss.


def relaxed_log_prior(prior: priors_lib.Prior, zeta: Array, log_z: Array, method: Method) -> Array:
  """log p(ζ) of the relaxed prior for ``method`` (MATH.md §4), [..., n] → [...].

  GumBolt: the proxy −E(ζ) − log Z with the discrete log Z (not normalised over continuous ζ; it
  tends to the discrete log p(z) as τ → 0).
  """
  if method.family == FAMILY_GUMBOLT:
    return priors_lib.discrete_log_prob(prior, zeta, log_z)
  if method.family == FAMILY_DVAE_SHARP_GI:
    return priors_lib.gaussian_integral_log_prob(prior, zeta, method.beta, log_z)
  if method.family != FAMILY_DVAE_SHARP:
    raise ValueError(f"method {method.name!r} has no relaxed prior (it uses the discrete KL)")
  return priors_lib.relaxed_log_prob(
    prior, method.smoothing, zeta, log_z, num_iterations=method.mean_field_iterations
  )


def iw_loss(log_w: Array, weight_log_w: Array | None = None) -> Array:
  """−mean_x Σ_k sg(softmax_k(log w)) log w_k, ``log_w`` [K, batch] (MATH.md §4).

  Its gradient equals that of −mean_x log (1/K) Σ_k w_k (the IWAE gradient); with K = 1 it is the
  negative ELBO.

  ``weight_log_w`` [K, batch], if given, is what the weights are computed from: ``log_w`` plus a
  constant per example (the softmax is shift-invariant, so in exact arithmetic nothing changes).
  ``loss_fn`` passes the log weights without the prior's log Z, so that the weights — and with
  them the training trajectory — do not depend on the value of the training log Z, which only
  shifts ``log_w`` and whose rounding would otherwise move every K > 1 run.
  """
  if weight_log_w is None:
    weight_log_w = log_w
  elif weight_log_w.shape != log_w.shape:
    raise ValueError(f"weight_log_w {weight_log_w.shape} must have log_w's shape {log_w.shape}")
  weights = lax.stop_gradient(jax.nn.softmax(weight_log_w, axis=0))
  return -jnp.mean(jnp.sum(weights * log_w, axis=0))


class RelaxedTerms(NamedTuple):
  """Per-sample terms of the DVAE# objective, each [K, batch] (MATH.md §4)."""

  log_px: Array
  log_prior: Array
  log_q: Array


def relaxed_terms(
  model: models.DVAENet,
  prior: priors_lib.Prior,
  log_z: Array,
  x: Array,
  key: Array,
  method: Method,
  num_samples: int = 1,
) -> RelaxedTerms:
  """log p(x|ζ_k), log p(ζ_k), log q(ζ_k|x) for K relaxed posterior samples (DVAE#, GumBolt; §4).

  ``log_z`` is the scalar log Z of the Boltzmann prior (for gradients, the training surrogate of
  ``training_log_partition``); the log weights are ``kappa * (log_prior - log_q) + log_px``.
  """
  if method.family not in _RELAXED_FAMILIES:
    raise ValueError(f"method {method.name!r} has no relaxed prior (it uses the discrete KL)")
  post = sample_posterior(model, x, key, method, num_samples)
  log_px = reconstruction_log_prob(model, post.zeta, x)
  return RelaxedTerms(log_px, relaxed_log_prior(prior, post.zeta, log_z, method), post.log_q)


def training_log_partition(prior: priors_lib.Prior, prior_samples) -> Array:
  """The training log Z of MATH.md §2 from the sampler's samples (analytic for the factorial prior).

  Args:
    prior: ``rbm.RBM``, ``graphs.BoltzmannMachine`` or ``priors.FactorialBernoulli``.
    prior_samples: ``(z1 [S, n1], z2 [S, n2], log_z)`` or an object with those attributes (a sampler
      state); for a graph machine z1 = z [S, n] holds the whole state and z2 is empty [S, 0] (or
      ``None``); ignored for the factorial prior.
  """
  if isinstance(prior, priors_lib.FactorialBernoulli):
    return jnp.sum(jax.nn.softplus(prior.logits))
  if prior_samples is None:
    raise ValueError("a Boltzmann prior needs prior_samples = (z1 [S, n1], z2 [S, n2], log_z)")
  if all(hasattr(prior_samples, a) for a in ("z1", "z2", "log_z")):
    z1, z2, log_z = prior_samples.z1, prior_samples.z2, prior_samples.log_z
  else:
    z1, z2, log_z = prior_samples
  if isinstance(prior, machine_lib.BoltzmannMachine):
    if z2 is not None and z2.shape[-1] != 0:
      raise ValueError(
        "a graph prior's samples are (z [S, n], an empty [S, 0], log_z); got a second part of "
        f"shape {z2.shape}"
      )
    return machine_lib.log_partition_surrogate(prior, z1, log_z)
  return rbm_lib.log_partition_surrogate(prior, z1, z2, log_z)


def log_z_sensitivity(kappa: float) -> dict[str, float]:
  """d(value)/d(log Z) of each output of ``loss_fn`` that depends on the training log Z's value.

  Every one is linear in it (MATH.md §2, §4): ``log_z``, ``kl``, ``neg_elbo`` and ``neg_iw_bound``
  move by Δlog Z, ``log_prior`` by −Δlog Z and the loss by κ Δlog Z (in the DVAE# family the
  importance weights are computed without log Z and sum to 1). So a caller holding a better
  estimate of log Z for the same prior re-expresses a step's reported values exactly, without
  recomputing them (``experiments.sampler_monitor``). Keys absent from a method's terms are simply
  not there to shift; ``recon`` and ``log_q`` do not depend on log Z.
  """
  return {
    "loss": float(kappa),
    "log_z": 1.0,
    "kl": 1.0,
    "neg_elbo": 1.0,
    "neg_iw_bound": 1.0,
    "log_prior": -1.0,
  }


def loss_fn(
  model: models.DVAENet,
  prior: priors_lib.Prior,
  prior_samples,
  x: Array,
  key: Array,
  method: Method,
  num_samples: int = 1,
  kappa: Array | float = 1.0,
) -> tuple[Array, dict[str, Array]]:
  """The training loss of ``method`` on a batch (MATH.md §4).

  DVAE, DVAE++: mean over the K samples and the batch of −log p(x|ζ) + κ·KL. DVAE#, GumBolt: the
  importance-weighted bound with log w_k = κ[log p(ζ_k) − log q(ζ_k|x)] + log p(x|ζ_k) (the relaxed
  ELBO for K = 1); for GumBolt log p and log q are the proxies −E(ζ) − log Z and ``gumbolt_log_q``.

  Args:
    model: the network (BatchNorm in training mode normally; batch statistics are updated in place).
    prior: ``rbm.RBM``, ``graphs.BoltzmannMachine`` or ``priors.FactorialBernoulli``.
    prior_samples: ``(z1 [S, n1], z2 [S, n2], log_z)`` (or a sampler state with those attributes)
      for the training log Z (a graph machine: ``(z [S, n], empty [S, 0], log_z)``); ignored (may
      be ``None``) for the factorial prior.
    x: [batch, pixels] binary data (float).
    key: one PRNG key for the whole batch.
    method: from ``get_method``.
    num_samples: K.
    kappa: KL warm-up weight κ.

  Returns:
    ``(loss, terms)``: the scalar loss and a dict of scalar diagnostics, batch means at κ = 1 (no
    gradient): ``recon`` (−log p(x|ζ)), ``kl``, ``neg_elbo`` (= recon + kl), ``log_z`` (the value
    used), and for DVAE# and GumBolt also ``log_prior``, ``log_q`` and ``neg_iw_bound`` (−log of the
    mean importance weight).
  """
  if priors_lib.num_units(prior) != model.spec.num_latent:
    raise ValueError(
      f"prior has {priors_lib.num_units(prior)} units, the model {model.spec.num_latent} latents"
    )
  log_z = training_log_partition(prior, prior_samples)
  terms = {"log_z": log_z}
  if method.family in (FAMILY_DVAE, FAMILY_DVAE_PP):
    post = sample_posterior(model, x, key, method, num_samples)
    log_px = reconstruction_log_prob(model, post.zeta, x)
    kl = discrete_kl(prior, log_z, post, method, model.spec.num_groups)
    loss = jnp.mean(-log_px + kappa * kl)
    terms["kl"] = jnp.mean(kl)
  else:
    if isinstance(prior, priors_lib.FactorialBernoulli):
      t = relaxed_terms(model, prior, log_z, x, key, method, num_samples)
      weight_log_w = None  # Normalised analytically: no log Z in log p(ζ).
    else:
      # log p(ζ) + log Z first, then − log Z: the importance weights come from the former, so the
      # trajectory does not depend on the training log Z's value (iw_loss), only on its gradient.
      t = relaxed_terms(model, prior, jnp.zeros_like(log_z), x, key, method, num_samples)
      weight_log_w = kappa * (t.log_prior - t.log_q) + t.log_px
      t = t._replace(log_prior=t.log_prior - log_z)
    log_px = t.log_px
    loss = iw_loss(kappa * (t.log_prior - t.log_q) + t.log_px, weight_log_w)
    terms["log_prior"] = jnp.mean(t.log_prior)
    terms["log_q"] = jnp.mean(t.log_q)
    terms["kl"] = terms["log_q"] - terms["log_prior"]
    terms["neg_iw_bound"] = -jnp.mean(numerics.log_mean_exp(t.log_px + t.log_prior - t.log_q))
  terms["recon"] = -jnp.mean(log_px)
  terms["neg_elbo"] = terms["recon"] + terms["kl"]
  terms = {k: lax.stop_gradient(v) for k, v in terms.items()}
  return loss, terms


# --------------------------------------------------------------------------------------------------
# Weight decay (MATH.md §2, §6).


def _is_decayed(path) -> bool:
  names = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", "")))) for p in path]
  return "kernel" in names or ("norm" in names and "scale" in names)


def weight_decay(
  params, prior: priors_lib.Prior | None = None, coefficient: float = WEIGHT_DECAY
) -> Array:
  """coefficient · ½ Σ‖w‖² over dense kernels, BatchNorm scales and the prior's couplings.

  Args:
    params: the model's ``nnx.Param`` state (``nnx.state(model, nnx.Param)`` or the ``params`` of
      ``nnx.split(model, nnx.Param, nnx.BatchStat)``); leaves are selected by their path: ``kernel``
      of every Dense layer and ``scale`` of every BatchNorm (``norm``) layer.
    prior: ``rbm.RBM`` (its W is decayed), ``graphs.BoltzmannMachine`` (its edge couplings w, each
      edge once, so ``from_rbm`` gives the RBM's penalty) or ``FactorialBernoulli`` / ``None``
      (nothing).
    coefficient: 1e-4 in MATH.md §6.

  Returns:
    Scalar penalty to add to the loss.
  """
  leaves = [
    leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0] if _is_decayed(path)
  ]
  if not leaves:
    raise ValueError(
      "weight_decay found no dense kernel in params; pass nnx.state(model, nnx.Param)"
    )
  total = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
  if isinstance(prior, rbm_lib.RBM | machine_lib.BoltzmannMachine):
    total = total + jnp.sum(jnp.square(prior.w))
  return 0.5 * coefficient * total
