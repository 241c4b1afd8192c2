"""Tests of dvae_jax/smoothing/base.py (math.md §1): the contract, validation, pytree behaviour and
the public samplers (KS tests against F, expected gradients against quadrature).
"""

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats
from smoothing_reference import (
  CASES,
  CLASSES,
  case_id,
  f32,
  ref_components,
  ref_mixture_cdf,
  ref_spike_r1,
)

from dvae_jax import smoothing as sm

# --------------------------------------------------------------------------------------------------
# Construction, validation, pytree behaviour.


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("beta", [0.0, -1.0, -3])
def test_nonpositive_beta_is_rejected(name, beta):
  with pytest.raises(ValueError, match="beta must be > 0"):
    CLASSES[name](beta)


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("beta", [np.array([1.0, -2.0]), jnp.array([1.0, 0.0])])
def test_nonpositive_array_beta_is_rejected_on_use(name, beta):
  # Construction lets arrays through (jax.grad rebuilds the pytree with gradient leaves).
  s = CLASSES[name](beta)
  with pytest.raises(ValueError, match="beta must be > 0"):
    sm.inverse_cdf(s, 0.5, 0.5)
  with pytest.raises(ValueError, match="beta must be > 0"):
    sm.sample(jax.random.key(0), s, jnp.zeros(2))


@pytest.mark.parametrize("eps", [-0.1, 1.0, 1.5])
def test_unexp_eps_out_of_range_is_rejected(eps):
  with pytest.raises(ValueError, match="eps"):
    sm.UniformExponential(10.0, eps=eps)


def test_smoothing_from_name():
  for name, cls in CLASSES.items():
    s = sm.smoothing_from_name(name, 3.0)
    assert type(s) is cls and s.beta == 3.0
  assert sm.smoothing_from_name("unexp", 3.0, eps=0.1).eps == 0.1
  with pytest.raises(ValueError, match="unknown smoothing 'powr'"):
    sm.smoothing_from_name("powr", 3.0)


def test_beta_is_a_traced_differentiable_leaf():
  s = sm.UniformExponential(jnp.array([10.0, 20.0]), eps=0.1)
  leaves, treedef = jax.tree.flatten(s)
  assert len(leaves) == 1 and leaves[0] is s.beta  # eps and the iteration budget are static
  assert jax.tree.unflatten(treedef, [jnp.ones(2)]).eps == 0.1
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.beta = 1.0

  # Traced β (under jit and grad) is accepted without validation errors, and differentiates.
  def loss(smoothing):
    return jnp.sum(sm.inverse_cdf(smoothing, jnp.array([0.3, 0.6]), jnp.array([0.4, 0.7])))

  grads = jax.jit(jax.grad(loss))(s)
  assert type(grads) is sm.UniformExponential
  chex.assert_shape(grads.beta, (2,))
  chex.assert_tree_all_finite(grads)


def test_treedefs_of_the_classes_differ():
  """Regression: jax's register_dataclass treedefs compare only the static fields, not the class;
  without the static ``name`` PowerFunction and Gaussian treedefs compared equal (with different
  hashes) and jit occasionally ran the power function's program on a Gaussian (1 run in ~10)."""
  smoothings = [cls(10.0) for cls in CLASSES.values()]
  for i, a in enumerate(smoothings):
    for b in smoothings[i + 1 :]:
      assert jax.tree.structure(a) != jax.tree.structure(b), (a, b)
  assert [s.name for s in smoothings] == list(CLASSES)
  with pytest.raises(ValueError, match="name is fixed"):
    sm.PowerFunction(10.0, name="gauss")


def test_non_smoothing_argument_is_rejected():
  with pytest.raises(TypeError, match="expected a smoothing"):
    sm.inverse_cdf("power", 0.5, 0.5)


def test_spike_has_no_density():
  s = sm.SpikeAndExp(5.0)
  for fn in (sm.log_r0, sm.log_ratio):
    with pytest.raises(ValueError, match="point mass"):
      fn(s, jnp.array([0.5]))
  with pytest.raises(ValueError, match="point mass"):
    sm.mixture_log_prob(s, jnp.array([0.5]), 0.5)
  with pytest.raises(ValueError, match="point mass"):
    sm.mixture_log_prob_logits(s, jnp.array([0.5]), 0.0)


# --------------------------------------------------------------------------------------------------
# Samplers: distribution (KS) and expected gradients.

KS_Q = np.array([0.05, 0.5, 0.95], np.float32)
KS_N = 20000


def windowed_ks_pvalue(samples, cdf, lo, hi):
  """One-sample KS p-value with the supremum taken over sample points in [lo, hi] only.

  Outside the window float32 rounds ζ onto atoms (0 and 1 for the power function at β = 40, the
  spike at 0), where the continuous-CDF statistic is meaningless; ranks still count every sample, so
  the masses below lo and above hi are tested too. The windowed sup is ≤ the full one under H0, so
  the Kolmogorov p-value is conservative.
  """
  x = np.sort(np.asarray(samples, np.float64))
  n = x.size
  i = np.arange(1, n + 1)
  f = cdf(x)
  inside = (x >= lo) & (x <= hi)
  d = max(np.max(i[inside] / n - f[inside]), np.max(f[inside] - (i[inside] - 1) / n))
  return stats.kstwo.sf(d, n)


def ks_window(name):
  # Where float32 resolves ζ well enough that rounding moves F by < 1e-4 (≪ 1/√n ≈ 7e-3).
  return {"gauss": (-np.inf, np.inf), "power": (1e-30, 1 - 1e-4)}.get(name, (1e-30, 1.0))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _draw(name, ancestral, key, logits, beta):
  fn = sm.sample_ancestral if ancestral else sm.sample
  return fn(key, CLASSES[name](beta), logits)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_samples_follow_mixture_cdf(case):
  """KS tests (fixed seeds) of ``sample`` and ``sample_ancestral`` against F, and of one against
  the other (two-sample KS); p > 1e-3 for each of 3 q values × 3 tests."""
  name, beta = case
  logits = jnp.broadcast_to(jnp.asarray(special.logit(KS_Q)), (KS_N, KS_Q.size))
  a = np.asarray(_draw(name, False, jax.random.key(1), logits, beta))
  b = np.asarray(_draw(name, True, jax.random.key(2), logits, beta))
  chex.assert_shape((a, b), (KS_N, KS_Q.size))
  lo, hi = ks_window(name)
  for j, q in enumerate(f32(KS_Q)):
    cdf = functools.partial(ref_mixture_cdf, name, beta, q=q)
    assert windowed_ks_pvalue(a[:, j], cdf, lo, hi) > 1e-3
    assert windowed_ks_pvalue(b[:, j], cdf, lo, hi) > 1e-3
    assert stats.ks_2samp(a[:, j], b[:, j]).pvalue > 1e-3
    if name == "spike_exp":
      # The atom: #{ζ = 0} ~ Binomial(n, 1 − q); 5 standard errors.
      for draws in (a[:, j], b[:, j]):
        se = math.sqrt(q * (1 - q) / KS_N)
        assert abs(np.mean(draws == 0.0) - (1 - q)) < 5 * se


def test_sample_shapes_and_dtype_errors():
  s = sm.PowerFunction(30.0)
  keys = jax.random.split(jax.random.key(1), 2)
  for raw in (sm.sample, sm.sample_ancestral):
    fn = jax.jit(raw)
    out = fn(jax.random.key(0), s, jnp.zeros((2, 3, 4)))
    chex.assert_shape(out, (2, 3, 4))
    # vmap over keys: row i equals the call with key i.
    batched = jax.jit(jax.vmap(raw, in_axes=(0, None, 0)))(keys, s, jnp.zeros((2, 3, 4)))
    np.testing.assert_allclose(batched[1], fn(keys[1], s, jnp.zeros((3, 4))), rtol=1e-5)
    with pytest.raises(ValueError, match="floating"):
      fn(jax.random.key(0), s, jnp.zeros((2,), jnp.int32))


def test_open_uniform_never_hits_zero_or_one():
  rho = sm.open_uniform(jax.random.key(0), (1 << 20,), jnp.float32)
  assert float(rho.min()) > 0.0 and float(rho.max()) < 1.0
  # Symmetric grid: the midpoints (2k + 1) 2^-24.
  np.testing.assert_array_equal(np.asarray(rho * 2**24) % 2, 1.0)


def smooth_fn(zeta):
  """A smooth test function f(ζ) with non-trivial derivatives everywhere."""
  return jnp.sin(3.0 * zeta) + zeta * zeta


def ref_expectations(name, beta):
  """E_{r(·|0)}[f], E_{r(·|1)}[f] by float64 quadrature (substitution ζ = u^β for the power)."""
  f = lambda t: math.sin(3.0 * t) + t * t
  if name == "spike_exp":
    _, pdf1 = ref_spike_r1(beta)
    e1, _ = integrate.quad(lambda t: f(t) * pdf1(t), 0.0, 1.0, epsabs=1e-13)
    return f(0.0), e1
  if name == "power":
    # ζ = u^β has r(·|0) when u ~ U(0, 1); 1 − u^β has r(·|1).
    e0, _ = integrate.quad(lambda u: f(u**beta), 0.0, 1.0, epsabs=1e-13, limit=200)
    e1, _ = integrate.quad(lambda u: f(1.0 - u**beta), 0.0, 1.0, epsabs=1e-13, limit=200)
    return e0, e1
  _, _, pdf0 = ref_components(name, beta)
  lo, hi = (-np.inf, np.inf) if name == "gauss" else (0.0, 1.0)
  e0, _ = integrate.quad(lambda t: f(t) * pdf0(t), lo, hi, epsabs=1e-13)
  e1, _ = integrate.quad(lambda t: f(t) * pdf0(1.0 - t), lo, hi, epsabs=1e-13)
  return e0, e1


@functools.partial(jax.jit, static_argnums=(0, 1))
def _per_sample_grads(name, ancestral, key, logits, beta):
  """Per-sample d f(ζ_i)/dl_i and d f(ζ_i)/dβ_i (each sample has its own logit and β copy)."""

  def total(lg, b):
    fn = sm.sample_ancestral if ancestral else sm.sample
    return jnp.sum(smooth_fn(fn(key, CLASSES[name](b), lg)))

  return jax.grad(total, argnums=(0, 1))(logits, beta)


GRAD_N = 100000
GRAD_Q = np.array([0.2, 0.7], np.float32)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_expected_gradients_match_quadrature(case):
  """d/dl E[f(ζ)] = q(1 − q)(E1[f] − E0[f]) and d/dβ E[f(ζ)] (quadrature, FD in β) are matched by
  the Monte-Carlo means of both samplers.

  Tolerance: 5 Monte-Carlo standard errors (sample std/√n, n = 1e5) plus 1e-4 for float32; for the
  difference of the two samplers √(SE_a² + SE_b²). β-gradient of the ancestral sampler: only through
  r(·|z), as documented; it is exact in expectation since z does not depend on β.
  """
  name, beta = case
  logits = jnp.broadcast_to(jnp.asarray(special.logit(GRAD_Q)), (GRAD_N, GRAD_Q.size))
  betas = jnp.full(logits.shape, beta, jnp.float32)
  e0, e1 = ref_expectations(name, beta)
  hb = 1e-4 * beta
  e0p, e1p = ref_expectations(name, beta + hb)
  e0m, e1m = ref_expectations(name, beta - hb)
  means = {}
  for ancestral, seed in ((False, 3), (True, 4)):
    g_l, g_b = _per_sample_grads(name, ancestral, jax.random.key(seed), logits, betas)
    g_l, g_b = np.asarray(g_l, np.float64), np.asarray(g_b, np.float64)
    means[ancestral] = []
    for j, q in enumerate(f32(GRAD_Q)):
      ref_l = q * (1 - q) * (e1 - e0)
      ref_b = ((1 - q) * (e0p - e0m) + q * (e1p - e1m)) / (2 * hb)
      for g, ref in ((g_l[:, j], ref_l), (g_b[:, j], ref_b)):
        se = g.std() / math.sqrt(g.size)
        assert abs(g.mean() - ref) <= 5 * se + 1e-4, (ancestral, q, g.mean(), ref, se)
      means[ancestral].append((g_l[:, j].mean(), g_l[:, j].std() / math.sqrt(GRAD_N)))
  for (ma, sa), (mb, sb) in zip(means[False], means[True], strict=True):
    assert abs(ma - mb) <= 5 * math.hypot(sa, sb) + 1e-4


def test_ancestral_surrogate_gradient_equals_implicit_formula():
  """For fixed draws, sample_ancestral's dζ/dl is q(1 − q)(R0 − R1)/q(ζ) (math.md §1), float64."""
  logits = jnp.linspace(-4.0, 4.0, 64)
  for name, beta in (("power", 30.0), ("gauss", 25.0), ("unexp", 16.0), ("exp", 10.0)):
    s = CLASSES[name](beta)
    key = jax.random.key(5)
    zeta = sm.sample_ancestral(key, s, logits)
    g = jax.grad(lambda lg, s=s, key=key: jnp.sum(sm.sample_ancestral(key, s, lg)))(logits)
    z64, q = f32(zeta), special.expit(f32(logits))
    cdf0, sf0, pdf0 = ref_components(name, beta)
    density = (1 - q) * pdf0(z64) + q * pdf0(1 - z64)
    expected = q * (1 - q) * (cdf0(z64) - sf0(1 - z64)) / density
    # Only where ζ is resolved in float32 (the power function puts many draws on 0 or 1).
    ok = (z64 > 1e-30) & (z64 < 1 - 1e-4) if name == "power" else np.ones(z64.shape, bool)
    assert ok.sum() > 20
    np.testing.assert_allclose(np.asarray(g)[ok], expected[ok], rtol=2e-3, atol=1e-7)
