"""Tests of dvae_jax/objectives.py and dvae_jax/priors.py (math.md §2, §4, §6).

Every formula is checked against an independent computation: float64 NumPy/SciPy enumeration of the
binary states, Gauss–Legendre quadrature, or the expectation of a Monte-Carlo gradient against the
gradient of a quadrature (with tolerances from the standard error).
"""

import functools
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax
from scipy import stats
from scipy.special import expit, logsumexp

from dvae_jax import evaluation, models, objectives, posterior, priors, smoothing
from dvae_jax.graphs import machine
from dvae_jax.priors import rbm
from dvae_jax.samplers import ais_log_partition, make_prior_sampler

# ---- float64 NumPy references (from the table of math.md §1) -------------------------------------


def _np_log_r0(name, beta, zeta, eps=0.05):
  zeta = np.asarray(zeta, np.float64)
  if name == "exp":
    return np.log(beta) - beta * zeta - np.log1p(-np.exp(-beta))
  if name == "power":
    return -np.log(beta) + (1.0 / beta - 1.0) * np.log(zeta)
  if name == "gauss":
    return stats.norm.logpdf(zeta, 0.0, 1.0 / np.sqrt(beta))
  if name == "unexp":
    return np.log((1 - eps) * np.exp(_np_log_r0("exp", beta, zeta)) + eps)
  raise ValueError(name)


def _np_log_r1(name, beta, zeta):
  return _np_log_r0(name, beta, 1.0 - np.asarray(zeta, np.float64))


SMOOTHINGS = {
  "exp": (smoothing.Exponential, 12.0),
  "power": (smoothing.PowerFunction, 40.0),
  "gauss": (smoothing.Gaussian, 25.0),
  "unexp": (smoothing.UniformExponential, 16.0),
}


def _states(n):
  return np.array(list(itertools.product([0.0, 1.0], repeat=n)))


def _random_rbm(rng, n1, n2, scale=1.0):
  return rbm.RBM(
    jnp.asarray(rng.normal(size=n1), jnp.float32),
    jnp.asarray(rng.normal(size=n2), jnp.float32),
    jnp.asarray(scale * rng.normal(size=(n1, n2)), jnp.float32),
  )


def _np_neg_energy(m, z):
  b1, b2, w = (np.asarray(a, np.float64) for a in m)
  n1 = len(b1)
  return z[:, :n1] @ b1 + z[:, n1:] @ b2 + np.sum((z[:, :n1] @ w) * z[:, n1:], 1)


def _np_log_z(m):
  return logsumexp(_np_neg_energy(m, _states(m.n1 + m.n2)))


# ---- DVAE# relaxed marginal (math.md §4) ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMOOTHINGS))
def test_mean_field_is_a_lower_bound_on_exact_log_z_zeta(name):
  cls, beta = SMOOTHINGS[name]
  s = cls(beta=beta)
  rng = np.random.default_rng(0)
  m = _random_rbm(rng, 3, 4)
  lo, hi = (-0.4, 1.4) if name == "gauss" else (0.05, 0.95)
  zeta = rng.uniform(lo, hi, size=(6, 7))
  # Reference: Z_ζ = Σ_z exp(−E(z) + Σ_i log r(ζ_i|z_i)), all 2^7 states, float64.
  z = _states(7)
  log_r = np.where(
    z[:, None, :] > 0, _np_log_r1(name, beta, zeta)[None], _np_log_r0(name, beta, zeta)[None]
  )  # [128, 6, 7]
  exact = logsumexp(_np_neg_energy(m, z)[:, None] + log_r.sum(-1), axis=0)
  zeta32 = jnp.asarray(zeta, jnp.float32)
  np.testing.assert_allclose(
    m.relaxed_log_prob(s, zeta32, 0.0, exact=True), exact, rtol=1e-5, atol=1e-4
  )
  mean_field = np.asarray(m.relaxed_log_prob(s, zeta32, 0.0), np.float64)
  assert np.all(mean_field <= exact + 1e-4), mean_field - exact
  assert np.all(np.isfinite(mean_field))
  # Without couplings the mean-field solution is exact (a factorial distribution).
  m0 = m._replace(w=jnp.zeros_like(m.w))
  exact0 = logsumexp(_np_neg_energy(m0, z)[:, None] + log_r.sum(-1), axis=0)
  np.testing.assert_allclose(m0.relaxed_log_prob(s, zeta32, 0.0), exact0, rtol=1e-5, atol=1e-4)


def _gauss_legendre(a, b, n):
  x, w = np.polynomial.legendre.leggauss(n)
  return 0.5 * (b - a) * x + 0.5 * (a + b), 0.5 * (b - a) * w


def _nodes_1d(name, beta):
  """Quadrature nodes/weights for ∫ f(ζ) dζ over the support, smooth after substitution."""
  if name == "gauss":
    return _gauss_legendre(-5.0, 6.0, 200)
  if name == "power":
    # r(ζ|0) ∝ ζ^{1/β − 1}: with ζ = ½ t^β on [0, ½] (and 1 − ζ = ½ t^β on [½, 1]) the integrand
    # becomes smooth in t.
    t, w = _gauss_legendre(0.0, 1.0, 60)
    zeta = 0.5 * t**beta
    jac = 0.5 * beta * t ** (beta - 1.0) * w
    return np.concatenate([zeta, 1.0 - zeta]), np.concatenate([jac, jac])
  return _gauss_legendre(0.0, 1.0, 60)


@pytest.mark.parametrize(
  "name,beta", [("exp", 8.0), ("power", 2.0), ("gauss", 5.0), ("unexp", 8.0)]
)
def test_relaxed_marginal_integrates_to_one(name, beta):
  # A 1+1 machine; p(ζ) = Z_ζ / Z with both partition functions exact; float64 throughout. The
  # power function is evaluated at ζ clipped to [δ, 1 − δ] (smoothing/power_function.py); with
  # β = 2 in float64 the mass below δ = 1.1e-16 is δ^{1/2} ≈ 1e-8, below the tolerance.
  with jax.enable_x64(True):
    cls = SMOOTHINGS[name][0]
    s = cls(beta=beta)
    m = rbm.RBM(jnp.array([0.3]), jnp.array([-0.7]), jnp.array([[1.5]]))
    log_z = rbm.exact_log_partition(m)
    zeta, w = _nodes_1d(name, beta)
    grid = np.stack(np.meshgrid(zeta, zeta, indexing="ij"), -1).reshape(-1, 2)
    weights = np.outer(w, w).reshape(-1)
    log_p = m.relaxed_log_prob(s, jnp.asarray(grid), log_z, exact=True)
    total = float(np.sum(weights * np.exp(np.asarray(log_p))))
  assert abs(total - 1.0) < 1e-6, total


def test_factorial_relaxed_marginal_is_the_per_unit_mixture():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=6)
  prior = priors.FactorialBernoulli(jnp.asarray(logits, jnp.float32))
  for name, (cls, beta) in SMOOTHINGS.items():
    lo, hi = (-0.4, 1.4) if name == "gauss" else (0.05, 0.95)
    zeta = rng.uniform(lo, hi, size=(5, 6))
    p = expit(logits)
    want = np.sum(
      np.log(
        (1 - p) * np.exp(_np_log_r0(name, beta, zeta)) + p * np.exp(_np_log_r1(name, beta, zeta))
      ),
      -1,
    )
    got = prior.relaxed_log_prob(cls(beta=beta), jnp.asarray(zeta, jnp.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# ---- Gaussian integral (math.md §4) --------------------------------------------------------------


@pytest.mark.parametrize("n1,n2,scale,beta", [(3, 2, 3.0, 6.0), (2, 3, 0.5, 30.0)])
def test_gaussian_integral_log_prob_is_the_augmented_mixture(n1, n2, scale, beta):
  # p(ζ) = Σ_z p(z) N(ζ; z, A⁻¹), A = W_f + λI (derivation in priors.gaussian_integral_log_prob),
  # brute force over all z with SciPy's multivariate normal. The first case has λ = σ_max + 5 > β,
  # the second λ = β.
  rng = np.random.default_rng(2)
  m = _random_rbm(rng, n1, n2, scale)
  n = n1 + n2
  w = np.asarray(m.w, np.float64)
  lam = max(np.linalg.norm(w, 2) + 5.0, beta)
  np.testing.assert_allclose(m.gaussian_integral_lambda(beta), lam, rtol=1e-5)
  a_mat = lam * np.eye(n)
  a_mat[:n1, n1:] = w
  a_mat[n1:, :n1] = w.T
  cov = np.linalg.inv(a_mat)
  z = _states(n)
  log_pz = _np_neg_energy(m, z) - _np_log_z(m)
  zeta = rng.normal(0.5, 0.6, size=(8, n))
  want = np.array(
    [
      logsumexp(
        [
          lp + stats.multivariate_normal.logpdf(zt, zz, cov)
          for lp, zz in zip(log_pz, z, strict=True)
        ]
      )
      for zt in zeta
    ]
  )
  zeta32, log_z32 = jnp.asarray(zeta, jnp.float32), jnp.float32(_np_log_z(m))
  got = m.gaussian_integral_log_prob(zeta32, beta, log_z32)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-4)


def test_gaussian_integral_factorial_prior():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=4)
  zeta = rng.normal(0.5, 0.5, size=(7, 4))
  beta = 12.0  # λ = max(0 + 5, β) = β
  p = expit(logits)
  sd = 1 / math.sqrt(beta)
  want = np.sum(np.log((1 - p) * stats.norm.pdf(zeta, 0, sd) + p * stats.norm.pdf(zeta, 1, sd)), -1)
  prior = priors.FactorialBernoulli(jnp.asarray(logits, jnp.float32))
  got = prior.gaussian_integral_log_prob(jnp.asarray(zeta, jnp.float32), beta)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# ---- DVAE/DVAE++ KL (math.md §4) -----------------------------------------------------------------


def test_dvae_pp_kl_equals_exact_kl_for_one_group():
  rng = np.random.default_rng(4)
  m = _random_rbm(rng, 3, 3)
  logits = rng.normal(size=(5, 6)) * 1.5
  log_z = _np_log_z(m)
  # Reference: Σ_z q(z) [log q(z) − log p(z)] over the 64 states, factorial q.
  z = _states(6)
  log_q = z @ logits.T - np.sum(np.logaddexp(0, logits), 1)  # [64, 5]
  log_p = (_np_neg_energy(m, z) - log_z)[:, None]
  want = np.sum(np.exp(log_q) * (log_q - log_p), 0)
  lg = jnp.asarray(logits, jnp.float32)
  mu = jax.nn.sigmoid(lg)
  product = lambda w, rows, cols: jnp.sum((mu[..., rows] @ w) * mu[..., cols], -1)  # noqa: E731
  ce = -m.expected_neg_energy(mu, 1, product) + jnp.float32(log_z)
  got = ce - jnp.sum(priors.bernoulli_entropy(lg), -1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # The same through discrete_kl with a one-group posterior (b(ζ) = 0 for both DVAE and DVAE++).
  post = posterior.PosteriorSample(jnp.zeros((1, 5, 6)), lg[None], None, jnp.zeros((1, 5, 6)))
  for name in ("dvae", "dvae_pp_exp", "dvae_pp_power"):
    kl = objectives.discrete_kl(m, jnp.float32(log_z), post, objectives.get_method(name, 5.0), 1)
    np.testing.assert_allclose(kl[0], want, rtol=1e-5, atol=1e-4)
  # Factorial prior: the analytic Bernoulli KL, against the same enumeration.
  p_logits = rng.normal(size=6)
  log_pf = (z @ p_logits - np.sum(np.logaddexp(0, p_logits)))[:, None]
  want_f = np.sum(np.exp(log_q) * (log_q - log_pf), 0)
  kl_f = objectives.discrete_kl(
    priors.FactorialBernoulli(jnp.asarray(p_logits, jnp.float32)),
    None,
    post,
    objectives.get_method("dvae_pp_exp", 5.0),
    1,
  )
  np.testing.assert_allclose(kl_f[0], want_f, rtol=1e-5, atol=1e-4)


def _toy_hierarchy_expectation(theta, r1, grid):
  """E_q[z1ᵀ W z2] by quadrature for a two-group toy posterior (2 + 2 units).

  q(z1_i = 1) = σ(a_i); ζ1_i ~ r(·|z1_i); q(z2_j = 1 | ζ1) = σ(c_j + (C ζ1)_j). ``r1`` gives the
  per-state (nodes, weights) of ζ1_i given z1_i: a single node 0 for the spike, or Gauss–Legendre.
  """
  a, c, cmat, w = theta
  q1 = jax.nn.sigmoid(a)
  total = 0.0
  for z in itertools.product([0, 1], repeat=2):
    prob = jnp.prod(jnp.where(jnp.array(z) > 0, q1, 1 - q1))
    (n0, w0), (n1, w1) = r1(z[0], grid), r1(z[1], grid)
    zeta = jnp.stack(jnp.meshgrid(n0, n1, indexing="ij"), -1).reshape(-1, 2)
    weight = jnp.outer(w0, w1).reshape(-1)
    mu2 = jax.nn.sigmoid(c + zeta @ cmat.T)
    total = total + prob * jnp.sum(weight * ((jnp.array(z, zeta.dtype) @ w) * mu2).sum(-1))
  return total


def _check_expected_gradient(sample_grads, exact_grad):
  """Mean of per-sample gradients vs the exact one: 5 standard errors of the mean (SE = sd/√N)."""
  for g, e in zip(jax.tree.leaves(sample_grads), jax.tree.leaves(exact_grad), strict=True):
    g = np.asarray(g, np.float64)
    mean, se = g.mean(0), g.std(0, ddof=1) / math.sqrt(g.shape[0])
    assert np.all(np.abs(mean - np.asarray(e)) <= 5 * se + 1e-6), (mean, np.asarray(e), se)


def _toy_theta(seed):
  rng = np.random.default_rng(seed)
  return (
    jnp.asarray(rng.normal(size=2)),
    jnp.asarray(rng.normal(size=2)),
    jnp.asarray(2.0 * rng.normal(size=(2, 2))),
    jnp.asarray(rng.normal(size=(2, 2))),
  )


def test_rolfe_surrogate_gradient_is_unbiased():
  # DVAE with two groups (math.md §4; Rolfe 2017 eqs. 11–12): the expected gradient of
  # dvae_cross_term with respect to (a, c, C, W) equals the gradient of E[z1ᵀ W z2].
  beta, num = 4.0, 40000
  with jax.enable_x64(True):
    s = smoothing.SpikeAndExp(beta=beta)
    nodes, weights = _gauss_legendre(0.0, 1.0, 40)
    r1 = np.exp(np.log(beta) + beta * nodes - np.log(np.expm1(beta)))

    def spike_exp(z, _):
      return (
        (jnp.zeros(1), jnp.ones(1)) if z == 0 else (jnp.asarray(nodes), jnp.asarray(weights * r1))
      )

    theta = _toy_theta(5)
    exact = jax.jit(jax.grad(lambda t: _toy_hierarchy_expectation(t, spike_exp, None)))(theta)

    def one_sample(theta, rho):
      a, c, cmat, w = theta
      q1 = jax.nn.sigmoid(a)
      zeta1 = smoothing.inverse_cdf(s, rho, q1)
      z1 = (rho > 1.0 - q1).astype(rho.dtype)
      mu2 = jax.nn.sigmoid(c + cmat @ zeta1)
      return objectives.rolfe_cross_term(w, z1, a, mu2)

    rho = jax.random.uniform(jax.random.key(0), (num, 2), jnp.float64)
    values = np.asarray(jax.jit(jax.vmap(one_sample, (None, 0)))(theta, rho))
    grads = jax.tree.map(np.asarray, jax.jit(jax.vmap(jax.grad(one_sample), (None, 0)))(theta, rho))
    value = float(jax.jit(lambda t: _toy_hierarchy_expectation(t, spike_exp, None))(theta))
    exact = jax.tree.map(np.asarray, exact)
  # The value is the unbiased estimate Σ z_i W_ij q_j.
  assert abs(values.mean() - value) < 5 * values.std() / math.sqrt(num)
  _check_expected_gradient(grads, exact)


def test_dvae_pp_nu_cross_term_gradient_is_unbiased():
  # DVAE++ with two groups: E[z1ᵀ W z2] = E_ζ[ν1ᵀ W μ2], ν1 = σ(l1 + b(ζ1)); pathwise gradient.
  beta, num = 5.0, 40000
  with jax.enable_x64(True):
    s = smoothing.Exponential(beta=beta)
    nodes, weights = _gauss_legendre(0.0, 1.0, 40)

    def overlapping(z, _):
      log_r = _np_log_r1("exp", beta, nodes) if z else _np_log_r0("exp", beta, nodes)
      return jnp.asarray(nodes), jnp.asarray(weights * np.exp(log_r))

    theta = _toy_theta(6)
    exact = jax.jit(jax.grad(lambda t: _toy_hierarchy_expectation(t, overlapping, None)))(theta)

    def one_sample(theta, key):
      a, c, cmat, w = theta
      zeta1 = smoothing.sample(key, s, a)
      nu1 = jax.nn.sigmoid(a + smoothing.log_ratio(s, zeta1))
      m = rbm.RBM(jnp.zeros(2), jnp.zeros(2), w)
      logits = jnp.concatenate([a, c + cmat @ zeta1])
      mu = jax.nn.sigmoid(logits)
      # E_q[−E] with zero biases and ν1 for the earlier side is exactly ν1ᵀ W μ2.
      return m.expected_neg_energy(mu, 2, lambda w, rows, cols: jnp.sum((nu1 @ w) * mu[cols], -1))

    keys = jax.random.split(jax.random.key(1), num)
    values = np.asarray(jax.jit(jax.vmap(one_sample, (None, 0)))(theta, keys))
    grads = jax.tree.map(
      np.asarray, jax.jit(jax.vmap(jax.grad(one_sample), (None, 0)))(theta, keys)
    )
    value = float(jax.jit(lambda t: _toy_hierarchy_expectation(t, overlapping, None))(theta))
    exact = jax.tree.map(np.asarray, exact)
  assert abs(values.mean() - value) < 5 * values.std() / math.sqrt(num)
  _check_expected_gradient(grads, exact)


# ---- the shifted Gaussian mixture posterior of the Gaussian integral -----------------------------


def _np_mixture_cdf(zeta, q, shift, s):
  return (1 - q) * stats.norm.cdf(zeta, shift, s) + q * stats.norm.cdf(zeta, 1 + shift, s)


def test_shifted_gaussian_mixture_density_samples_and_implicit_derivative():
  logit, shift, s = 0.7, -0.1, 0.15
  q = expit(logit)
  zeta = np.linspace(-1.0, 2.0, 13)
  want = np.log((1 - q) * stats.norm.pdf(zeta, shift, s) + q * stats.norm.pdf(zeta, 1 + shift, s))
  np.testing.assert_allclose(
    objectives.shifted_gaussian_mixture_log_prob(jnp.asarray(zeta, jnp.float32), logit, shift, s),
    want,
    rtol=1e-5,
    atol=1e-5,
  )
  # Samples follow the mixture (Kolmogorov–Smirnov; p-value threshold 1e-3 at a fixed seed).
  draws = objectives.sample_shifted_gaussian_mixture(
    jax.random.key(0), jnp.full((20000,), logit), shift, s
  )
  assert stats.kstest(np.asarray(draws), lambda t: _np_mixture_cdf(t, q, shift, s)).pvalue > 1e-3
  # dζ/dq against a central finite difference of the inverse CDF (root finding in float64).
  from scipy.optimize import brentq

  for rho in (0.05, 0.3, 0.5, 0.62, 0.97):

    def inv(qq, rho=rho):
      return brentq(lambda t: _np_mixture_cdf(t, qq, shift, s) - rho, -3, 4, xtol=1e-14)

    h = 1e-6
    fd = (inv(q + h) - inv(q - h)) / (2 * h)
    got = objectives.shifted_gaussian_mixture_dzeta_dq(jnp.float32(inv(q)), logit, shift, s)
    np.testing.assert_allclose(got, fd, rtol=2e-4)


def test_shifted_gaussian_mixture_expected_gradient():
  # d/dθ E[f(ζ)] for θ = (l, Δμ, s) by quadrature of the density vs the mean surrogate gradient.
  num = 40000
  with jax.enable_x64(True):
    theta = (jnp.array(0.4), jnp.array(0.1), jnp.array(0.2))
    nodes, weights = _gauss_legendre(-2.5, 3.5, 400)

    def f(zeta):
      return jnp.sin(3.0 * zeta) + zeta**2

    def exact(theta):
      logit, shift, s = theta
      dens = jnp.exp(objectives.shifted_gaussian_mixture_log_prob(nodes, logit, shift, s))
      return jnp.sum(weights * dens * f(nodes))

    def one_sample(theta, key):
      logit, shift, s = theta
      return f(objectives.sample_shifted_gaussian_mixture(key, logit, shift, s))

    keys = jax.random.split(jax.random.key(2), num)
    grads = jax.tree.map(
      np.asarray, jax.jit(jax.vmap(jax.grad(one_sample), (None, 0)))(theta, keys)
    )
    want = jax.tree.map(np.asarray, jax.jit(jax.grad(exact))(theta))
  _check_expected_gradient(grads, want)


# ---- the full objectives on a tiny hierarchical model --------------------------------------------

TINY = models.StructSpec(
  "tiny", num_groups=2, units_per_group=3, encoder_hidden=(5,), decoder_hidden=(4,), num_pixels=8
)
# A graph prior on the tiny model's 6 latents (node k = unit k): a triangle inside group 0 (units
# 0–2), a path inside group 1 (3–5) and four edges across. Not bipartite (3 colours).
TINY_GRAPH = machine.Graph.from_edges(
  6, [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (0, 3), (1, 4), (2, 5), (2, 3)]
)


def _tiny_setup(kind, seed=0):
  """The tiny network, a random prior of ``kind`` ('rbm', 'factorial' or 'graph': a machine on
  TINY_GRAPH), a batch and prior samples in the sampler layout of the prior."""
  rng = np.random.default_rng(seed)
  mean_x = rng.uniform(0.2, 0.8, TINY.num_pixels)
  net = models.DVAENet(TINY, mean_x, gaussian_integral=True, rngs=nnx.Rngs(seed))
  if kind == "graph":
    prior = priors.graph.init_machine(TINY_GRAPH)
  else:
    prior = priors.init_prior(kind, TINY)
  prior = jax.tree.map(lambda a: jnp.asarray(0.5 * rng.normal(size=a.shape), a.dtype), prior)
  x = jnp.asarray(rng.uniform(size=(6, TINY.num_pixels)) < mean_x, jnp.float32)
  # Two draws of 16 × 3 (the RBM's former sides), so the samples of every kind are the same.
  z = jnp.concatenate(
    [jnp.asarray(rng.uniform(size=(16, 3)) < 0.5, jnp.float32) for _ in range(2)], -1
  )
  return net, prior, x, (z, jnp.float32(4.0))


def _exact_log_z(prior):
  return prior.exact_log_partition()


@functools.partial(jax.jit, static_argnames=("graphdef", "method", "k"))
def _loss_and_grads_program(
  params, batch_stats, prior, samples, x, key, kappa, *, graphdef, method, k
):
  def f(params, prior):
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    return objectives.loss_fn(key, model, prior, samples, x, method, k, kappa)

  return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, prior)


def _loss_and_grads(net, prior, samples, x, key, method, k, kappa):
  """((loss, terms), (network gradient, prior gradient)) of ``objectives.loss_fn``. One program
  per (network structure, method, K, prior structure), compiled once for the module: the values
  (parameters, prior, samples and their log Z, batch, key, κ) are its arguments."""
  graphdef, params, batch_stats = nnx.split(net, nnx.Param, nnx.BatchStat)
  return _loss_and_grads_program(
    params,
    batch_stats,
    prior,
    samples,
    x,
    key,
    jnp.float32(kappa),
    graphdef=graphdef,
    method=method,
    k=k,
  )


# The tests of loss_fn's values and gradients below share their programs (_loss_and_grads): each
# method at its β of BETAS with K = SHARED_K importance samples (K > 1: the IW bound's weights).
SHARED_K = 2


def _shared_method(name):
  return objectives.get_method(name, BETAS[name])


# Methods whose objective is another's with another smoothing r(ζ|z): the same code of their
# family (dvae_pp_exp, dvae_sharp) runs their terms. Tests over every method run one of each family
# by default and these in the slow set; test_training_steps_on_mnist checks every method's terms
# against their definitions in the default suite.
SAME_FAMILY_SMOOTHINGS = ("dvae_pp_power", "dvae_sharp_exp", "dvae_sharp_gauss", "dvae_sharp_unexp")


def one_per_family_by_default(names, *rest):
  """pytest params (name, *rest) for ``names``, those of SAME_FAMILY_SMOOTHINGS marked slow."""
  return [
    pytest.param(n, *rest, marks=[pytest.mark.slow] if n in SAME_FAMILY_SMOOTHINGS else [])
    for n in names
  ]


# Every method with the RBM prior; the factorial prior once per distinct prior term (analytic
# Bernoulli KL, per-unit relaxed mixture, Gaussian-integral mixture) and the graph prior once per
# family, in the slow set (the default suite checks the factorial prior's terms against definitions
# in test_training_steps_on_mnist and the graph prior's in test_from_rbm_prior_gives_the_rbm_...).
@pytest.mark.parametrize(
  "name,kind",
  one_per_family_by_default(objectives.METHODS, "rbm")
  + [
    pytest.param(n, kind, marks=pytest.mark.slow)
    for kind, names in (
      ("factorial", ("dvae_pp_exp", "dvae_sharp", "dvae_sharp_gi")),
      ("graph", ("dvae", "dvae_pp_exp", "dvae_sharp", "dvae_sharp_gi", "gumbolt")),
    )
    for n in names
  ],
)
def test_every_method_has_finite_nonzero_gradients(name, kind):
  net, prior, x, samples = _tiny_setup(kind)
  method = _shared_method(name)
  (loss, terms), (g_params, g_prior) = _loss_and_grads(
    net, prior, samples, x, jax.random.key(0), method, SHARED_K, 0.5
  )
  chex.assert_tree_all_finite((loss, terms, g_params, g_prior))
  expected = {"recon", "kl", "neg_elbo", "log_z"}
  relaxed = (
    objectives.FAMILY_DVAE_SHARP,
    objectives.FAMILY_DVAE_SHARP_GI,
    objectives.FAMILY_GUMBOLT,
  )
  if method.family in relaxed:
    expected |= {"log_prior", "log_q", "neg_iw_bound"}
  assert set(terms) == expected

  def nonzero(tree):
    return all(float(jnp.max(jnp.abs(leaf))) > 0 for leaf in jax.tree.leaves(tree))

  # Every parameter of each group's encoder (except the shift head of a non-GI method), the decoder
  # and the prior receives gradient.
  for g in range(TINY.num_groups):
    enc = g_params["encoders"][g]
    assert nonzero({k: v for k, v in enc.items() if k != "out2"}), (name, g)
    assert nonzero(enc["out2"]) == (name == "dvae_sharp_gi")
  assert nonzero(g_params["decoder"])
  assert nonzero(g_prior)
  assert nonzero(g_params["s_var"]) == (name == "dvae_sharp_gi")


@pytest.mark.parametrize("name", ["dvae_sharp_exp", "dvae_sharp_gi", "gumbolt"])
def test_iw_loss_gradient_is_the_gradient_of_log_mean_exp(name):
  net, prior, x, samples = _tiny_setup("rbm", seed=1)
  method = _shared_method(name)
  key, k, kappa = jax.random.key(3), SHARED_K, 0.7
  graphdef, params, batch_stats = nnx.split(net, nnx.Param, nnx.BatchStat)

  def via_log_mean_exp(params, prior):
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    log_z = objectives.training_log_partition(prior, samples)
    t = objectives.relaxed_terms(key, model, prior, log_z, x, method, k)
    log_w = kappa * (t.log_prior - t.log_q) + t.log_px
    return -jnp.mean(jax.nn.logsumexp(log_w, axis=0) - math.log(k))

  _, g1 = _loss_and_grads(net, prior, samples, x, key, method, k, kappa)
  g2 = jax.jit(jax.grad(via_log_mean_exp, argnums=(0, 1)))(params, prior)
  chex.assert_trees_all_close(g1, g2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
  "name,kind",
  [("dvae_sharp", "rbm"), ("dvae_sharp_gi", "rbm"), ("gumbolt", "rbm"), ("dvae_sharp", "graph")],
)
def test_iw_gradient_does_not_depend_on_the_value_of_the_training_log_z(name, kind):
  # The training log Z's value shifts every log weight of an example by the same constant; the
  # importance weights are computed without it, so the gradient is the same bit for bit (with the
  # softmax taken of the shifted weights, the rounding of the shift moved every K > 1 run).
  net, prior, x, (z, _) = _tiny_setup(kind, seed=2)
  method = _shared_method(name)

  def grads(log_z):
    samples = (z, jnp.float32(log_z))
    return _loss_and_grads(net, prior, samples, x, jax.random.key(5), method, SHARED_K, 0.7)

  (loss_a, terms_a), g_a = grads(0.3)
  (loss_b, terms_b), g_b = grads(187.123)
  chex.assert_trees_all_equal(g_a, g_b)
  # The values do move with it: the loss by κ Δlog Z, the reported log Z by Δlog Z.
  np.testing.assert_allclose(loss_b - loss_a, 0.7 * (187.123 - 0.3), rtol=1e-5)
  np.testing.assert_allclose(terms_b["log_z"] - terms_a["log_z"], 187.123 - 0.3, rtol=1e-6)
  # That the loss keeps the IWAE gradient: test_iw_loss_gradient_is_the_gradient_of_log_mean_exp.


@pytest.mark.parametrize(
  "name,kind",
  one_per_family_by_default(objectives.METHODS, "rbm")
  + [("dvae_sharp", "graph")]
  # Slow: the graph prior's log Z enters every method's terms as it does in dvae_sharp's.
  + [
    pytest.param(n, "graph", marks=pytest.mark.slow)
    for n in ("dvae", "dvae_pp_exp", "dvae_sharp_gi", "gumbolt")
  ],
)
def test_log_z_sensitivity_is_how_every_reported_value_moves_with_log_z(name, kind):
  # Recompute the step with another log Z: every output must move by exactly sensitivity × Δ, and
  # the listed keys must be the only ones that move (a new log-Z-dependent term fails here).
  net, prior, x, (z, _) = _tiny_setup(kind, seed=4)
  method = _shared_method(name)
  kappa, delta = 0.6, 3.25

  def outputs(log_z):
    samples = (z, jnp.float32(log_z))
    (loss, terms), _ = _loss_and_grads(
      net, prior, samples, x, jax.random.key(6), method, SHARED_K, kappa
    )
    return {"loss": loss, **terms}

  a, b = outputs(140.0), outputs(140.0 + delta)
  sensitivity = objectives.log_z_sensitivity(kappa)
  for key in a:
    expected = sensitivity.get(key, 0.0) * delta
    np.testing.assert_allclose(
      float(b[key] - a[key]), expected, atol=2e-5 * (1 + abs(float(a[key])))
    )
    assert (key in sensitivity) == (abs(float(b[key] - a[key])) > 0.5), key


def test_single_sample_loss_is_the_relaxed_elbo_and_iw_bound_is_tighter():
  net, prior, x, samples = _tiny_setup("rbm", seed=2)
  method = objectives.get_method("dvae_sharp_exp", 10.0)
  (loss, terms), _ = _loss_and_grads(net, prior, samples, x, jax.random.key(4), method, 1, 1.0)
  np.testing.assert_allclose(loss, terms["neg_elbo"], rtol=1e-6)
  np.testing.assert_allclose(terms["neg_iw_bound"], terms["neg_elbo"], rtol=1e-6)
  np.testing.assert_allclose(terms["kl"], terms["log_q"] - terms["log_prior"], rtol=1e-6)
  _, terms5 = _loss_and_grads(net, prior, samples, x, jax.random.key(4), method, 5, 1.0)[0]
  assert float(terms5["neg_iw_bound"]) <= float(terms5["neg_elbo"])


def test_hierarchical_posterior_log_q_and_binary_states():
  net, _, x, _ = _tiny_setup("rbm", seed=3)
  net.eval()
  key, k = jax.random.key(5), 3
  # DVAE#: log q(ζ|x) = Σ_g log q(ζ_g | x, ζ_<g), with each group's logits recomputed here from the
  # sampled earlier groups.
  method = objectives.get_method("dvae_sharp_exp", 20.0)
  post = objectives.sample_posterior(key, net, x, method, k)
  chex.assert_shape([post.zeta, post.logits], (k, 6, 6))
  zeta = post.zeta.reshape(k * 6, 6)
  xr = jnp.tile(x, (k, 1))
  l0 = net.encode_group(0, xr, None)[0]
  l1 = net.encode_group(1, xr, zeta[:, :3])[0]
  np.testing.assert_allclose(
    post.logits.reshape(k * 6, 6), jnp.concatenate([l0, l1], -1), rtol=1e-5, atol=1e-5
  )
  want = jnp.sum(
    smoothing.mixture_log_prob_logits(method.smoothing, zeta, jnp.concatenate([l0, l1], -1)), -1
  )
  np.testing.assert_allclose(post.log_q.reshape(-1), want, rtol=1e-5, atol=1e-4)
  # The K samples differ, the first group's logits do not.
  assert float(jnp.max(jnp.abs(post.zeta[0] - post.zeta[1]))) > 0
  np.testing.assert_allclose(post.logits[0, :, :3], post.logits[2, :, :3])
  # DVAE: z is the branch of the spike-and-exp inverse CDF, ζ = 0 exactly when z = 0.
  post = objectives.sample_posterior(key, net, x, objectives.get_method("dvae", 5.0), 200)
  z, zeta = np.asarray(post.z), np.asarray(post.zeta)
  assert np.all(zeta[z == 0] == 0) and np.all(zeta[z == 1] >= 0)
  np.testing.assert_allclose(z.mean(0), np.asarray(jax.nn.sigmoid(post.logits)).mean(0), atol=0.15)


def test_weight_decay_counts_kernels_bn_scales_and_rbm_couplings():
  net = models.DVAENet(
    "2-layer-nonlin", np.full(784, 0.3), gaussian_integral=True, rngs=nnx.Rngs(0)
  )
  rng = np.random.default_rng(0)
  for mlp in [*net.encoders, net.decoder]:
    for bn in mlp.norm:
      bn.scale[...] = jnp.asarray(rng.uniform(0.5, 2.0, bn.scale.shape), jnp.float32)
  m = _random_rbm(rng, 200, 200)
  want = 0.0
  for mlp in [*net.encoders, net.decoder]:
    for d in [*mlp.dense, mlp.out] + ([mlp.out2] if mlp.out2 is not None else []):
      want += np.sum(np.asarray(d.kernel[...], np.float64) ** 2)
    for bn in mlp.norm:
      want += np.sum(np.asarray(bn.scale[...], np.float64) ** 2)
  params = nnx.state(net, nnx.Param)
  np.testing.assert_allclose(
    objectives.weight_decay(params, priors.FactorialBernoulli(jnp.ones(400))),
    0.5e-4 * want,
    rtol=1e-5,
  )
  want += np.sum(np.asarray(m.w, np.float64) ** 2)
  np.testing.assert_allclose(objectives.weight_decay(params, m), 0.5e-4 * want, rtol=1e-5)


def test_bad_inputs():
  with pytest.raises(ValueError, match="dvae_sharp_gi"):
    objectives.get_method("dvae_sharp_power", 40.0)
  with pytest.raises(ValueError, match="beta"):
    objectives.get_method("dvae", 0.0)
  with pytest.raises(ValueError, match="prior kind"):
    priors.init_prior("ising", TINY)
  net, prior, x, samples = _tiny_setup("rbm")
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="prior_samples"):
    objectives.loss_fn(key, net, prior, None, x, objectives.get_method("dvae", 5.0))
  with pytest.raises(ValueError, match="units"):
    objectives.loss_fn(key, net, rbm.init_rbm(2, 2), samples, x, objectives.get_method("dvae", 5.0))
  with pytest.raises(ValueError, match="x must have shape"):
    objectives.loss_fn(key, net, prior, samples, x[:, :5], objectives.get_method("dvae", 5.0))
  plain = models.DVAENet(TINY, np.full(8, 0.5), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="gaussian_integral=True"):
    objectives.loss_fn(key, plain, prior, samples, x, objectives.get_method("dvae_sharp_gi", 5.0))
  with pytest.raises(ValueError, match="discrete KL"):
    objectives.relaxed_log_prior(prior, jnp.zeros((1, 6)), 0.0, objectives.get_method("dvae", 5.0))


# ---- a few Adam steps on binarized MNIST, every method -------------------------------------------

BETAS = {
  "dvae": 5.0,
  "dvae_pp_exp": 12.0,
  "dvae_pp_power": 40.0,
  "dvae_sharp_gi": 40.0,
  "dvae_sharp_gauss": 40.0,
  "dvae_sharp_exp": 12.0,
  "dvae_sharp_unexp": 40.0,
  "dvae_sharp": 40.0,
  "gumbolt": 0.5,  # the concrete temperature τ (config_lib.GUMBOLT_TEMPERATURE)
}  # math.md §6, 1-layer-lin


def _trainer(struct, name, kind, mean_x, *, num_samples, num_chains, num_sweeps, lr=3e-3):
  """A jitted training step (the runner's pattern: split once, merge with copy=True inside grad)."""
  net = models.DVAENet(struct, mean_x, gaussian_integral=name == "dvae_sharp_gi", rngs=nnx.Rngs(0))
  spec = net.spec
  prior = priors.init_prior(kind, spec)
  method = objectives.get_method(name, BETAS[name])
  sampler = make_prior_sampler("pcd", num_samples=num_chains, num_sweeps=num_sweeps)
  graphdef, params, batch_stats = nnx.split(net, nnx.Param, nnx.BatchStat)
  tx = optax.adam(lr, eps=1e-3)
  chains = sampler.init(
    jax.random.key(0), prior if kind == "rbm" else rbm.init_rbm(spec.n1, spec.n2)
  )
  state = (params, batch_stats, prior, tx.init((params, prior)), chains)

  @jax.jit
  def step(state, x, key, kappa):
    params, batch_stats, prior, opt_state, chains = state
    key_sampler, key_loss = jax.random.split(key)
    if kind == "rbm":
      chains, _ = sampler.step(key_sampler, chains, prior)

    def total_loss(trainable):
      params, prior = trainable
      model = nnx.merge(graphdef, params, batch_stats, copy=True)
      loss, terms = objectives.loss_fn(
        key_loss, model, prior, chains, x, method, num_samples, kappa
      )
      loss = loss + objectives.weight_decay(params, prior)
      return loss, (terms, nnx.state(model, nnx.BatchStat))

    (loss, (terms, batch_stats)), grads = jax.value_and_grad(total_loss, has_aux=True)(
      (params, prior)
    )
    updates, opt_state = tx.update(grads, opt_state)
    params, prior = optax.apply_updates((params, prior), updates)
    return (params, batch_stats, prior, opt_state, chains), loss, terms

  return graphdef, state, step


def _softplus(a):
  return np.logaddexp(0.0, a)


def _initial_loss_reference(graphdef, state, name, kind, x, key, kappa, num_samples):
  """The first step's loss (1-layer-lin, all-zero prior) in float64 NumPy from the definitions of
  math.md §2, §4 (what the library supplies is only the relaxed samples ζ for the step's key,
  sampled by ``objectives.sample_posterior``, and for DVAE# their log q and relaxed log p, whose
  densities are tested against quadrature in tests/smoothing/):

  * log p(x|ζ) = Σ_pixels x·l − softplus(l), l = ζ W_dec + b_dec + logit(mean_x) (linear decoder);
  * the prior is uniform, so log Z = n log 2; DVAE, DVAE++: KL = n log 2 − Σ_i H(q_i) with
    q = σ((x − mean_x) W_enc + b_enc) (one group, a linear encoder),
    loss = mean(−log p(x|ζ) + κ KL);
  * DVAE#, GumBolt: log w_k = κ (log p(ζ_k) − log q(ζ_k|x)) + log p(x|ζ_k) (GumBolt's log p(ζ) =
    −E(ζ) − log Z = −n log 2), loss = −mean_x Σ_k softmax(log w)_k log w_k (``iw_loss``'s value);
  * plus weight decay 0.5e-4 Σ w² over the kernels (with the Gaussian integral's shift head; the
    prior's couplings are zero).

  Returns (loss, {'recon', 'kl', 'log_z'}) as float64.
  """
  params, batch_stats, prior = state[:3]
  model = nnx.merge(graphdef, params, batch_stats, copy=True)
  method = objectives.get_method(name, BETAS[name])
  _, loss_key = jax.random.split(key)

  @jax.jit  # one program, not one per operation run eagerly
  def library_values(params, batch_stats, prior):
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    post = objectives.sample_posterior(loss_key, model, x, method, num_samples)
    # As loss_fn evaluates it (with log Z = 0, then − log Z): the Gaussian integral's log density
    # is a sum of terms of several thousand nats, whose float32 rounding depends on that order.
    if method.family in (objectives.FAMILY_DVAE, objectives.FAMILY_DVAE_PP):
      return post.zeta, post.log_q, jnp.zeros(())  # their KL is analytic (below)
    return post.zeta, post.log_q, objectives.relaxed_log_prior(prior, post.zeta, 0.0, method)

  f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
  zeta, log_q, relaxed_log_prior = map(f64, library_values(params, batch_stats, prior))
  xs = f64(x)  # [B, 784]; ζ: [K, B, n]
  enc, dec = model.encoders[0].out, model.decoder.out
  logits = zeta @ f64(dec.kernel[...]) + f64(dec.bias[...]) + f64(model.logit_offset[...])
  log_px = np.sum(xs * logits - _softplus(logits), -1)  # [K, B]
  n = zeta.shape[-1]
  log_z = n * math.log(2.0)
  kernels = [enc, dec] + ([model.encoders[0].out2] if model.gaussian_integral else [])
  decay = 0.5e-4 * sum(np.sum(f64(d.kernel[...]) ** 2) for d in kernels)
  if method.family in (objectives.FAMILY_DVAE, objectives.FAMILY_DVAE_PP):
    q_logits = (xs - f64(model.mean_x[...])) @ f64(enc.kernel[...]) + f64(enc.bias[...])
    q = expit(q_logits)
    entropy = np.sum(_softplus(q_logits) - q * q_logits, -1)  # Σ_i H(q_i), [B]
    kl = log_z - entropy
    loss = np.mean(-log_px + kappa * kl)
    return loss + decay, {"recon": -np.mean(log_px), "kl": np.mean(kl), "log_z": log_z}
  if method.family == objectives.FAMILY_GUMBOLT:
    log_prior = np.full(log_px.shape, -log_z)
  else:
    log_prior = relaxed_log_prior - (log_z if prior.needs_sampler else 0.0)
  log_w = kappa * (log_prior - log_q) + log_px
  weights = np.exp(log_w - logsumexp(log_w, axis=0))
  loss = -np.mean(np.sum(weights * log_w, 0))
  terms = {"recon": -np.mean(log_px), "kl": np.mean(log_q - log_prior), "log_z": log_z}
  return loss + decay, terms


@pytest.mark.parametrize(
  "name,kind", [(n, "rbm") for n in objectives.METHODS] + [("dvae_sharp", "factorial")]
)
def test_training_steps_on_mnist(name, kind, data_dir):
  """Four steps of every method: the first step's loss and terms equal the objective at
  initialisation computed from the definitions (``_initial_loss_reference``); the next steps stay
  finite and every parameter moves."""
  train = np.load(data_dir / "binarized_mnist.npz")["train"][:2000].astype(np.float32)
  num_samples = 2 if name.startswith("dvae_sharp") else 1
  graphdef, state, step = _trainer(
    "1-layer-lin", name, kind, train.mean(0), num_samples=num_samples, num_chains=64, num_sweeps=2
  )
  start = (state[0], state[2])
  x0 = jnp.asarray(train[:25])
  want, want_terms = _initial_loss_reference(
    graphdef, state, name, kind, x0, jax.random.key(0), 0.1, num_samples
  )
  losses = []
  for t in range(4):
    x = jnp.asarray(train[t * 25 : (t + 1) * 25])
    state, loss, terms = step(state, x, jax.random.key(t), 0.1 * (t + 1))
    chex.assert_tree_all_finite((loss, terms))
    losses.append(float(loss))
    if t == 0:
      first_terms = {k: float(v) for k, v in terms.items()}
  chex.assert_tree_all_finite(state[:3])
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), start, (state[0], state[2]))
  assert all(v > 0 for v in jax.tree.leaves(moved))
  # float32 sums over 784 pixels × 25 images (terms of a few hundred nats): 1e-5 relative.
  np.testing.assert_allclose(losses[0], want, rtol=1e-5)
  for key, value in want_terms.items():
    if key != "log_z" or kind == "rbm":  # the factorial prior's log Z is its own (normalised)
      np.testing.assert_allclose(first_terms[key], value, rtol=1e-5, atol=1e-3, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize(
  "name,struct",
  [("dvae_sharp", "1-layer-lin"), ("dvae_sharp_gi", "1-layer-lin"), ("dvae", "2-layer-nonlin")],
)
def test_short_training_improves_validation_nll(name, struct, data_dir):
  # 300 steps of batch 100 (KL warm-up over the first 100), then the discrete model's IW NLL on
  # 500 validation images with an AIS log Z. Measured (2-core CPU): the NLL falls from about 200+
  # to 120–135 nats; the thresholds leave a wide margin.
  data = np.load(data_dir / "binarized_mnist.npz")
  train, valid = data["train"].astype(np.float32), data["valid"][:500].astype(np.float32)
  graphdef, state, step = _trainer(
    struct, name, "rbm", train.mean(0), num_samples=1, num_chains=200, num_sweeps=10
  )

  def nll(state, key):
    params, batch_stats, prior = state[:3]
    ais = ais_log_partition(key, prior, num_chains=256, num_temperatures=300)
    out = jax.jit(
      lambda p, b, pr, lz, x: evaluation.evaluate(key, nnx.merge(graphdef, p, b), pr, lz, x, 50)
    )(params, batch_stats, prior, ais.log_z, jnp.asarray(valid))
    return float(jnp.mean(out["nll"])), float(jnp.mean(out["neg_elbo"]))

  before, _ = nll(state, jax.random.key(100))
  rng = np.random.default_rng(0)
  for t in range(300):
    x = jnp.asarray(train[rng.integers(0, len(train), 100)])
    state, loss, terms = step(state, x, jax.random.key(t), min(1.0, t / 100))
    chex.assert_tree_all_finite((loss, terms))
  after, after_elbo = nll(state, jax.random.key(101))
  assert after < before - 40 and after < 150, (before, after)
  assert after <= after_elbo


# ---- the two relaxed samplers give the same loss and gradient in expectation (math.md §1) --------


def test_ancestral_and_inverse_cdf_samplers_agree_in_expectation():
  """E[loss] and E[∇loss] under method.relaxed_sampler 'ancestral' and 'inverse_cdf' agree.

  Both estimators are averages over n independent keys; each coordinate's difference of means is
  compared with 5 standard errors of that difference (sqrt(se_a² + se_b²)). With ~100 coordinates a
  false alarm at 5 SE has probability < 1e-4. Power check (done by hand): β = 30 against β = 20
  gives a max z-score ≈ 5.8 at this n (β = 30 against 10: ≈ 8): a sampler whose law is off by
  that much is caught; smaller differences are the job of the tests in tests/smoothing/.
  """
  name = "dvae_sharp"
  net, prior, x, samples = _tiny_setup("rbm")
  net.eval()  # fixed BN statistics: the loss is a function of the noise only
  graphdef, params, batch_stats = nnx.split(net, nnx.Param, nnx.BatchStat)
  n = 10000
  keys = jax.random.split(jax.random.key(7), n)

  def per_key(method):
    def f(params, prior, key):
      model = nnx.merge(graphdef, params, batch_stats, copy=True)
      return objectives.loss_fn(key, model, prior, samples, x, method, 1, 1.0)[0]

    grad = jax.value_and_grad(f, argnums=(0, 1))
    return jax.jit(jax.vmap(grad, in_axes=(None, None, 0)))(params, prior, keys)

  results = [
    per_key(objectives.get_method(name, 30.0, relaxed_sampler=r))
    for r in objectives.RELAXED_SAMPLERS
  ]
  flat = [
    np.concatenate([np.asarray(a, np.float64).reshape(n, -1) for a in jax.tree.leaves(res)], 1)
    for res in results
  ]
  mean_a, mean_b = flat[0].mean(0), flat[1].mean(0)
  se = np.sqrt(flat[0].var(0) / n + flat[1].var(0) / n) + 1e-9
  z = np.abs(mean_a - mean_b) / se
  assert np.all(np.isfinite(flat[0])) and np.all(np.isfinite(flat[1]))
  assert z.max() < 5.0, f"max z-score {z.max():.2f} at coordinate {int(z.argmax())}"
  with pytest.raises(ValueError, match="relaxed_sampler"):
    objectives.get_method(name, 30.0, relaxed_sampler="rejection")


# ---- GumBolt (Khoshaman & Amin 2018) -------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_binary_concrete_cdf(temperature):
  """P(ζ ≤ y) = σ(τ·logit(y) − l) for ζ = σ((l + L)/τ), L logistic (so P(ζ > ½) = σ(l) at every
  τ): the empirical CDF on a grid of y within 5 binomial standard errors (fixed seed)."""
  logits = np.array([-1.5, 0.0, 0.8])
  n = 20_000
  zeta = objectives.sample_binary_concrete(
    jax.random.key(0), jnp.tile(jnp.asarray(logits, jnp.float32), (n, 1)), temperature
  )
  zeta = np.asarray(zeta, np.float64)
  assert np.all((zeta >= 0) & (zeta <= 1))
  y = np.array([0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
  want = expit(temperature * np.log(y / (1 - y))[:, None] - logits)  # [grid, 3]
  got = np.mean(zeta[None, :, :] <= y[:, None, None], axis=1)
  se = np.sqrt(want * (1 - want) / n)
  assert np.all(np.abs(got - want) < 5 * se), (got - want) / se


@pytest.mark.parametrize("kind", ["rbm", "graph"])
def test_gumbolt_terms_tend_to_the_discrete_elbo_by_enumeration(kind):
  """At a small temperature the GumBolt terms are the discrete ones: the Monte-Carlo mean of
  log p(x|ζ) + log p̆(ζ) − log q̆(ζ|x) over the hierarchical concrete posterior matches the discrete
  ELBO Σ_z q(z|x)[log p(x|z) + log p(z) − log q(z|x)], enumerated over the 2^6 states of the tiny
  two-group model (exact log Z), within 5 standard errors per example. 'graph': the prior is a
  machine on the non-bipartite TINY_GRAPH (edges inside and across the groups)."""
  net, prior, x, _ = _tiny_setup(kind, seed=4)
  net.eval()
  log_z = _exact_log_z(prior)
  k = 4000
  method = objectives.get_method("gumbolt", 1e-4)
  t = objectives.relaxed_terms(jax.random.key(8), net, prior, log_z, x, method, k)
  elbo = np.asarray(t.log_px + t.log_prior - t.log_q, np.float64)
  mc, se = elbo.mean(0), elbo.std(0) / math.sqrt(k)

  z = jnp.asarray(_states(6), jnp.float32)  # [64, 6]
  batch, units = x.shape[0], TINY.units_per_group
  x_rep = jnp.repeat(x, len(z), axis=0)  # [batch · 64, pixels], example-major
  z_rep = jnp.tile(z, (batch, 1))
  l0 = net.encode_group(0, x_rep, None)[0]
  l1 = net.encode_group(1, x_rep, z_rep[:, :units])[0]
  log_q = jnp.sum(priors.bernoulli_log_prob(z_rep, jnp.concatenate([l0, l1], -1)), -1)
  log_px = objectives.reconstruction_log_prob(net, z_rep[None], x_rep)[0]
  log_p = prior.log_prob(z_rep, log_z)
  q = np.exp(np.asarray(log_q, np.float64)).reshape(batch, len(z))
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
  exact = np.sum(q * np.asarray(log_px + log_p - log_q, np.float64).reshape(batch, len(z)), 1)
  assert np.all(np.abs(mc - exact) < 5 * se), (mc - exact) / se


def test_gumbolt_is_bernoulli_log_prob_at_the_relaxed_sample_and_beta_is_the_temperature():
  net, prior, x, _ = _tiny_setup("rbm", seed=5)
  net.eval()
  gumbolt = objectives.get_method("gumbolt", 5.0)
  hot = objectives.sample_posterior(jax.random.key(1), net, x, gumbolt)
  cold = objectives.sample_posterior(jax.random.key(1), net, x, gumbolt._replace(beta=0.05))
  want = jnp.sum(priors.bernoulli_log_prob(hot.zeta, hot.logits), -1)
  np.testing.assert_allclose(hot.log_q, want, rtol=1e-6)
  # Same noise: the lower temperature pushes every unit further from ½, on the same side.
  assert np.all(np.abs(cold.zeta[:, :, :3] - 0.5) >= np.abs(hot.zeta[:, :, :3] - 0.5))
  np.testing.assert_array_equal(cold.zeta[:, :, :3] > 0.5, hot.zeta[:, :, :3] > 0.5)
  prior_term = objectives.relaxed_log_prior(
    prior, hot.zeta, 2.0, objectives.get_method("gumbolt", 5.0)
  )
  z1, z2 = hot.zeta[..., :3], hot.zeta[..., 3:]
  np.testing.assert_allclose(prior_term, -rbm.energy(prior, z1, z2) - 2.0, rtol=1e-6)


# ---- the graph Boltzmann machine as a prior (issue 14) -------------------------------------------


@pytest.mark.parametrize("name", one_per_family_by_default(objectives.METHODS))
def test_from_rbm_prior_gives_the_rbm_losses_and_gradients(name):
  """``rbm.graph_machine(r)`` as the prior (samples in the graph layout) gives the RBM prior's loss,
  diagnostics and gradients (network and prior, the prior's mapped to (b1; b2), W row-major)."""
  net, r, x, samples = _tiny_setup("rbm", seed=6)
  gm = rbm.graph_machine(r)
  method = _shared_method(name)
  key, k, kappa = jax.random.key(7), SHARED_K, 0.7
  (loss_r, terms_r), (gp_r, gprior_r) = _loss_and_grads(net, r, samples, x, key, method, k, kappa)
  (loss_g, terms_g), (gp_g, gprior_g) = _loss_and_grads(net, gm, samples, x, key, method, k, kappa)
  np.testing.assert_allclose(loss_g, loss_r, rtol=1e-5)
  chex.assert_trees_all_close(terms_g, terms_r, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(gp_g, gp_r, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
    gprior_g.b, jnp.concatenate([gprior_r.b1, gprior_r.b2]), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(gprior_g.w, gprior_r.w.reshape(-1), rtol=1e-4, atol=1e-6)


def test_graph_prior_kl_equals_exact_kl_for_one_group():
  # One group: q factorises, so every edge's term is μ_i μ_j and the KL is exact (no sampling);
  # against Σ_z q(z)[log q(z) − log p(z)] over the 64 states with the exact log Z of TINY_GRAPH.
  rng = np.random.default_rng(12)
  m = priors.BoltzmannMachine(
    jnp.asarray(rng.normal(size=6), jnp.float32),
    jnp.asarray(1.5 * rng.normal(size=TINY_GRAPH.num_edges), jnp.float32),
    TINY_GRAPH,
  )
  log_z = float(machine.exact_log_partition(m))
  logits = rng.normal(size=(5, 6)) * 1.5
  z = _states(6)
  e = TINY_GRAPH.edges
  log_q = z @ logits.T - np.sum(np.logaddexp(0, logits), 1)  # [64, 5]
  neg_e = z @ np.asarray(m.b, np.float64) + (z[:, e[:, 0]] * z[:, e[:, 1]]) @ np.asarray(m.w)
  want = np.sum(np.exp(log_q) * (log_q - (neg_e - log_z)[:, None]), 0)
  lg = jnp.asarray(logits, jnp.float32)
  post = posterior.PosteriorSample(jnp.zeros((1, 5, 6)), lg[None], None, jnp.zeros((1, 5, 6)))
  for name in ("dvae", "dvae_pp_exp", "dvae_pp_power"):
    kl = objectives.discrete_kl(m, jnp.float32(log_z), post, objectives.get_method(name, 5.0), 1)
    np.testing.assert_allclose(kl[0], want, rtol=1e-5, atol=1e-4)


# Two groups of two units: a triangle 0-1-2 across the groups plus an edge inside each group.
_TOY_GRAPH = machine.Graph.from_edges(4, [(0, 1), (2, 3), (0, 2), (1, 2), (1, 3)])


def _toy_graph_kl(theta, r1, nodes_weights):
  """Exact E_q[log q(z, ζ) − log p(z, ζ)] = E_q[log q(z1) + log q(z2|ζ1) − log p(z)] (the r terms
  cancel) for the toy posterior q(z1_i) = σ(a_i), ζ1_i ~ r(·|z1_i), q(z2_j | ζ1) = σ(c_j + (C ζ1)_j)
  and the graph prior (b, w) on _TOY_GRAPH: quadrature over ζ1 (``r1``), enumeration over z."""
  a, c, cmat, b, w = theta
  m = priors.BoltzmannMachine(b, w, _TOY_GRAPH)
  log_z = machine.exact_log_partition(m)
  z2s = jnp.asarray(_states(2))
  total = 0.0
  for z1_state in itertools.product([0, 1], repeat=2):
    z1 = jnp.asarray(z1_state, a.dtype)
    log_q1 = jnp.sum(priors.bernoulli_log_prob(z1, a))
    (n0, w0), (n1, w1) = (r1(zi, nodes_weights) for zi in z1_state)
    zeta = jnp.stack(jnp.meshgrid(n0, n1, indexing="ij"), -1).reshape(-1, 2)
    weight = jnp.outer(w0, w1).reshape(-1)
    l2 = c + zeta @ cmat.T  # [grid, 2]
    log_q2 = jnp.sum(priors.bernoulli_log_prob(z2s[:, None, :], l2[None]), -1)  # [4, grid]
    z = jnp.concatenate([jnp.broadcast_to(z1, (4, 2)), z2s], -1)
    log_p = -machine.energy(m, z) - log_z  # [4]
    inner = jnp.sum(jnp.exp(log_q2) * (log_q1 + log_q2 - log_p[:, None]), 0)
    total = total + jnp.exp(log_q1) * jnp.sum(weight * inner)
  return total


@pytest.mark.parametrize("name", ["dvae", "dvae_pp_exp"])
def test_graph_prior_two_group_kl_value_and_gradient_are_unbiased(name):
  """Two groups on a non-bipartite graph prior with edges inside and across the groups: the mean of
  discrete_kl's per-sample estimates and of their gradients with respect to the posterior (a, c, C)
  and the prior (b, w) equals the exact KL and its gradient (quadrature + enumeration,
  ``_toy_graph_kl``) within 5 standard errors; 40000 samples, float64. DVAE: spike-and-exp, Rolfe's
  surrogate on the edges across groups; DVAE++: exponential smoothing, ν_i μ_j across groups."""
  beta, num = 4.0, 40000
  with jax.enable_x64(True):
    method = objectives.get_method(name, beta)
    s = method.smoothing
    nodes, weights = _gauss_legendre(0.0, 1.0, 40)
    if name == "dvae":
      r1_density = np.exp(np.log(beta) + beta * nodes - np.log(np.expm1(beta)))

      def r1(z, _):
        spike = (jnp.zeros(1), jnp.ones(1))
        return spike if z == 0 else (jnp.asarray(nodes), jnp.asarray(weights * r1_density))
    else:

      def r1(z, _):
        log_r = _np_log_r1("exp", beta, nodes) if z else _np_log_r0("exp", beta, nodes)
        return jnp.asarray(nodes), jnp.asarray(weights * np.exp(log_r))

    rng = np.random.default_rng(13)
    theta = (
      *_toy_theta(7)[:3],
      jnp.asarray(rng.normal(size=4)),
      jnp.asarray(1.5 * rng.normal(size=_TOY_GRAPH.num_edges)),
    )
    value, exact = jax.jit(jax.value_and_grad(lambda t: _toy_graph_kl(t, r1, None)))(theta)

    def one_sample(theta, key):
      a, c, cmat, b, w = theta
      m = priors.BoltzmannMachine(b, w, _TOY_GRAPH)
      if name == "dvae":
        rho = jax.random.uniform(key, (2,), jnp.float64)
        zeta1 = smoothing.inverse_cdf(s, rho, jax.nn.sigmoid(a))
        z1 = (rho > 1.0 - lax.stop_gradient(jax.nn.sigmoid(a))).astype(rho.dtype)
      else:
        zeta1 = smoothing.sample(key, s, a)
        z1 = jnp.zeros(2)  # unused by DVAE++
      logits = jnp.concatenate([a, c + cmat @ zeta1])
      # The second group's ζ and z are never read (no edge leaves the last group for a later one).
      post = posterior.PosteriorSample(
        jnp.concatenate([zeta1, jnp.full(2, 0.5)]),
        logits,
        None,
        jnp.concatenate([z1, jnp.zeros(2)]),
      )
      return objectives.discrete_kl(m, machine.exact_log_partition(m), post, method, 2)

    keys = jax.random.split(jax.random.key(2), num)
    values = np.asarray(jax.jit(jax.vmap(one_sample, (None, 0)))(theta, keys))
    grads = jax.tree.map(
      np.asarray, jax.jit(jax.vmap(jax.grad(one_sample), (None, 0)))(theta, keys)
    )
    exact = jax.tree.map(np.asarray, exact)
  assert abs(values.mean() - float(value)) < 5 * values.std() / math.sqrt(num)
  _check_expected_gradient(grads, exact)


def test_graph_prior_weight_decay_training_log_z_and_rao_blackwell():
  net = models.DVAENet(TINY, np.full(8, 0.5), rngs=nnx.Rngs(0))
  params = nnx.state(net, nnx.Param)
  r = _random_rbm(np.random.default_rng(14), 3, 3)
  np.testing.assert_allclose(
    objectives.weight_decay(params, rbm.graph_machine(r)), objectives.weight_decay(params, r)
  )
  _, gm, _, samples = _tiny_setup("graph", seed=8)
  z, log_z = samples

  def via_objectives(gm):
    return objectives.training_log_partition(gm, samples)

  def direct(gm):
    # The surrogate written out: sg(log Z) + mean(−E(z)) − sg(mean(−E(z))).
    neg_e = jnp.mean(-machine.energy(gm, z))
    return log_z + neg_e - jax.lax.stop_gradient(neg_e)

  np.testing.assert_allclose(via_objectives(gm), log_z)
  chex.assert_trees_all_close(jax.grad(via_objectives)(gm), jax.grad(direct)(gm))
  with pytest.raises(ValueError, match="trailing dimension of 6"):
    objectives.training_log_partition(gm, (z[:, :3], log_z))
  # Rao-Blackwellisation needs the RBM's two sides: 'none' passes a graph's samples through.
  assert gm.rao_blackwellize(z, "none") is z
  with pytest.raises(ValueError, match="needs an RBM prior"):
    gm.rao_blackwellize(z, "z2")
