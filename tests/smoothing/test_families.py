"""Tests of the smoothing families' densities and CDFs (dvae_jax/smoothing/{spike_and_exp,
exponential, power_function, gaussian}.py, math.md §1) against SciPy and float64 quadrature.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special
from smoothing_reference import (
  CASES,
  CLASSES,
  OVERLAPPING_CASES,
  case_id,
  f32,
  ref_components,
  ref_mixture_cdf,
  ref_spike_r1,
)

from dvae_jax import smoothing as sm

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
