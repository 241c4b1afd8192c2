"""Float64 references for the tests of dvae_jax/smoothing/ (independent of the library).

scipy.stats (truncexpon, powerlaw, norm, uniform) for the component densities and CDFs, and a
float64 bisection (300 halvings in the logit coordinate, i.e. exact to float64) for the mixture
inverse CDF; the classes and the papers' β values every test file runs over.
"""

import math

import numpy as np
from scipy import special, stats

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
# β values of the papers (math.md §6): the extremes of each range.
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
