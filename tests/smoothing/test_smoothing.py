"""Tests of dvae_jax/smoothing/ (MATH.md §1) against independent float64 NumPy/SciPy references.

References: scipy.stats (truncexpon, powerlaw, norm, uniform) for the component densities and CDFs,
scipy.integrate.quad for the CDF/pdf consistency and the expected values, and a float64 bisection
(300 halvings in the logit coordinate, i.e. exact to float64) for the mixture inverse CDF.
"""

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from dvae_jax import smoothing as sm

# --------------------------------------------------------------------------------------------------
# Float64 references (independent of the library: SciPy's distributions).

EPS_UNEXP = 0.05


def ref_components(name, beta, eps=EPS_UNEXP):
  """(cdf0, sf0, pdf0) of r(·|0) as float64 NumPy callables of ζ."""
  if name == "exp":
    d = stats.truncexpon(b=beta, scale=1.0 / beta)
    return d.cdf, d.sf, d.pdf
  if name == "power":
    d = stats.powerlaw(a=1.0 / beta)
    return d.cdf, d.sf, d.pdf
  if name == "gauss":
    d = stats.norm(scale=1.0 / math.sqrt(beta))
    return d.cdf, d.sf, d.pdf
  if name == "unexp":
    d, u = stats.truncexpon(b=beta, scale=1.0 / beta), stats.uniform()
    return (
      lambda z: (1 - eps) * d.cdf(z) + eps * u.cdf(z),
      lambda z: (1 - eps) * d.sf(z) + eps * u.sf(z),
      lambda z: (1 - eps) * d.pdf(z) + eps * u.pdf(z),
    )
  raise ValueError(name)


def ref_spike_r1(beta):
  """(cdf1, pdf1) of the spike-and-exp's r(ζ|1) = β e^{βζ}/(e^β − 1): the mirror of truncexpon."""
  d = stats.truncexpon(b=beta, scale=1.0 / beta)
  return (lambda z: d.sf(1.0 - z)), (lambda z: d.pdf(1.0 - z))


def ref_mixture_cdf(name, beta, zeta, q):
  if name == "spike_exp":
    cdf1, _ = ref_spike_r1(beta)
    return (1 - q) * (zeta >= 0) + q * cdf1(np.clip(zeta, 0, 1))
  cdf0, sf0, _ = ref_components(name, beta)
  return (1 - q) * cdf0(zeta) + q * sf0(1.0 - zeta)


def ref_inverse_cdf(name, beta, rho, q, iters=300):
  """Float64 bisection for F(ζ) = ρ; in x = logit ζ on [0, 1] (1 − ζ = expit(−x), no rounding)."""
  rho, q = np.broadcast_arrays(np.asarray(rho, np.float64), np.asarray(q, np.float64))
  if name == "spike_exp":
    # ζ = 0 on the atom; else R1(ζ) = (ρ − 1 + q)/q.
    spike = rho <= 1 - q
    target = np.where(spike, 0.0, (rho - 1 + q) / np.where(spike, 1.0, q))
    # The exponential mixture at q = 1 has F = R1 = the spike's r(ζ|1) CDF (its mirror image).
    return np.where(spike, 0.0, ref_inverse_cdf("exp", beta, target, np.ones_like(q), iters))
  gauss = name == "gauss"
  cdf0, sf0, _ = ref_components(name, beta)
  lo = np.full(rho.shape, -30.0 if gauss else -740.0)
  hi = np.full(rho.shape, 31.0 if gauss else 740.0)
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    z, w = (mid, 1 - mid) if gauss else (special.expit(mid), special.expit(-mid))
    below = (1 - q) * cdf0(z) + q * sf0(w) < rho
    lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
  x = 0.5 * (lo + hi)
  return x if gauss else special.expit(x)


def f32(x):
  """The float32 value of x, as float64 (references are evaluated at the same inputs)."""
  return np.asarray(x, np.float32).astype(np.float64)


CLASSES = {
  "spike_exp": sm.SpikeAndExp,
  "exp": sm.Exponential,
  "power": sm.PowerFunction,
  "gauss": sm.Gaussian,
  "unexp": sm.UniformExponential,
}
OVERLAPPING = ["exp", "power", "gauss", "unexp"]
NUMERICAL = ["power", "gauss", "unexp"]
# β values of the papers (MATH.md §6): the extremes of each range.
PAPER_BETAS = {
  "spike_exp": [4.0, 5.0],
  "exp": [8.0, 14.0],
  "power": [20.0, 40.0],
  "gauss": [25.0, 40.0],
  "unexp": [16.0, 40.0],
}
CASES = [(name, beta) for name, betas in PAPER_BETAS.items() for beta in betas]
OVERLAPPING_CASES = [c for c in CASES if c[0] != "spike_exp"]


def case_id(case):
  return f"{case[0]}-{case[1]:g}"


# One compiled program per smoothing class (β is a traced leaf), shared by the tests.
jit_inverse = jax.jit(sm.inverse_cdf)


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grads(name, rho, q, beta):
  def f(r, qq, b):
    return sm.inverse_cdf(CLASSES[name](b), r, qq)

  return jax.vmap(jax.value_and_grad(f, argnums=(0, 1, 2)))(rho, q, beta)


GRAD_LENGTH = 128


def value_and_grads(name, rho, q, beta):
  """Elementwise ζ and (dζ/dρ, dζ/dq, dζ/dβ) of the inverse CDF at scalar β.

  Inputs are padded to GRAD_LENGTH so that all tests share one compiled program per class.
  """
  rho, q = (np.asarray(a, np.float32).ravel() for a in np.broadcast_arrays(rho, q))
  n = rho.size
  assert n <= GRAD_LENGTH

  def pad(a):
    return jnp.asarray(np.concatenate([a, np.full(GRAD_LENGTH - n, 0.5, np.float32)]))

  zeta, grads = _value_and_grads(name, pad(rho), pad(q), jnp.full(GRAD_LENGTH, beta, jnp.float32))
  return np.asarray(zeta)[:n], tuple(np.asarray(g)[:n] for g in grads)


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
    sm.sample(s, jax.random.key(0), jnp.zeros(2))


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
# Component densities and CDFs.


def quad_power(pdf, lo, hi, mirrored):
  """∫_lo^hi pdf(t) dt for a density singular at 0 (or at 1 if ``mirrored``): in u = log t (or
  u = log(1 − t)), where the power function's integrand e^u r(e^u) is smooth."""
  if mirrored:
    g = lambda u: math.exp(u) * float(pdf(1.0 - math.exp(u)))
    bounds = (math.log1p(-hi), math.log1p(-lo))
  else:
    g = lambda u: math.exp(u) * float(pdf(math.exp(u)))
    bounds = (math.log(lo), math.log(hi))
  return integrate.quad(g, *bounds, epsabs=1e-14, epsrel=1e-10, limit=200)[0]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cdf_is_integral_of_pdf_float64(case):
  """R_z(ζ) − R_z(a) = ∫_a^ζ r(t|z) dt by quad, all in float64 (jax.enable_x64), both components.

  a = lower end of the support, except a = 1e-12 for the power function: its log densities are
  clipped within δ = finfo.epsneg of 0 and 1 (module docstring), which holds mass δ^{1/β}.
  """
  name, beta = case
  with jax.enable_x64(True):
    s = CLASSES[name](beta)
    cdfs = jax.jit(lambda t: jnp.stack([sm.cdf0(s, t), sm.cdf1(s, t)]))
    pdfs = {1: jax.jit(lambda t: jnp.exp(sm.log_r1(s, t)))}
    if name != "spike_exp":
      pdfs[0] = jax.jit(lambda t: jnp.exp(sm.log_r0(s, t)))
    lower = {"gauss": -np.inf, "power": 1e-12}.get(name, 0.0)
    points = [-0.3, 0.1, 0.5, 0.9, 1.3] if name == "gauss" else [1e-6, 0.1, 0.5, 0.9, 1 - 1e-6]
    base = np.asarray(cdfs(jnp.float64(lower))) if np.isfinite(lower) else np.zeros(2)
    for zeta in points:
      values = np.asarray(cdfs(jnp.float64(zeta))) - base
      for z, pdf in pdfs.items():
        if name == "power":
          integral = quad_power(pdf, lower, zeta, mirrored=z == 1)
        else:
          integral = integrate.quad(lambda t, pdf=pdf: float(pdf(t)), lower, zeta, epsabs=1e-14)[0]
        np.testing.assert_allclose(values[z], integral, rtol=1e-8, atol=1e-12)
    # The ends of the support.
    if name != "gauss":
      np.testing.assert_array_equal(np.asarray(cdfs(jnp.float64(1.0))), [1.0, 1.0])
      np.testing.assert_array_equal(np.asarray(cdfs(jnp.float64(-1e-9))), [0.0, 0.0])
    if name == "spike_exp":
      np.testing.assert_array_equal(np.asarray(cdfs(jnp.float64(0.0))), [1.0, 0.0])
    elif name != "gauss":
      np.testing.assert_array_equal(np.asarray(cdfs(jnp.float64(0.0))), [0.0, 0.0])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_float32_components_match_scipy(case):
  """log r(ζ|z) and R_z(ζ) in float32 against scipy.stats in float64."""
  name, beta = case
  s = CLASSES[name](beta)
  zeta = np.concatenate([np.linspace(0.0, 1.0, 101)[1:-1], [1e-6, 1e-3, 1 - 1e-3]])
  if name == "gauss":
    zeta = np.concatenate([zeta, np.linspace(-0.6, 1.6, 23)])
  zeta = f32(zeta)
  z32 = jnp.asarray(zeta, jnp.float32)
  if name == "spike_exp":
    cdf1, pdf1 = ref_spike_r1(beta)
    np.testing.assert_allclose(sm.cdf1(s, z32), cdf1(zeta), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(sm.log_r1(s, z32), np.log(pdf1(zeta)), rtol=1e-5, atol=3e-6)
    return
  cdf0, sf0, pdf0 = ref_components(name, beta)
  # The mirror is exact in float64; the float32 library computes 1 − ζ itself.
  np.testing.assert_allclose(sm.cdf0(s, z32), cdf0(zeta), rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(sm.cdf1(s, z32), sf0(1.0 - zeta), rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(sm.log_r0(s, z32), np.log(pdf0(zeta)), rtol=1e-5, atol=3e-6)
  np.testing.assert_allclose(sm.log_r1(s, z32), np.log(pdf0(1.0 - zeta)), rtol=1e-5, atol=3e-6)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cdfs_monotone_and_in_unit_interval(case):
  name, beta = case
  s = CLASSES[name](beta)
  zeta = jnp.linspace(-0.5, 1.5, 4001) if name == "gauss" else jnp.linspace(-0.1, 1.1, 4001)
  zeta = jnp.concatenate([zeta, jnp.array([0.0, 1e-30, 1e-7, 1 - 1e-7, 1.0])]).sort()
  q = jnp.array([0.0, 1e-7, 0.01, 0.5, 0.999, 1 - 1e-7, 1.0])[:, None]
  curves = jnp.concatenate(
    [sm.cdf0(s, zeta)[None], sm.cdf1(s, zeta)[None], sm.mixture_cdf(s, zeta, q)], axis=0
  )
  chex.assert_tree_all_finite(curves)
  assert float(curves.min()) >= 0.0 and float(curves.max()) <= 1.0
  assert float(jnp.diff(curves, axis=-1).min()) >= 0.0
  if name != "gauss":  # the [0, 1]-supported ones reach 0 and 1 at the ends of the support
    np.testing.assert_array_equal(curves[:, -1], 1.0)
  if name not in ("gauss", "spike_exp"):
    np.testing.assert_array_equal(curves[:, 0], 0.0)


@pytest.mark.parametrize("case", OVERLAPPING_CASES, ids=case_id)
def test_symmetry_and_log_ratio(case):
  """r(ζ|1) = r(1 − ζ|0), b = log r1 − log r0 (float64 ref), b(1 − ζ) = −b(ζ), b finite."""
  name, beta = case
  s = CLASSES[name](beta)
  zeta = f32(np.linspace(0.01, 0.99, 99))
  z32 = jnp.asarray(zeta, jnp.float32)
  np.testing.assert_allclose(sm.log_r1(s, z32), sm.log_r0(s, 1.0 - z32), rtol=1e-6, atol=1e-6)
  _, _, pdf0 = ref_components(name, beta)
  b_ref = np.log(pdf0(1.0 - zeta)) - np.log(pdf0(zeta))
  np.testing.assert_allclose(sm.log_ratio(s, z32), b_ref, rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(sm.log_ratio(s, 1.0 - z32), -b_ref, rtol=1e-5, atol=3e-5)
  closed_form = {
    "exp": beta * (2 * zeta - 1),
    "gauss": beta * (zeta - 0.5),
    "power": (1 - 1 / beta) * special.logit(zeta),
  }
  if name in closed_form:
    np.testing.assert_allclose(sm.log_ratio(s, z32), closed_form[name], rtol=1e-5, atol=2e-5)
  edges = jnp.array([0.0, 1e-38, 1e-30, 1e-7, 1 - 1e-7, 1.0], jnp.float32)
  chex.assert_tree_all_finite(
    (
      sm.log_ratio(s, edges),
      sm.log_r0(s, edges),
      sm.log_r1(s, edges),
      jax.vmap(jax.grad(lambda z: sm.log_ratio(s, z)))(edges),
    )
  )


def test_power_log_ratio_clip():
  """The documented float32 clip: ζ ∈ [δ, 1 − δ], δ = 2^-24, so |b| ≤ (1 − 1/β) logit(1 − δ)."""
  delta = 2.0**-24
  for beta in (30.0, 40.0):
    s = sm.PowerFunction(beta)
    cap = (1 - 1 / beta) * math.log((1 - delta) / delta)
    b = sm.log_ratio(s, jnp.array([0.0, 1e-30, delta, 1 - delta, 1.0], jnp.float32))
    np.testing.assert_allclose(b, [-cap, -cap, -cap, cap, cap], rtol=1e-6)
  assert abs(cap - 16.22) < 0.01  # β = 40, the value quoted in the module docstring
  # Values inside the clip are untouched.
  np.testing.assert_allclose(
    sm.log_ratio(s, jnp.float32(1e-6)), (1 - 1 / 40) * special.logit(f32(1e-6)), rtol=1e-6
  )
  # The mixture density is computed from the same clipped ζ: finite at ζ = 0 and 1.
  chex.assert_tree_all_finite(sm.mixture_log_prob(s, jnp.array([0.0, 1.0]), 0.3))


@pytest.mark.parametrize("case", OVERLAPPING_CASES, ids=case_id)
def test_mixture_log_prob(case):
  """log q(ζ) equals the float64 log of the mixture pdf; the logit form agrees; outside = −inf."""
  name, beta = case
  s = CLASSES[name](beta)
  zeta = f32(np.linspace(0.005, 0.995, 67))
  logits = np.array([-12.0, -3.0, 0.0, 2.5, 12.0], np.float32)[:, None]
  q = special.expit(logits.astype(np.float64))
  _, _, pdf0 = ref_components(name, beta)
  ref = np.log((1 - q) * pdf0(zeta) + q * pdf0(1 - zeta))
  z32 = jnp.asarray(zeta, jnp.float32)
  from_logits = sm.mixture_log_prob_logits(s, z32, jnp.asarray(logits))
  from_q = sm.mixture_log_prob(s, z32, jax.nn.sigmoid(jnp.asarray(logits)))
  np.testing.assert_allclose(from_logits, ref, rtol=1e-5, atol=1e-5)
  # The q form sees q rounded to float32 (1 − σ(12) loses 1% there): reference at that q.
  q32 = f32(jax.nn.sigmoid(jnp.asarray(logits)))
  ref_q32 = np.log((1 - q32) * pdf0(zeta) + q32 * pdf0(1 - zeta))
  np.testing.assert_allclose(from_q, ref_q32, rtol=1e-5, atol=1e-5)
  if name != "gauss":
    outside = sm.mixture_log_prob_logits(s, jnp.array([-0.1, 1.1]), 0.0)
    np.testing.assert_array_equal(outside, -np.inf)
  # Normalised: ∫ q(ζ) dζ = 1 (float64 quad of the library's own density); for the power function
  # ∫_a^{1−a} = F(1 − a) − F(a) (scipy), a = 1e-6: above the clip (see the CDF test), and 1 − ζ
  # keeps 10 digits in float64 (r(ζ|1) depends on 1 − ζ).
  with jax.enable_x64(True):
    s64 = CLASSES[name](beta)
    density = jax.jit(lambda t: jnp.exp(sm.mixture_log_prob_logits(s64, t, 1.5)))
    if name == "power":
      a, q = 1e-6, special.expit(1.5)
      total = quad_power(density, a, 0.5, False) + quad_power(density, 0.5, 1 - a, True)
      expected = ref_mixture_cdf(name, beta, 1 - a, q) - ref_mixture_cdf(name, beta, a, q)
    else:
      lo, hi = (-np.inf, np.inf) if name == "gauss" else (0.0, 1.0)
      total, _ = integrate.quad(lambda t: float(density(t)), lo, hi, limit=200)
      expected = 1.0
  np.testing.assert_allclose(total, expected, rtol=1e-8)


# --------------------------------------------------------------------------------------------------
# The inverse CDF.

RHO_GRID = np.linspace(0.02, 0.98, 49)
Q_GRID = np.concatenate([np.geomspace(0.01, 0.5, 10), 1 - np.geomspace(0.001, 0.5, 10)[::-1][1:]])


def paper_grid():
  r, q = np.meshgrid(RHO_GRID, Q_GRID)
  return f32(r.ravel()), f32(q.ravel())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_inverse_cdf_matches_float64_reference(case):
  """|ζ − ζ_ref| ≤ 1e-4 against a float64 bisection, q ∈ [0.01, 0.999], ρ ∈ [0.02, 0.98].

  Measured worst errors are 1e-6 to 4e-6 (float32 rounding of F where the mixture density is
  smallest, the flat middle at large β); the 1e-4 bound is the specification's.
  """
  name, beta = case
  rho, q = paper_grid()
  zeta = np.asarray(jit_inverse(CLASSES[name](beta), jnp.asarray(rho, jnp.float32), q))
  ref = ref_inverse_cdf(name, beta, rho, q)
  np.testing.assert_allclose(zeta, ref, rtol=0, atol=1e-4)
  # Round trip through the library's own CDF where F is not flat (well conditioned).
  # (Not for the power function's ζ that float32 rounds to 0 or 1, nor the spike's atom.)
  # Near 1 the float32 spacing 6e-8 of ζ moves F by q α (1 − ζ)^{α−1} 6e-8: < 1e-6 below 0.99.
  resolved = (zeta > 1e-30) & (zeta < 0.99) if name == "power" else zeta > 0
  back = sm.mixture_cdf(CLASSES[name](beta), jnp.asarray(zeta), q)
  np.testing.assert_allclose(np.asarray(back)[resolved], rho[resolved], atol=1e-5)


def test_numerical_solver_reproduces_analytic_exponential():
  """UniformExponential(β, eps=0) runs the Newton solver on the exponential: = the closed form."""
  rho, q = paper_grid()
  for beta in (8.0, 14.0):
    numeric = jit_inverse(sm.UniformExponential(beta, eps=0.0), rho, q)
    analytic = jit_inverse(sm.Exponential(beta), rho, q)
    np.testing.assert_allclose(numeric, analytic, atol=1e-5)


def test_inverse_cdf_float64_is_exact():
  """Under x64 the same solver reaches float64 accuracy (dtype follows the inputs)."""
  rho, q = paper_grid()
  with jax.enable_x64(True):
    for name, beta in (("power", 40.0), ("gauss", 40.0), ("unexp", 40.0)):
      zeta = sm.inverse_cdf(CLASSES[name](beta), jnp.asarray(rho), jnp.asarray(q))
      assert zeta.dtype == jnp.float64
      np.testing.assert_allclose(zeta, ref_inverse_cdf(name, beta, rho, q), rtol=0, atol=1e-10)


def _rel_close(actual, desired, rtol, atol_scale):
  """|a − d| ≤ rtol |d| + atol_scale max|d|: relative where the gradient is large, absolute where it
  vanishes (dζ/dβ at ρ = q = ½ is 0 by symmetry and float32 gives ~1e-8)."""
  actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
  bound = rtol * np.abs(desired) + atol_scale * np.max(np.abs(desired))
  bad = np.abs(actual - desired) > bound
  assert not bad.any(), (np.flatnonzero(bad)[:5], actual[bad][:5], desired[bad][:5])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_inverse_cdf_gradients_match_finite_differences(case):
  """dζ/dq, dζ/dρ, dζ/dβ against central differences of the float64 bisection.

  Step h = 1e-6 relative: truncation O(h²) ≈ 1e-12 and the bisection is exact to float64, so the
  reference is good to ~1e-9 relative. Tolerance 2e-3 relative (+1e-5 of the largest value) covers
  float32 (measured worst 3e-3 at gradients 1e-5 of the largest, below the absolute term).
  """
  name, beta = case
  r, qq = np.meshgrid(np.linspace(0.02, 0.98, 13), [0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 0.999])
  rho, q = f32(r.ravel()), f32(qq.ravel())
  if name == "spike_exp":  # the differentiable branch (ζ > 0); ζ = 0 has zero gradient
    keep = rho > 1 - q + 1e-3
    rho, q = rho[keep], q[keep]
  _, (g_rho, g_q, g_beta) = value_and_grads(name, rho, q, beta)
  ref = functools.partial(ref_inverse_cdf, name)
  hq, hr, hb = 1e-6 * np.minimum(q, 1 - q), 1e-6 * np.minimum(rho, 1 - rho), 1e-6 * beta
  fd_q = (ref(beta, rho, q + hq) - ref(beta, rho, q - hq)) / (2 * hq)
  fd_rho = (ref(beta, rho + hr, q) - ref(beta, rho - hr, q)) / (2 * hr)
  fd_beta = (ref(beta + hb, rho, q) - ref(beta - hb, rho, q)) / (2 * hb)
  _rel_close(g_q, fd_q, 2e-3, 1e-5)
  _rel_close(g_rho, fd_rho, 2e-3, 1e-5)
  _rel_close(g_beta, fd_beta, 2e-3, 1e-5)
  if name == "spike_exp":
    zeta, zero_grads = value_and_grads(name, [0.1, 0.5], [0.5, 0.3], beta)
    np.testing.assert_array_equal(zeta, 0.0)
    np.testing.assert_array_equal(np.stack(zero_grads), 0.0)


EXTREMES = np.array([0.0, 1e-30, 1e-7, 0.5, 1 - 1e-7, 1.0], np.float32)


@pytest.mark.parametrize("name", list(CLASSES))
def test_extreme_inputs_give_finite_values_and_gradients(name):
  """ρ, q ∈ {0, 1e-30, 1e-7, ½, 1 − 1e-7, 1} at the papers' largest β: finite ζ and gradients."""
  r, qq = np.meshgrid(EXTREMES, EXTREMES)
  for beta in PAPER_BETAS[name]:
    zeta, grads = value_and_grads(name, r, qq, beta)
    chex.assert_tree_all_finite((zeta, grads))
    if name != "gauss":
      assert float(zeta.min()) >= 0.0 and float(zeta.max()) <= 1.0


@functools.cache
def _scalar_value_and_grads(name):
  def f(rho, q, beta):
    return sm.inverse_cdf(CLASSES[name](beta), rho, q)

  return jax.jit(lambda r, q, b: (f(r, q, b), jax.grad(f, argnums=(0, 1, 2))(r, q, b)))


unit = st.floats(1e-7, 1 - 1e-7)


@pytest.mark.parametrize("name", list(CLASSES))
@settings(max_examples=25, derandomize=True, deadline=None)
@given(rho=unit, q=unit, scale=st.floats(0.0, 1.0))
def test_property_finite_and_monotone(name, rho, q, scale):
  """Over ρ, q ∈ [1e-7, 1 − 1e-7] and β in the papers' range: finite value and gradients,
  ζ in the support, ∂ζ/∂ρ ≥ 0 and ∂ζ/∂q ≥ 0 (F decreases in q: ∂F/∂q = R1 − R0 ≤ 0),
  and the mirror identity F^{-1}(ρ; q) = 1 − F^{-1}(1 − ρ; 1 − q) of the symmetric smoothings."""
  lo, hi = PAPER_BETAS[name]
  beta = np.float32(lo + scale * (hi - lo))
  fn = _scalar_value_and_grads(name)
  rho32, q32 = np.float32(rho), np.float32(q)
  zeta, (g_rho, g_q, g_beta) = fn(rho32, q32, beta)
  chex.assert_tree_all_finite((zeta, g_rho, g_q, g_beta))
  assert float(g_rho) >= 0.0 and float(g_q) >= 0.0
  if name != "gauss":
    assert 0.0 <= float(zeta) <= 1.0
  if name in OVERLAPPING:
    mirrored, _ = fn(np.float32(1.0) - rho32, np.float32(1.0) - q32, beta)
    # 1 − ρ and 1 − q are rounded in float32; the induced change of ζ is at most |dζ/dρ| ulp(ρ).
    slack = 1e-6 + 2e-7 * (abs(float(g_rho)) + abs(float(g_q)))
    assert abs(float(zeta) - (1.0 - float(mirrored))) <= slack


def test_broadcasting_and_vmap_over_beta():
  """Elementwise broadcasting of ρ [B, n], q [n], β [n]; vmap over a stacked smoothing."""
  key = jax.random.key(0)
  rho = jax.random.uniform(key, (5, 3))
  q = jnp.array([0.1, 0.5, 0.9])
  beta = jnp.array([20.0, 30.0, 40.0])
  out = sm.inverse_cdf(sm.PowerFunction(beta), rho, q)
  chex.assert_shape(out, (5, 3))
  for j in range(3):
    column = sm.inverse_cdf(sm.PowerFunction(float(beta[j])), rho[:, j], q[j])
    # ζ = σ(x) near 0 carries the float32 error of x ≈ −21 (1e-6 relative).
    np.testing.assert_allclose(out[:, j], column, rtol=1e-5, atol=1e-30)
  stacked = jax.vmap(lambda s, r: sm.inverse_cdf(s, r, 0.3))(sm.Gaussian(beta), rho.T)
  for j in range(3):
    expected = sm.inverse_cdf(sm.Gaussian(beta[j]), rho[:, j], 0.3)
    np.testing.assert_allclose(stacked[j], expected, rtol=1e-6, atol=1e-7)


def test_jit_does_not_retrace():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(s, rho, q):
    return sm.inverse_cdf(s, rho, q)

  # New β, ρ and q values of the same shapes reuse the trace (β is a traced leaf).
  for beta, seed in ((20.0, 0), (30.0, 1), (40.0, 2)):
    rho = jax.random.uniform(jax.random.key(seed), (4, 6))
    f(sm.PowerFunction(beta), rho, jnp.full((4, 6), 0.1 * seed + 0.3))


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
  return fn(CLASSES[name](beta), key, logits)


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
    out = fn(s, jax.random.key(0), jnp.zeros((2, 3, 4)))
    chex.assert_shape(out, (2, 3, 4))
    # vmap over keys: row i equals the call with key i.
    batched = jax.jit(jax.vmap(raw, in_axes=(None, 0, 0)))(s, keys, jnp.zeros((2, 3, 4)))
    np.testing.assert_allclose(batched[1], fn(s, keys[1], jnp.zeros((3, 4))), rtol=1e-5)
    with pytest.raises(ValueError, match="floating"):
      fn(s, jax.random.key(0), jnp.zeros((2,), jnp.int32))


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
    return jnp.sum(smooth_fn(fn(CLASSES[name](b), key, lg)))

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
  """For fixed draws, sample_ancestral's dζ/dl is q(1 − q)(R0 − R1)/q(ζ) (MATH.md §1), float64."""
  logits = jnp.linspace(-4.0, 4.0, 64)
  for name, beta in (("power", 30.0), ("gauss", 25.0), ("unexp", 16.0), ("exp", 10.0)):
    s = CLASSES[name](beta)
    key = jax.random.key(5)
    zeta = sm.sample_ancestral(s, key, logits)
    g = jax.grad(lambda lg, s=s, key=key: jnp.sum(sm.sample_ancestral(s, key, lg)))(logits)
    z64, q = f32(zeta), special.expit(f32(logits))
    cdf0, sf0, pdf0 = ref_components(name, beta)
    density = (1 - q) * pdf0(z64) + q * pdf0(1 - z64)
    expected = q * (1 - q) * (cdf0(z64) - sf0(1 - z64)) / density
    # Only where ζ is resolved in float32 (the power function puts many draws on 0 or 1).
    ok = (z64 > 1e-30) & (z64 < 1 - 1e-4) if name == "power" else np.ones(z64.shape, bool)
    assert ok.sum() > 20
    np.testing.assert_allclose(np.asarray(g)[ok], expected[ok], rtol=2e-3, atol=1e-7)
