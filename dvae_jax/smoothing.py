"""Smoothing transformations r(ζ|z), the relaxed mixture q(ζ) and its reparameterised samplers.

MATH.md §1. Every smoothing is a small immutable pytree whose ``beta`` (the sharpness) is a pytree
leaf: a Python float or an array broadcastable against ζ, so it can be traced, vmapped and learned.
All functions are elementwise and shape-polymorphic; ``q`` is the Bernoulli mean σ(l) of the
encoder.

Smoothings:

* ``SpikeAndExp(beta)``: r(ζ|0) = δ(ζ), r(ζ|1) = β e^{βζ}/(e^β − 1) on [0, 1] (DVAE).
* ``Exponential(beta)``: r(ζ|0) = β e^{−βζ}/(1 − e^{−β}) on [0, 1] (DVAE++/DVAE#).
* ``PowerFunction(beta)``: r(ζ|0) = ζ^{1/β − 1}/β on (0, 1] (DVAE#).
* ``Gaussian(beta)``: r(ζ|0) = N(ζ; 0, 1/β) on ℝ (DVAE#).
* ``UniformExponential(beta, eps=0.05)``: r(ζ|0) = (1 − ε) r_exp(ζ) + ε on [0, 1] (DVAE#).

The overlapping ones are symmetric, r(ζ|1) = r(1 − ζ|0).

Inverse CDF of the mixture F(ζ) = (1 − q) R0(ζ) + q R1(ζ): closed forms for the spike-and-exp and
the exponential; for the power function, Gaussian and uniform+exp a safeguarded Newton–bisection
solver with a fixed iteration budget, run in an unbounded coordinate x (ζ = σ(x) on [0, 1],
ζ = x + ½ for the Gaussian) on log F, so that draws within 1e-30 of 0 or 1 (power function at
β = 40) keep full precision. Its derivatives are the implicit ones (DVAE# §3.4), attached by
``jax.custom_jvp``: dζ = (dρ − ∂F/∂q dq − ∂F/∂β dβ) / q(ζ); the solver iterations are never
differentiated.

Numerics of the log densities (MATH.md §1 Numerics):

* Outside the support the log densities are −inf and the CDFs 0 or 1.
* ``PowerFunction``: the log densities and b(ζ) evaluate ζ clipped to [δ, 1 − δ] with
  δ = ``finfo(dtype).epsneg`` (2^-24 ≈ 5.96e-8 in float32: the gap between 1 and the largest float
  below 1, so every ζ ≥ 1 − δ/2 is stored as exactly 1). The clip is symmetric, so
  r(ζ|1) = r(1 − ζ|0) and b(1 − ζ) = −b(ζ) hold exactly after clipping and draws of z = 0 and
  z = 1 are treated alike. It caps |b(ζ)| = (1 − 1/β)|logit ζ| at (1 − 1/β) log((1 − δ)/δ): 16.22
  for β = 40 and 16.08 for β = 30 in float32, 35.8 for β = 40 in float64. (The reference adds 1e-7
  inside the pdf instead, which caps |b| at about 15.7 for β = 40.) Effect: on [0, δ) and
  (1 − δ, 1] the log densities are constant (those at δ and 1 − δ), although these intervals hold
  probability δ^{1/β} each under r(·|0) and r(·|1) (0.66 for β = 40): the objectives see
  b = ∓16.2 for those draws instead of the exact values (−29 for ζ = 1e-13, say), which float32
  cannot represent on the side of 1 anyway. The CDFs are not clipped.
* The exponential, uniform+exp and Gaussian log densities are finite on the whole support without
  clipping; their b(ζ) evaluates ζ clipped to the support ([0, 1]; none for the Gaussian).
* ``inverse_cdf`` clamps ρ into [finfo.tiny, 1 − finfo.epsneg] (inside the open interval (0, 1)), so
  ρ = 0 or 1 gives a finite ζ; ``sample`` draws ρ on the midpoints of the uniform grid, so it never
  draws 0 or 1.
* The exponential's analytic inverse uses e^{−β}, which underflows in float32 for β ≳ 87: it is
  meant for the papers' β (8–14); use ``UniformExponential(beta, eps=0.0)`` (the numerical solver,
  the same distribution) for larger β.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.scipy import special as jsp

Array = jax.Array
ArrayLike = Any

#: Default iteration budget (evaluations of F) of the safeguarded Newton solver. Measured on 200k
#: random (ρ, q) with ρ, q ∈ [1e-7, 1 − 1e-7] and β = 0.8–1.2× the papers' values (float32): the
#: result no longer changes after 12 evaluations (worst: uniform+exp at β ≈ 48); 16 is a margin.
DEFAULT_SOLVER_ITERATIONS = 16

# Below this u = α softplus(−x), log(1 − e^{−u}) is evaluated from log u (u may underflow to 0).
_SMALL_U = 1e-4
# Below this y, log(softplus(y)) = y to float32 precision (the next term is e^y/2 < 1.6e-7).
_LOG_SOFTPLUS_LINEAR = -15.0


# --------------------------------------------------------------------------------------------------
# Small numerically safe helpers.


def _float_dtype(*xs) -> jnp.dtype:
  dtype = jnp.result_type(*xs)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.result_type(dtype, float)
  return dtype


def _log1mexp(t: Array) -> Array:
  """log(1 − e^t) for t < 0, accurate at both ends (t is clamped below 0 so it stays finite)."""
  t = jnp.minimum(t, -jnp.finfo(jnp.result_type(t)).tiny)
  near = t > -math.log(2.0)
  t_near = jnp.where(near, t, -1.0)
  t_far = jnp.where(near, -1.0, t)
  return jnp.where(near, jnp.log(-jnp.expm1(t_near)), jnp.log1p(-jnp.exp(t_far)))


def _log_softplus(y: Array) -> Array:
  """log(log(1 + e^y)), finite when softplus(y) underflows."""
  linear = y < _LOG_SOFTPLUS_LINEAR
  y_safe = jnp.where(linear, 0.0, y)
  return jnp.where(linear, y, jnp.log(jax.nn.softplus(y_safe)))


def _logit_from_log(log_p: Array) -> Array:
  """logit(p) from log p (p ∈ (0, 1)), keeping precision for p near 0 and near 1."""
  return log_p - _log1mexp(log_p)


def _log_neg_expm1_neg(beta: Array) -> Array:
  """log(1 − e^{−β}) for β > 0."""
  return jnp.log(-jnp.expm1(-beta))


def _check_beta(name: str, beta, *, on_use: bool) -> None:
  """ValueError unless a concrete β is > 0; anything else passes.

  At construction (``on_use=False``) only Python numbers are checked: the same constructor rebuilds
  the pytree from arbitrary leaves (``jax.grad`` returns a smoothing whose β is a gradient, possibly
  negative; ``jax.tree.map`` may put booleans there). The public functions (``on_use=True``) check
  every concrete β, Python, NumPy or jax, before using it; tracers are never checked.
  """
  if isinstance(beta, bool | np.bool_):
    return
  if on_use:
    concrete = isinstance(beta, int | float | np.ndarray | np.generic) or (
      isinstance(beta, jax.Array) and not isinstance(beta, jax.core.Tracer)
    )
  else:
    concrete = isinstance(beta, int | float)
  if not concrete:
    return
  values = np.asarray(beta)
  if not np.issubdtype(values.dtype, np.number):
    raise ValueError(f"{name}: beta must be a positive number, got {beta!r}")
  if not np.all(values > 0):
    raise ValueError(f"{name}: beta must be > 0, got {beta!r}")


def _check_name(s, expected: str) -> None:
  # The static ``name`` makes the treedefs of the classes differ: JAX's ``register_dataclass``
  # treedefs compare only the static field values, not the class, so without it
  # PyTreeDef(PowerFunction) == PyTreeDef(Gaussian) (with different hashes), and jit's cache can
  # occasionally (hash-table collisions) run one smoothing's compiled program for the other; this
  # was observed here (a Gaussian sampled with the power function's solver, ~1 run in 10).
  if s.name != expected:
    raise ValueError(f"{type(s).__name__}: name is fixed to {expected!r}, got {s.name!r}")


def _open_uniform(key: Array, shape, dtype) -> Array:
  """ρ ~ U(0, 1) on the midpoints of jax's uniform grid: never exactly 0 or 1."""
  half_step = 0.5 * jnp.finfo(dtype).eps
  return jax.random.uniform(key, shape, dtype) + jnp.asarray(half_step, dtype)


# --------------------------------------------------------------------------------------------------
# The smoothings. The private methods implement the per-component functions; the module functions
# below are the public API.


class _Beta:
  """β as an array of the floating dtype shared with the other arguments."""

  def _beta(self, like):
    return jnp.asarray(self.beta, _float_dtype(like, self.beta))


class _Overlapping(_Beta):
  """Shared machinery of the symmetric smoothings, r(ζ|1) = r(1 − ζ|0) (MATH.md §1).

  Subclasses provide, in the solver coordinate x (with ζ = T(x) and 1 − ζ = T(−x)):
  ``_to_zeta(x)``, ``_log_dzeta_dx(x)``, ``_log_cdf0_x(x)`` = log R0(T(x)),
  ``_log_sf0_x(x)`` = log(1 − R0(T(x))), ``_log_pdf0_x(x)`` = log r(T(x)|0) + log T'(x),
  ``_bracket_x(log ρ, log(1 − ρ))`` an interval holding the root of F = ρ for every q (ρ ≤ ½),
  ``_guess_x(log ρ, log(1 − ρ), log q, log(1 − q))``, ``_sample0_x(key, shape, dtype)`` a draw of
  x with T(x) ~ r(·|0); and in ζ: ``_log_r0``, ``_cdf0``, ``_ratio``.
  """

  numerical_inverse = True

  # Mirror symmetry gives the z = 1 component from the z = 0 one.
  def _log_r1(self, zeta):
    return self._log_r0(1.0 - zeta)

  def _cdf1(self, zeta):
    return 1.0 - self._cdf0(1.0 - zeta)

  def _inverse_cdf(self, rho, q):
    dtype = _float_dtype(rho, q, self.beta)
    rho = jnp.asarray(rho, dtype)
    q = jnp.asarray(q, dtype)
    beta = jnp.asarray(self.beta, dtype)
    return _numerical_inverse_cdf_jit(self.replace(beta=None), rho, q, beta)

  def _sample_given_z(self, key, z, dtype):
    x0 = self._sample0_x(key, z.shape, dtype)
    return jnp.where(z, -x0, x0)


# The numerical inverse of the mixture CDF in x (MATH.md §1), with implicit derivatives.


def _mixture_log_cdf_x(s, x, log_q, log_1mq):
  """log F(T(x)) = log[(1 − q) R0 + q R1] with R1(T(x)) = 1 − R0(T(−x))."""
  return jnp.logaddexp(log_1mq + s._log_cdf0_x(x), log_q + s._log_sf0_x(-x))


def _mixture_log_pdf_x(s, x, log_q, log_1mq):
  """log of the mixture density of x, q(T(x)) T'(x)."""
  return jnp.logaddexp(log_1mq + s._log_pdf0_x(x), log_q + s._log_pdf0_x(-x))


def _r0_minus_r1_x(s, x):
  """R0 − R1 at ζ = T(x), = −∂F/∂q, from the smaller tail on each side (no cancellation)."""
  left = x <= 0
  x_left = jnp.where(left, x, 0.0)
  x_right = jnp.where(left, 0.0, x)
  # Left of ½: R0 − R1 = R0(x) − S0(−x); right: = S1 − S0 = R0(−x) − S0(x).
  diff_left = jnp.exp(s._log_cdf0_x(x_left)) - jnp.exp(s._log_sf0_x(-x_left))
  diff_right = jnp.exp(s._log_cdf0_x(-x_right)) - jnp.exp(s._log_sf0_x(x_right))
  return jnp.where(left, diff_left, diff_right)


def _mixture_cdf_x(s, x, q):
  """F(T(x)) linear in q (for tangents: no log q, so q ∈ {0, 1} is safe)."""
  return (1.0 - q) * jnp.exp(s._log_cdf0_x(x)) + q * jnp.exp(s._log_sf0_x(-x))


def _flip_to_lower_half(rho, q):
  """Map F(x; q) = ρ with ρ > ½ to the mirrored F(y; 1 − q) = 1 − ρ, y = −x (symmetry)."""
  dtype = rho.dtype
  finfo = jnp.finfo(dtype)
  rho = jnp.clip(rho, finfo.tiny, 1.0 - finfo.epsneg)
  flip = rho > 0.5
  log_rho = jnp.log(rho)
  log_1mrho = jnp.log1p(-rho)
  log_q = jnp.log(q)
  log_1mq = jnp.log1p(-q)
  lr = jnp.where(flip, log_1mrho, log_rho)
  lr1 = jnp.where(flip, log_rho, log_1mrho)
  lq = jnp.where(flip, log_1mq, log_q)
  l1mq = jnp.where(flip, log_q, log_1mq)
  return flip, lr, lr1, lq, l1mq


def _solve_lower(s, lr, lr1, lq, l1mq, num_iterations):
  """Root of log F(y) = log ρ (ρ ≤ ½) by safeguarded Newton–bisection, fixed iteration count.

  Newton on log F: the tails of log F are nearly linear in x, where Newton is exact. A Newton step
  is taken when it lands inside the current bracket and at least halves the step before last, or
  when it is below a few ulps of y (converged: stay); otherwise the bracket is bisected, so the
  bracket shrinks at least geometrically. Returns the evaluated point with the smallest
  |log F − log ρ|.
  """
  lo, hi = s._bracket_x(lr, lr1)
  # Pad the bracket against its own rounding errors.
  pad = 1e-3 * (1.0 + jnp.abs(lo) + jnp.abs(hi))
  lo = lo - pad
  hi = hi + pad
  width = hi - lo
  y0 = jnp.clip(s._guess_x(lr, lr1, lq, l1mq), lo, hi)
  y0 = jnp.where(jnp.isfinite(y0), y0, 0.5 * (lo + hi))
  ulp = jnp.finfo(lr.dtype).eps

  def body(_, state):
    y, lo, hi, step_old, step, best_y, best_h = state
    log_f = _mixture_log_cdf_x(s, y, lq, l1mq)
    h = log_f - lr
    dh = jnp.exp(_mixture_log_pdf_x(s, y, lq, l1mq) - log_f)
    better = jnp.abs(h) < best_h
    best_y = jnp.where(better, y, best_y)
    best_h = jnp.where(better, jnp.abs(h), best_h)
    below = h < 0
    lo = jnp.where(below, y, lo)
    hi = jnp.where(below, hi, y)
    newton_step = h / dh
    y_newton = y - newton_step
    converged = jnp.abs(newton_step) <= 4.0 * ulp * jnp.maximum(jnp.abs(y), 1.0)
    use_newton = (
      jnp.isfinite(y_newton)
      & (y_newton >= lo)
      & (y_newton <= hi)
      & ((jnp.abs(newton_step) <= 0.5 * jnp.abs(step_old)) | converged)
    )
    y_new = jnp.where(use_newton, y_newton, 0.5 * (lo + hi))
    new_step = jnp.where(use_newton, newton_step, 0.5 * (hi - lo))
    return y_new, lo, hi, step, new_step, best_y, best_h

  inf = jnp.full_like(y0, jnp.inf)
  init = (y0, lo, hi, 2.0 * width, width, y0, inf)
  *_, best_y, _ = lax.fori_loop(0, num_iterations, body, init)
  return best_y


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _numerical_inverse_cdf(static, rho, q, beta):
  s = static.replace(beta=beta)
  rho, q, beta = jnp.broadcast_arrays(rho, q, beta)
  flip, lr, lr1, lq, l1mq = _flip_to_lower_half(rho, q)
  y = _solve_lower(s, lr, lr1, lq, l1mq, static.solver_iterations)
  return s._to_zeta(jnp.where(flip, -y, y))


def _numerical_inverse_cdf_jvp(static, primals, tangents):
  rho, q, beta = primals
  rho_dot, q_dot, beta_dot = tangents
  s = static.replace(beta=beta)
  rho_b, q_b, _ = jnp.broadcast_arrays(rho, q, beta)
  flip, lr, lr1, lq, l1mq = _flip_to_lower_half(rho_b, q_b)
  y = lax.stop_gradient(_solve_lower(s, lr, lr1, lq, l1mq, static.solver_iterations))
  x = jnp.where(flip, -y, y)
  zeta = s._to_zeta(x)
  # dζ = (dρ − ∂F/∂q dq − ∂F/∂β dβ)/q(ζ), ∂F/∂q = R1 − R0, q(ζ) = f_x / T'(x) (MATH.md §1).
  # Tangents known to be zero (SymbolicZero) are skipped: d/dl alone needs no ∂F/∂β.
  dfdot = jnp.zeros_like(zeta)
  if not isinstance(rho_dot, SymbolicZero):
    dfdot = dfdot - rho_dot
  if not isinstance(q_dot, SymbolicZero):
    dfdot = dfdot - _r0_minus_r1_x(s, x) * q_dot
  if not isinstance(beta_dot, SymbolicZero):
    # ∂F/∂β at fixed x (T does not depend on β), in the half where F is small (y, mirrored q);
    # there F(y; 1 − q) = 1 − F(x; q), hence the sign flip.
    q_mirror = jnp.where(flip, 1.0 - q_b, q_b)
    _, dfdbeta_dot = jax.jvp(
      lambda b: _mixture_cdf_x(static.replace(beta=b), y, q_mirror), (beta,), (beta_dot,)
    )
    dfdot = dfdot + jnp.where(flip, -dfdbeta_dot, dfdbeta_dot)
  log_pdf_zeta = _mixture_log_pdf_x(s, y, lq, l1mq) - s._log_dzeta_dx(x)
  return zeta, -dfdot * jnp.exp(-log_pdf_zeta)


_numerical_inverse_cdf.defjvp(_numerical_inverse_cdf_jvp, symbolic_zeros=True)
# Jitted so that eager calls reuse one compiled solver per (smoothing type, shapes); inside an outer
# jit this is inlined.
_numerical_inverse_cdf_jit = jax.jit(_numerical_inverse_cdf, static_argnums=0)


def _dzeta_dq_x(s, x, q):
  """The implicit dζ/dq = (R0 − R1)/q(ζ) at ζ = T(x) (MATH.md §1), from x."""
  log_q = jnp.log(q)
  log_1mq = jnp.log1p(-q)
  log_pdf_zeta = _mixture_log_pdf_x(s, x, log_q, log_1mq) - s._log_dzeta_dx(x)
  return _r0_minus_r1_x(s, x) * jnp.exp(-log_pdf_zeta)


# The exponential and uniform+exp in the logit coordinate x = logit ζ. With ε = 0 these are the
# exponential's. E = 1 − e^{−β}; R_exp(ζ) = (1 − e^{−βζ})/E;
# 1 − R_exp(ζ) = e^{−βζ}(1 − e^{−β(1−ζ)})/E.


def _log_expm1_ratio(t):
  """log((1 − e^{−t})/t) for t ≥ 0 (→ 0 at t = 0) without dividing by a tiny t.

  Dividing by t ≈ 1e-30 made XLA's fused derivative NaN under jit; below 1e-3 the series
  −t/2 + t²/24 is exact to float32.
  """
  small = t < 1e-3
  t_big = jnp.where(small, 1.0, t)
  return jnp.where(small, t * (t / 24.0 - 0.5), jnp.log(-jnp.expm1(-t_big)) - jnp.log(t_big))


def _uexp_log_cdf0_x(beta, eps, x):
  log_e = _log_neg_expm1_neg(beta)
  # R0/ζ is smooth and positive down to ζ = 0 (→ (1 − ε)β/E + ε), so log R0 = log ζ + log(R0/ζ);
  # R_exp/ζ = β (1 − e^{−βζ})/(βζ)/E.
  log_ratio = jnp.log(beta) + _log_expm1_ratio(beta * jax.nn.sigmoid(x)) - log_e
  if eps:
    log_ratio = jnp.logaddexp(math.log1p(-eps) + log_ratio, math.log(eps))
  # ≤ 0 (a probability); the rounding of the three logs can reach +1e-7 near ζ = 1.
  return jnp.minimum(jax.nn.log_sigmoid(x) + log_ratio, 0.0)


def _uexp_log_sf0_x(beta, eps, x):
  log_e = _log_neg_expm1_neg(beta)
  # (1 − R_exp)/w = e^{−βζ}(1 − e^{−βw})/(wE), w = 1 − ζ = σ(−x): no overflow of e^{βw}.
  w = jax.nn.sigmoid(-x)
  log_ratio = -beta * jax.nn.sigmoid(x) + jnp.log(beta) + _log_expm1_ratio(beta * w) - log_e
  if eps:
    log_ratio = jnp.logaddexp(math.log1p(-eps) + log_ratio, math.log(eps))
  return jnp.minimum(jax.nn.log_sigmoid(-x) + log_ratio, 0.0)


def _uexp_log_r0(beta, eps, zeta):
  """log r(ζ|0) on [0, 1] (no support check)."""
  log_exp = jnp.log(beta) - beta * zeta - _log_neg_expm1_neg(beta)
  if eps:
    return jnp.logaddexp(math.log1p(-eps) + log_exp, math.log(eps))
  return log_exp


def _uexp_cdf0(beta, eps, zeta):
  r_exp = jnp.expm1(-beta * zeta) / jnp.expm1(-beta)
  # Exactly 1 at the end of the support (x/x need not round to 1 under jit).
  return jnp.where(zeta >= 1.0, 1.0, jnp.clip((1.0 - eps) * r_exp + eps * zeta, 0.0, 1.0))


def _exp_inverse_cdf(beta, rho, q):
  """Analytic inverse of the exponential mixture CDF (DVAE++, MATH.md §1).

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


class _LogitCoordinate:
  """ζ = σ(x) on [0, 1]; 1 − ζ = σ(−x)."""

  @staticmethod
  def _to_zeta(x):
    return jax.nn.sigmoid(x)

  @staticmethod
  def _log_dzeta_dx(x):
    return jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x)


class _ExponentialFamily(_LogitCoordinate, _Overlapping):
  """Shared code of ``Exponential`` (ε = 0) and ``UniformExponential``."""

  def _eps(self):
    return 0.0

  def _log_r0(self, zeta):
    beta = self._beta(zeta)
    zeta = jnp.asarray(zeta, beta.dtype)
    inside = (zeta >= 0) & (zeta <= 1)
    return jnp.where(inside, _uexp_log_r0(beta, self._eps(), jnp.clip(zeta, 0.0, 1.0)), -jnp.inf)

  def _cdf0(self, zeta):
    beta = self._beta(zeta)
    zeta = jnp.asarray(zeta, beta.dtype)
    return _uexp_cdf0(beta, self._eps(), jnp.clip(zeta, 0.0, 1.0))

  def _ratio(self, zeta):
    beta = self._beta(zeta)
    zeta = jnp.clip(jnp.asarray(zeta, beta.dtype), 0.0, 1.0)
    eps = self._eps()
    return _uexp_log_r0(beta, eps, 1.0 - zeta) - _uexp_log_r0(beta, eps, zeta)

  def _log_cdf0_x(self, x):
    return _uexp_log_cdf0_x(self._beta(x), self._eps(), x)

  def _log_sf0_x(self, x):
    return _uexp_log_sf0_x(self._beta(x), self._eps(), x)

  def _log_pdf0_x(self, x):
    beta = self._beta(x)
    return _uexp_log_r0(beta, self._eps(), jax.nn.sigmoid(x)) + self._log_dzeta_dx(x)

  def _log_max_density(self, beta):
    """log of the largest density of r(·|z), (1 − ε)β/E + ε (at ζ = 0 for z = 0)."""
    return _uexp_log_r0(beta, self._eps(), jnp.zeros_like(beta))

  def _bracket_x(self, lr, lr1):
    # The mixture density is at most M, so F(ζ) ≤ Mζ and 1 − F(ζ) ≤ M(1 − ζ).
    log_m = self._log_max_density(self._beta(lr))
    lo = _logit_from_log(lr - log_m)
    hi = -_logit_from_log(lr1 - log_m)
    return lo, hi

  def _guess_x(self, lr, lr1, lq, l1mq):
    zeta = _exp_inverse_cdf(self._beta(lr), jnp.exp(lr), jnp.exp(lq))
    finfo = jnp.finfo(zeta.dtype)
    zeta = jnp.clip(zeta, finfo.tiny, 1.0 - finfo.epsneg)
    return jnp.log(zeta) - jnp.log1p(-zeta)

  def _sample0_x(self, key, shape, dtype):
    key_rho, key_mix = jax.random.split(key)
    beta = self._beta(jnp.zeros((), dtype))
    rho = _open_uniform(key_rho, shape, dtype)
    # R_exp^{-1}(ρ) = −log(1 − Eρ)/β; its logit from log ζ and log(1 − ζ) without rounding ζ to 1.
    zeta = -jnp.log1p(jnp.expm1(-beta) * rho) / beta
    x_exp = jnp.log(zeta) - jnp.log1p(-zeta)
    eps = self._eps()
    if not eps:
      return x_exp
    x_uniform = jnp.log(rho) - jnp.log1p(-rho)
    return jnp.where(jax.random.uniform(key_mix, shape, dtype) < eps, x_uniform, x_exp)


@struct.dataclass
class Exponential(_ExponentialFamily):
  """Exponential smoothing r(ζ|0) = β e^{−βζ}/(1 − e^{−β}) on [0, 1] (DVAE++/DVAE#, MATH.md §1).

  The mixture inverse CDF is analytic; b(ζ) = β(2ζ − 1).

  Attributes:
    beta: sharpness β > 0, a float or an array broadcastable against ζ.
    name: "exp" (static, fixed; makes the treedef differ from the other classes').
  """

  beta: ArrayLike
  name: str = struct.field(pytree_node=False, default="exp", kw_only=True, repr=False)

  numerical_inverse = False

  def __post_init__(self):
    _check_beta("Exponential", self.beta, on_use=False)
    _check_name(self, "exp")

  def _inverse_cdf(self, rho, q):
    dtype = _float_dtype(rho, q, self.beta)
    return _exp_inverse_cdf(
      jnp.asarray(self.beta, dtype), jnp.asarray(rho, dtype), jnp.asarray(q, dtype)
    )

  def _ratio(self, zeta):
    beta = self._beta(zeta)
    return beta * (2.0 * jnp.clip(jnp.asarray(zeta, beta.dtype), 0.0, 1.0) - 1.0)


@struct.dataclass
class UniformExponential(_ExponentialFamily):
  """Uniform+exponential smoothing r(ζ|0) = (1 − ε) r_exp(ζ) + ε on [0, 1] (DVAE#, MATH.md §1).

  Attributes:
    beta: sharpness β > 0 of the exponential part, a float or an array broadcastable against ζ.
    eps: weight ε ∈ [0, 1) of the uniform part (static; default 0.05 as in DVAE#).
    solver_iterations: iteration budget of the numerical inverse CDF (static).
    name: "unexp" (static, fixed; makes the treedef differ from the other classes').
  """

  beta: ArrayLike
  eps: float = struct.field(pytree_node=False, default=0.05)
  solver_iterations: int = struct.field(pytree_node=False, default=DEFAULT_SOLVER_ITERATIONS)
  name: str = struct.field(pytree_node=False, default="unexp", kw_only=True, repr=False)

  def __post_init__(self):
    _check_beta("UniformExponential", self.beta, on_use=False)
    _check_name(self, "unexp")
    if not isinstance(self.eps, int | float) or not 0.0 <= self.eps < 1.0:
      raise ValueError(f"UniformExponential: eps must be a float in [0, 1), got {self.eps!r}")

  def _eps(self):
    return float(self.eps)


@struct.dataclass
class PowerFunction(_LogitCoordinate, _Overlapping):
  """Power-function smoothing r(ζ|0) = ζ^{1/β − 1}/β on (0, 1], R0(ζ) = ζ^{1/β} (DVAE#, MATH.md §1).

  With α = 1/β: b(ζ) = (1 − α) logit ζ, evaluated at ζ clipped to [δ, 1 − δ], δ = finfo.epsneg (see
  the module docstring: |b| ≤ 16.22 at β = 40 in float32).

  Attributes:
    beta: sharpness β > 0, a float or an array broadcastable against ζ.
    solver_iterations: iteration budget of the numerical inverse CDF (static).
    name: "power" (static, fixed; makes the treedef differ from the other classes').
  """

  beta: ArrayLike
  solver_iterations: int = struct.field(pytree_node=False, default=DEFAULT_SOLVER_ITERATIONS)
  name: str = struct.field(pytree_node=False, default="power", kw_only=True, repr=False)

  def __post_init__(self):
    _check_beta("PowerFunction", self.beta, on_use=False)
    _check_name(self, "power")

  @staticmethod
  def _clip(zeta):
    delta = jnp.finfo(zeta.dtype).epsneg
    return jnp.clip(zeta, delta, 1.0 - delta)

  def _log_r0(self, zeta):
    beta = self._beta(zeta)
    zeta = jnp.asarray(zeta, beta.dtype)
    inside = (zeta >= 0) & (zeta <= 1)
    value = -jnp.log(beta) + (1.0 / beta - 1.0) * jnp.log(self._clip(zeta))
    return jnp.where(inside, value, -jnp.inf)

  def _cdf0(self, zeta):
    beta = self._beta(zeta)
    zeta = jnp.clip(jnp.asarray(zeta, beta.dtype), 0.0, 1.0)
    positive = zeta > 0
    zeta_safe = jnp.where(positive, zeta, 1.0)
    return jnp.where(positive, jnp.exp(jnp.log(zeta_safe) / beta), 0.0)

  def _cdf1(self, zeta):
    beta = self._beta(zeta)
    zeta = jnp.clip(jnp.asarray(zeta, beta.dtype), 0.0, 1.0)
    below_one = zeta < 1
    zeta_safe = jnp.where(below_one, zeta, 0.0)
    return jnp.where(below_one, -jnp.expm1(jnp.log1p(-zeta_safe) / beta), 1.0)

  def _ratio(self, zeta):
    beta = self._beta(zeta)
    zeta = self._clip(jnp.asarray(zeta, beta.dtype))
    return (1.0 - 1.0 / beta) * (jnp.log(zeta) - jnp.log1p(-zeta))

  def _log_cdf0_x(self, x):
    return jax.nn.log_sigmoid(x) / self._beta(x)

  def _log_sf0_x(self, x):
    # log(1 − e^{−u}), u = α softplus(−x) = −α log σ(x); from log u where u underflows.
    beta = self._beta(x)
    u = jax.nn.softplus(-x) / beta
    small = u < _SMALL_U
    u_big = jnp.where(small, 1.0, u)
    log_small = _log_softplus(-x) - jnp.log(beta) - 0.5 * u
    return jnp.where(small, log_small, _log1mexp(-u_big))

  def _log_pdf0_x(self, x):
    beta = self._beta(x)
    return -jnp.log(beta) + jax.nn.log_sigmoid(x) / beta + jax.nn.log_sigmoid(-x)

  def _bracket_x(self, lr, lr1):
    # R1 ≤ F ≤ R0 (ζ^α + (1 − ζ)^α ≥ 1), so R0^{-1}(ρ) ≤ ζ* ≤ R1^{-1}(ρ): log ζ = β log ρ and
    # log(1 − ζ) = β log(1 − ρ).
    beta = self._beta(lr)
    return _logit_from_log(beta * lr), -_logit_from_log(beta * lr1)

  def _guess_x(self, lr, lr1, lq, l1mq):
    # The component that holds ρ: R0(ζ) = ρ/(1 − q) if ρ ≤ 1 − q, else R1(ζ) = (ρ − 1 + q)/q.
    beta = self._beta(lr)
    first = lr <= l1mq
    log_zeta = beta * jnp.where(first, lr - l1mq, 0.0)
    log_1mzeta = beta * jnp.where(first, 0.0, lr1 - lq)
    tiny = jnp.finfo(lr.dtype).tiny
    x_first = _logit_from_log(jnp.minimum(log_zeta, -tiny))
    x_second = -_logit_from_log(jnp.minimum(log_1mzeta, -tiny))
    return jnp.where(first, x_first, x_second)

  def _sample0_x(self, key, shape, dtype):
    beta = self._beta(jnp.zeros((), dtype))
    rho = _open_uniform(key, shape, dtype)
    return _logit_from_log(beta * jnp.log(rho))


@struct.dataclass
class Gaussian(_Overlapping):
  """Gaussian smoothing r(ζ|0) = N(ζ; 0, 1/β) on ℝ, r(ζ|1) = N(ζ; 1, 1/β) (DVAE#, MATH.md §1).

  b(ζ) = β(ζ − ½). The solver coordinate is x = ζ − ½.

  Attributes:
    beta: precision β > 0, a float or an array broadcastable against ζ.
    solver_iterations: iteration budget of the numerical inverse CDF (static).
    name: "gauss" (static, fixed; makes the treedef differ from the other classes').
  """

  beta: ArrayLike
  solver_iterations: int = struct.field(pytree_node=False, default=DEFAULT_SOLVER_ITERATIONS)
  name: str = struct.field(pytree_node=False, default="gauss", kw_only=True, repr=False)

  def __post_init__(self):
    _check_beta("Gaussian", self.beta, on_use=False)
    _check_name(self, "gauss")

  def _log_r0(self, zeta):
    beta = self._beta(zeta)
    zeta = jnp.asarray(zeta, beta.dtype)
    return 0.5 * (jnp.log(beta) - math.log(2 * math.pi)) - 0.5 * beta * zeta * zeta

  def _cdf0(self, zeta):
    beta = self._beta(zeta)
    return jsp.ndtr(jnp.asarray(zeta, beta.dtype) * jnp.sqrt(beta))

  def _cdf1(self, zeta):
    beta = self._beta(zeta)
    return jsp.ndtr((jnp.asarray(zeta, beta.dtype) - 1.0) * jnp.sqrt(beta))

  def _ratio(self, zeta):
    beta = self._beta(zeta)
    return beta * (jnp.asarray(zeta, beta.dtype) - 0.5)

  @staticmethod
  def _to_zeta(x):
    return x + 0.5

  @staticmethod
  def _log_dzeta_dx(x):
    return jnp.zeros_like(x)

  def _log_cdf0_x(self, x):
    return jsp.log_ndtr((x + 0.5) * jnp.sqrt(self._beta(x)))

  def _log_sf0_x(self, x):
    return jsp.log_ndtr(-(x + 0.5) * jnp.sqrt(self._beta(x)))

  def _log_pdf0_x(self, x):
    return self._log_r0(x + 0.5)

  def _bracket_x(self, lr, lr1):
    # R1 ≤ F ≤ R0, so Φ^{-1}(ρ)/√β ≤ ζ* ≤ 1 + Φ^{-1}(ρ)/√β.
    beta = self._beta(lr)
    # exp(lr) ≥ tiny: XLA on CPU flushes subnormals to zero, and ndtri(0) = −inf.
    z = jsp.ndtri(jnp.maximum(jnp.exp(lr), jnp.finfo(lr.dtype).tiny)) / jnp.sqrt(beta)
    return z - 0.5, z + 0.5

  def _guess_x(self, lr, lr1, lq, l1mq):
    beta = self._beta(lr)
    finfo = jnp.finfo(lr.dtype)
    first = lr <= l1mq
    p_first = jnp.clip(jnp.exp(lr - l1mq), finfo.tiny, 1.0 - finfo.epsneg)
    # R1(ζ) = (ρ − 1 + q)/q = 1 − (1 − ρ)/q.
    p_second = jnp.clip(-jnp.expm1(lr1 - lq), finfo.tiny, 1.0 - finfo.epsneg)
    z_first = jsp.ndtri(p_first) / jnp.sqrt(beta)
    z_second = 1.0 + jsp.ndtri(p_second) / jnp.sqrt(beta)
    return jnp.where(first, z_first, z_second) - 0.5

  def _sample0_x(self, key, shape, dtype):
    beta = self._beta(jnp.zeros((), dtype))
    return jax.random.normal(key, shape, dtype) / jnp.sqrt(beta) - 0.5


@struct.dataclass
class SpikeAndExp(_Beta):
  """Spike-and-exponential smoothing (DVAE, MATH.md §1).

  r(ζ|0) = δ(ζ) (a point mass: no density, so ``log_r0``, ``log_ratio`` and ``mixture_log_prob``
  raise), r(ζ|1) = β e^{βζ}/(e^β − 1) on [0, 1]. The inverse CDF is analytic and ζ = 0 exactly when
  ρ ≤ 1 − q.

  Attributes:
    beta: sharpness β > 0, a float or an array broadcastable against ζ.
    name: "spike_exp" (static, fixed; makes the treedef differ from the other classes').
  """

  beta: ArrayLike
  name: str = struct.field(pytree_node=False, default="spike_exp", kw_only=True, repr=False)

  numerical_inverse = False

  def __post_init__(self):
    _check_beta("SpikeAndExp", self.beta, on_use=False)
    _check_name(self, "spike_exp")

  def _no_density(self, what):
    raise ValueError(
      f"SpikeAndExp: {what} is undefined because r(ζ|0) is a point mass at ζ = 0 (no density); "
      "use an overlapping smoothing (Exponential, PowerFunction, Gaussian, UniformExponential)"
    )

  def _log_r0(self, zeta):
    self._no_density("log r(ζ|0)")

  def _ratio(self, zeta):
    self._no_density("the log-ratio b(ζ)")

  def _log_r1(self, zeta):
    beta = self._beta(zeta)
    zeta = jnp.asarray(zeta, beta.dtype)
    inside = (zeta >= 0) & (zeta <= 1)
    value = jnp.log(beta) - beta * (1.0 - jnp.clip(zeta, 0.0, 1.0)) - _log_neg_expm1_neg(beta)
    return jnp.where(inside, value, -jnp.inf)

  def _cdf0(self, zeta):
    beta = self._beta(zeta)
    return jnp.where(jnp.asarray(zeta, beta.dtype) >= 0, 1.0, 0.0).astype(beta.dtype)

  def _cdf1(self, zeta):
    beta = self._beta(zeta)
    zeta = jnp.clip(jnp.asarray(zeta, beta.dtype), 0.0, 1.0)
    # (e^{βζ} − 1)/(e^β − 1) = e^{−β(1−ζ)} (1 − e^{−βζ})/(1 − e^{−β}), free of overflow.
    value = jnp.exp(-beta * (1.0 - zeta)) * jnp.expm1(-beta * zeta) / jnp.expm1(-beta)
    # Exactly 1 at the end of the support (x/x need not round to 1 under jit).
    return jnp.where(zeta >= 1.0, 1.0, jnp.clip(value, 0.0, 1.0))

  def _inverse_cdf(self, rho, q):
    dtype = _float_dtype(rho, q, self.beta)
    beta = jnp.asarray(self.beta, dtype)
    rho = jnp.asarray(rho, dtype)
    q = jnp.asarray(q, dtype)
    spike = rho <= 1.0 - q
    # u = (ρ − 1 + q)/q ∈ (0, 1] off the spike; ζ = 1 + log(1 − (1 − u)(1 − e^{−β}))/β.
    q_safe = jnp.where(spike, 1.0, q)
    u = jnp.where(spike, 1.0, (rho - 1.0 + q) / q_safe)
    zeta = 1.0 + jnp.log1p((1.0 - u) * jnp.expm1(-beta)) / beta
    return jnp.where(spike, 0.0, jnp.clip(zeta, 0.0, 1.0))

  def _sample_given_z(self, key, z, dtype):
    beta = self._beta(jnp.zeros((), dtype))
    rho = _open_uniform(key, z.shape, dtype)
    zeta1 = 1.0 + jnp.log1p((1.0 - rho) * jnp.expm1(-beta)) / beta
    return jnp.where(z, jnp.clip(zeta1, 0.0, 1.0), 0.0)

  def _dzeta_dq(self, zeta, z, q):
    # Off the spike, dζ/dq = (R0 − R1)/(q r1(ζ)) with R0 = 1; on the spike q(ζ) = ∞, so 0.
    beta = self._beta(zeta)
    zeta_safe = jnp.where(z, zeta, 0.5)
    # 1 − R1(ζ) = (e^β − e^{βζ})/(e^β − 1) = (1 − e^{−β(1−ζ)})/(1 − e^{−β}).
    one_m_r1 = -jnp.expm1(-beta * (1.0 - zeta_safe)) / (-jnp.expm1(-beta))
    value = one_m_r1 * jnp.exp(-self._log_r1(zeta_safe)) / q
    return jnp.where(z, value, 0.0)


Smoothing = SpikeAndExp | Exponential | PowerFunction | Gaussian | UniformExponential

_NAMES = {
  "spike_exp": SpikeAndExp,
  "exp": Exponential,
  "power": PowerFunction,
  "gauss": Gaussian,
  "unexp": UniformExponential,
}


def smoothing_from_name(name: str, beta: ArrayLike, **kwargs) -> Smoothing:
  """The smoothing called ``name`` ('spike_exp', 'exp', 'power', 'gauss', 'unexp') with ``beta``."""
  if name not in _NAMES:
    raise ValueError(f"unknown smoothing {name!r}; valid names: {', '.join(sorted(_NAMES))}")
  return _NAMES[name](beta, **kwargs)


def _check_smoothing(s) -> None:
  if not isinstance(s, SpikeAndExp | Exponential | PowerFunction | Gaussian | UniformExponential):
    raise TypeError(f"expected a smoothing from dvae_jax.smoothing, got {type(s).__name__}")
  _check_beta(type(s).__name__, s.beta, on_use=True)


# --------------------------------------------------------------------------------------------------
# Public per-component functions (MATH.md §1).


def log_r0(s: Smoothing, zeta: ArrayLike) -> Array:
  """log r(ζ|0), elementwise over ζ [...] (broadcast against β); −inf outside the support.

  This is c(ζ) of the DVAE# relaxed prior (MATH.md §4). Raises ValueError for ``SpikeAndExp``.
  """
  _check_smoothing(s)
  return s._log_r0(zeta)


def log_r1(s: Smoothing, zeta: ArrayLike) -> Array:
  """log r(ζ|1), elementwise; = log r(1 − ζ|0) for the overlapping smoothings."""
  _check_smoothing(s)
  return s._log_r1(zeta)


def cdf0(s: Smoothing, zeta: ArrayLike) -> Array:
  """R0(ζ) = P(ζ' ≤ ζ | z = 0), elementwise (a unit step at 0 for ``SpikeAndExp``)."""
  _check_smoothing(s)
  return s._cdf0(zeta)


def cdf1(s: Smoothing, zeta: ArrayLike) -> Array:
  """R1(ζ) = P(ζ' ≤ ζ | z = 1), elementwise; = 1 − R0(1 − ζ) for the overlapping smoothings."""
  _check_smoothing(s)
  return s._cdf1(zeta)


def log_ratio(s: Smoothing, zeta: ArrayLike) -> Array:
  """b(ζ) = log r(ζ|1) − log r(ζ|0) (MATH.md §1, §4), finite for every ζ.

  ζ is clipped to the support (and for ``PowerFunction`` to [δ, 1 − δ], δ = finfo.epsneg; see the
  module docstring). Raises ValueError for ``SpikeAndExp``.
  """
  _check_smoothing(s)
  return s._ratio(zeta)


def mixture_cdf(s: Smoothing, zeta: ArrayLike, q: ArrayLike) -> Array:
  """F(ζ) = (1 − q) R0(ζ) + q R1(ζ), elementwise over broadcast ζ, q, β (MATH.md §1)."""
  _check_smoothing(s)
  return (1.0 - q) * s._cdf0(zeta) + q * s._cdf1(zeta)


def mixture_log_prob(s: Smoothing, zeta: ArrayLike, q: ArrayLike) -> Array:
  """log q(ζ) = log[(1 − q) r(ζ|0) + q r(ζ|1)] by logaddexp, elementwise (MATH.md §1).

  Prefer ``mixture_log_prob_logits`` when the logits are at hand. Raises ValueError for
  ``SpikeAndExp`` (its mixture has an atom at 0).
  """
  _check_smoothing(s)
  q = jnp.asarray(q)
  return jnp.logaddexp(jnp.log1p(-q) + s._log_r0(zeta), jnp.log(q) + s._log_r1(zeta))


def mixture_log_prob_logits(s: Smoothing, zeta: ArrayLike, logits: ArrayLike) -> Array:
  """log q(ζ) from the logits l, with log q = −softplus(−l), log(1 − q) = −softplus(l).

  Elementwise over broadcast ζ, l, β [...]. Raises ValueError for ``SpikeAndExp``.
  """
  _check_smoothing(s)
  logits = jnp.asarray(logits)
  return jnp.logaddexp(
    -jax.nn.softplus(logits) + s._log_r0(zeta), -jax.nn.softplus(-logits) + s._log_r1(zeta)
  )


def inverse_cdf(s: Smoothing, rho: ArrayLike, q: ArrayLike) -> Array:
  """ζ = F^{-1}(ρ; q), elementwise over broadcast ρ, q, β (MATH.md §1).

  Analytic for ``SpikeAndExp`` and ``Exponential`` (differentiated by autodiff); numerical for the
  others (fixed-budget safeguarded Newton on log F, differentiated implicitly: dζ/dq =
  (R0 − R1)/q(ζ), dζ/dρ = 1/q(ζ), dζ/dβ = −(∂F/∂β)/q(ζ)), which clamp ρ into
  [finfo.tiny, 1 − finfo.epsneg]; ρ ∈ {0, 1} gives finite ζ for every smoothing.
  """
  _check_smoothing(s)
  return s._inverse_cdf(rho, q)


def sample(s: Smoothing, key: Array, logits: Array) -> Array:
  """Reparameterised relaxed sample ζ = F^{-1}(ρ; σ(l)), ρ ~ U(0, 1), shape = ``logits.shape``.

  Gradients flow to the logits (and to β) through the inverse CDF (MATH.md §1).
  """
  _check_smoothing(s)
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
  rho = _open_uniform(key, logits.shape, logits.dtype)
  return inverse_cdf(s, rho, jax.nn.sigmoid(logits))


def sample_ancestral(s: Smoothing, key: Array, logits: Array) -> Array:
  """Ancestral relaxed sample: z ~ Bernoulli(σ(l)) (no gradient), ζ ~ r(·|z) (MATH.md §1).

  The implicit gradient is attached by the surrogate ζ_out = ζ + (sg(dζ/dq)·q − sg(sg(dζ/dq)·q)),
  dζ/dq = (R0(ζ) − R1(ζ))/q(ζ); ζ itself stays differentiable in β through r(·|z)'s own sampler
  (z does not depend on β). Same distribution and expected gradient as ``sample``.
  Shape = ``logits.shape``.
  """
  _check_smoothing(s)
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
  key_z, key_r = jax.random.split(key)
  q = jax.nn.sigmoid(logits)
  q_sg = lax.stop_gradient(q)
  z = jax.random.uniform(key_z, logits.shape, logits.dtype) < q_sg
  if isinstance(s, SpikeAndExp):
    zeta = s._sample_given_z(key_r, z, logits.dtype)
    dzeta_dq = s._dzeta_dq(lax.stop_gradient(zeta), z, q_sg)
  else:
    x = s._sample_given_z(key_r, z, logits.dtype)
    zeta = s._to_zeta(x)
    dzeta_dq = _dzeta_dq_x(s, lax.stop_gradient(x), q_sg)
  surrogate = lax.stop_gradient(dzeta_dq) * q
  # (a − sg(a)) is exactly 0 in value; ζ + a − sg(a) would round ζ near 1.
  return zeta + (surrogate - lax.stop_gradient(surrogate))
