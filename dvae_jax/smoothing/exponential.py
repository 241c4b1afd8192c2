"""Exponential and uniform+exponential smoothings (DVAE++, DVAE#; math.md §1).

r_exp(ζ|0) = β e^{−βζ}/(1 − e^{−β}) on [0, 1]; the uniform+exp mixes in ε of the uniform,
r(ζ|0) = (1 − ε) r_exp(ζ) + ε. Both are symmetric (r(ζ|1) = r(1 − ζ|0)) and share their code: the
exponential is the family at ε = 0 with its closed-form mixture inverse; the uniform+exp uses the
numerical solver (``numerical_inverse``) in the logit coordinate x = logit ζ.

With E = 1 − e^{−β}: R_exp(ζ) = (1 − e^{−βζ})/E and 1 − R_exp(ζ) = e^{−βζ}(1 − e^{−β(1−ζ)})/E.
The closed-form inverse uses e^{−β}, which underflows in float32 for β ≳ 87: it is meant for the
papers' β (8–14); ``UniformExponential(beta, eps=0.0)`` (the numerical solver, the same
distribution) serves larger β.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from dvae_jax import numerics
from dvae_jax.smoothing import base
from dvae_jax.smoothing import numerical_inverse as solver
from dvae_jax.smoothing.symmetric import Symmetric


def _log_expm1_ratio(t):
  """log((1 − e^{−t})/t) for t ≥ 0 (→ 0 at t = 0) without dividing by a tiny t.

  Dividing by t ≈ 1e-30 made XLA's fused derivative NaN under jit; below 1e-3 the series
  −t/2 + t²/24 is exact to float32.
  """
  small = t < 1e-3
  t_big = jnp.where(small, 1.0, t)
  return jnp.where(small, t * (t / 24.0 - 0.5), jnp.log(-jnp.expm1(-t_big)) - jnp.log(t_big))


def _log_cdf0_x(beta, eps, x):
  log_e = numerics.log1mexp(-beta)
  # R0/ζ is smooth and positive down to ζ = 0 (→ (1 − ε)β/E + ε), so log R0 = log ζ + log(R0/ζ);
  # R_exp/ζ = β (1 − e^{−βζ})/(βζ)/E.
  log_ratio = jnp.log(beta) + _log_expm1_ratio(beta * jax.nn.sigmoid(x)) - log_e
  if eps:
    log_ratio = jnp.logaddexp(math.log1p(-eps) + log_ratio, math.log(eps))
  # ≤ 0 (a probability); the rounding of the three logs can reach +1e-7 near ζ = 1.
  return jnp.minimum(jax.nn.log_sigmoid(x) + log_ratio, 0.0)


def _log_sf0_x(beta, eps, x):
  log_e = numerics.log1mexp(-beta)
  # (1 − R_exp)/w = e^{−βζ}(1 − e^{−βw})/(wE), w = 1 − ζ = σ(−x): no overflow of e^{βw}.
  w = jax.nn.sigmoid(-x)
  log_ratio = -beta * jax.nn.sigmoid(x) + jnp.log(beta) + _log_expm1_ratio(beta * w) - log_e
  if eps:
    log_ratio = jnp.logaddexp(math.log1p(-eps) + log_ratio, math.log(eps))
  return jnp.minimum(jax.nn.log_sigmoid(-x) + log_ratio, 0.0)


def _log_r0(beta, eps, zeta):
  """log r(ζ|0) on [0, 1] (no support check)."""
  log_exp = jnp.log(beta) - beta * zeta - numerics.log1mexp(-beta)
  if eps:
    return jnp.logaddexp(math.log1p(-eps) + log_exp, math.log(eps))
  return log_exp


def _cdf0(beta, eps, zeta):
  r_exp = jnp.expm1(-beta * zeta) / jnp.expm1(-beta)
  # Exactly 1 at the end of the support (x/x need not round to 1 under jit).
  return jnp.where(zeta >= 1.0, 1.0, jnp.clip((1.0 - eps) * r_exp + eps * zeta, 0.0, 1.0))


def _exp_inverse_cdf(beta, rho, q):
  """Analytic inverse of the exponential mixture CDF (DVAE++, math.md §1).

  With x = e^{−βζ}: (1 − q) x² + B x − q e^{−β} = 0, B = ρ(1 − e^{−β}) + q e^{−β} − (1 − q);
  the positive root in the cancellation-free form for either sign of B.
  """
  e = jnp.exp(-beta)
  one_m_e = -jnp.expm1(-beta)
  a = 1.0 - q
  c = q * e
  b = rho * one_m_e + c - a
  disc = jnp.sqrt(b * b + 4.0 * a * c)
  pos = b >= 0
  den_pos = jnp.where(pos, b + disc, 1.0)
  den_neg = jnp.where(pos, 1.0, 2.0 * a)
  num_neg = jnp.where(pos, 1.0, disc - b)
  root = jnp.where(pos, 2.0 * c / den_pos, num_neg / den_neg)
  tiny = jnp.finfo(root.dtype).tiny
  zeta = -jnp.log(jnp.clip(root, tiny, 1.0)) / beta
  return jnp.clip(zeta, 0.0, 1.0)


class _ExponentialMixture(Symmetric):
  """r(ζ|0) = (1 − ε) r_exp(ζ) + ε for the ε of ``_eps()``; the code of both classes."""

  coordinate = solver.LOGIT

  def _eps(self) -> float:
    return 0.0

  def log_r0(self, zeta):
    beta = base.beta_array(self, zeta)
    zeta = jnp.asarray(zeta, beta.dtype)
    inside = (zeta >= 0) & (zeta <= 1)
    return jnp.where(inside, _log_r0(beta, self._eps(), jnp.clip(zeta, 0.0, 1.0)), -jnp.inf)

  def cdf0(self, zeta):
    beta = base.beta_array(self, zeta)
    zeta = jnp.asarray(zeta, beta.dtype)
    return _cdf0(beta, self._eps(), jnp.clip(zeta, 0.0, 1.0))

  def log_ratio(self, zeta):
    beta = base.beta_array(self, zeta)
    zeta = jnp.clip(jnp.asarray(zeta, beta.dtype), 0.0, 1.0)
    eps = self._eps()
    return _log_r0(beta, eps, 1.0 - zeta) - _log_r0(beta, eps, zeta)

  def _log_cdf0_x(self, x):
    return _log_cdf0_x(base.beta_array(self, x), self._eps(), x)

  def _log_sf0_x(self, x):
    return _log_sf0_x(base.beta_array(self, x), self._eps(), x)

  def _log_pdf0_x(self, x):
    beta = base.beta_array(self, x)
    return _log_r0(beta, self._eps(), jax.nn.sigmoid(x)) + self.coordinate.log_dzeta_dx(x)

  def _bracket_x(self, lr, lr1):
    # The mixture density is at most M = r(0|0) = (1 − ε)β/E + ε, so F(ζ) ≤ Mζ and
    # 1 − F(ζ) ≤ M(1 − ζ).
    beta = base.beta_array(self, lr)
    log_m = _log_r0(beta, self._eps(), jnp.zeros_like(beta))
    lo = base.logit_from_log(lr - log_m)
    hi = -base.logit_from_log(lr1 - log_m)
    return lo, hi

  def _guess_x(self, lr, lr1, lq, l1mq):
    zeta = _exp_inverse_cdf(base.beta_array(self, lr), jnp.exp(lr), jnp.exp(lq))
    finfo = jnp.finfo(zeta.dtype)
    zeta = jnp.clip(zeta, finfo.tiny, 1.0 - finfo.epsneg)
    return jnp.log(zeta) - jnp.log1p(-zeta)

  def _sample0_x(self, key, shape, dtype):
    key_rho, key_mix = jax.random.split(key)
    beta = base.beta_array(self, jnp.zeros((), dtype))
    rho = base.open_uniform(key_rho, shape, dtype)
    # R_exp^{-1}(ρ) = −log(1 − Eρ)/β; its logit from log ζ and log(1 − ζ) without rounding ζ to 1.
    zeta = -jnp.log1p(jnp.expm1(-beta) * rho) / beta
    x_exp = jnp.log(zeta) - jnp.log1p(-zeta)
    eps = self._eps()
    if not eps:
      return x_exp
    x_uniform = jnp.log(rho) - jnp.log1p(-rho)
    return jnp.where(jax.random.uniform(key_mix, shape, dtype) < eps, x_uniform, x_exp)


@struct.dataclass
class Exponential(_ExponentialMixture):
  """Exponential smoothing r(ζ|0) = β e^{−βζ}/(1 − e^{−β}) on [0, 1] (DVAE++/DVAE#, math.md §1).

  The mixture inverse CDF is analytic; b(ζ) = β(2ζ − 1).

  Attributes:
    beta: sharpness β > 0 (the rate of the truncated exponential; not an inverse temperature), a
      float or an array broadcastable against ζ.
    name: "exp" (static, fixed; makes the treedef differ from the other classes').
  """

  beta: base.ArrayLike
  name: str = base.name_field("exp")

  numerical_inverse = False

  def __post_init__(self):
    base.check_construction(self, "exp")

  def inverse_cdf(self, rho, q):
    dtype = base.float_dtype(rho, q, self.beta)
    return _exp_inverse_cdf(
      jnp.asarray(self.beta, dtype), jnp.asarray(rho, dtype), jnp.asarray(q, dtype)
    )

  def log_ratio(self, zeta):
    beta = base.beta_array(self, zeta)
    return beta * (2.0 * jnp.clip(jnp.asarray(zeta, beta.dtype), 0.0, 1.0) - 1.0)


@struct.dataclass
class UniformExponential(_ExponentialMixture):
  """Uniform+exponential smoothing r(ζ|0) = (1 − ε) r_exp(ζ) + ε on [0, 1] (DVAE#, math.md §1).

  Attributes:
    beta: sharpness β > 0 of the exponential part (not an inverse temperature), a float or an
      array broadcastable against ζ.
    eps: weight ε ∈ [0, 1) of the uniform part (static; default 0.05 as in DVAE#).
    solver_iterations: iteration budget of the numerical inverse CDF (static).
    name: "unexp" (static, fixed; makes the treedef differ from the other classes').
  """

  beta: base.ArrayLike
  eps: float = struct.field(pytree_node=False, default=0.05)
  solver_iterations: int = solver.iterations_field()
  name: str = base.name_field("unexp")

  def __post_init__(self):
    base.check_construction(self, "unexp")
    if not isinstance(self.eps, int | float) or not 0.0 <= self.eps < 1.0:
      raise ValueError(f"UniformExponential: eps must be a float in [0, 1), got {self.eps!r}")

  def _eps(self) -> float:
    return float(self.eps)
