"""The numerically inverted mixture CDF with its implicit derivatives (math.md §1, DVAE# §3.4).

For the symmetric smoothings without a closed-form inverse (power function, Gaussian,
uniform+exp), ζ = F⁻¹(ρ; q) is found by a safeguarded Newton–bisection solver with a fixed
iteration budget, run in an unbounded coordinate x (``Coordinate``: ζ = σ(x) on [0, 1], ζ = x + ½
for the Gaussian; 1 − ζ = T(−x) in both) on log F, so that draws within 1e-30 of 0 or 1 (power
function at β = 40) keep full precision. For ρ > ½ the mirrored problem F(−x; 1 − q) = 1 − ρ is
solved instead, so log F is always the small side.

Derivatives are the implicit ones, attached by ``jax.custom_jvp``:
dζ = (dρ − ∂F/∂q dq − ∂F/∂β dβ) / q(ζ); the solver iterations are never differentiated.

A smoothing inverted here provides the primitives of ``Invertible`` (all in x, elementwise). β is
the smoothing's sharpness (``base``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax
from jax.custom_derivatives import SymbolicZero

from dvae_jax.smoothing import base

Array = jax.Array

#: Default iteration budget (evaluations of F) of the safeguarded Newton solver. Measured on 200k
#: random (ρ, q) with ρ, q ∈ [1e-7, 1 − 1e-7] and β = 0.8–1.2× the papers' values (float32): the
#: result no longer changes after 12 evaluations (worst: uniform+exp at β ≈ 48); 16 is a margin.
DEFAULT_SOLVER_ITERATIONS = 16


def iterations_field():
  """The static ``solver_iterations`` field (default ``DEFAULT_SOLVER_ITERATIONS``) of a class."""
  return struct.field(pytree_node=False, default=DEFAULT_SOLVER_ITERATIONS)


class Coordinate(NamedTuple):
  """The solver coordinate x of a symmetric smoothing: ζ = T(x), 1 − ζ = T(−x).

  Attributes:
    to_zeta: T.
    log_dzeta_dx: log T'(x).
  """

  to_zeta: Callable[[Array], Array]
  log_dzeta_dx: Callable[[Array], Array]


#: ζ = σ(x) for the smoothings supported on [0, 1].
LOGIT = Coordinate(jax.nn.sigmoid, lambda x: jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x))
#: ζ = x + ½ for the Gaussian (support ℝ).
SHIFTED = Coordinate(lambda x: x + 0.5, jnp.zeros_like)


class Invertible(Protocol):
  """The primitives of r(·|0) in the solver coordinate x that the solver needs.

  Attributes:
    beta: the sharpness (pytree leaf).
    solver_iterations: iteration budget (static).
    coordinate: the class's ``Coordinate``.
  """

  beta: base.ArrayLike
  solver_iterations: int
  coordinate: ClassVar[Coordinate]

  def replace(self, **changes) -> Invertible:
    """The same smoothing with fields replaced (``flax.struct``)."""
    ...

  def _log_cdf0_x(self, x: Array) -> Array:
    """log R0(T(x))."""
    ...

  def _log_sf0_x(self, x: Array) -> Array:
    """log(1 − R0(T(x)))."""
    ...

  def _log_pdf0_x(self, x: Array) -> Array:
    """log r(T(x)|0) + log T'(x), the log density of x under z = 0."""
    ...

  def _bracket_x(self, lr: Array, lr1: Array) -> tuple[Array, Array]:
    """An interval of x holding the root of F = ρ for every q, from log ρ, log(1 − ρ) (ρ ≤ ½)."""
    ...

  def _guess_x(self, lr: Array, lr1: Array, lq: Array, l1mq: Array) -> Array:
    """A first guess of the root from log ρ, log(1 − ρ), log q, log(1 − q)."""
    ...


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
def _inverse_cdf(static, rho, q, beta):
  s = static.replace(beta=beta)
  rho, q, beta = jnp.broadcast_arrays(rho, q, beta)
  flip, lr, lr1, lq, l1mq = _flip_to_lower_half(rho, q)
  y = _solve_lower(s, lr, lr1, lq, l1mq, static.solver_iterations)
  return s.coordinate.to_zeta(jnp.where(flip, -y, y))


def _inverse_cdf_jvp(static, primals, tangents):
  rho, q, beta = primals
  rho_dot, q_dot, beta_dot = tangents
  s = static.replace(beta=beta)
  rho_b, q_b, _ = jnp.broadcast_arrays(rho, q, beta)
  flip, lr, lr1, lq, l1mq = _flip_to_lower_half(rho_b, q_b)
  y = lax.stop_gradient(_solve_lower(s, lr, lr1, lq, l1mq, static.solver_iterations))
  x = jnp.where(flip, -y, y)
  zeta = s.coordinate.to_zeta(x)
  # dζ = (dρ − ∂F/∂q dq − ∂F/∂β dβ)/q(ζ), ∂F/∂q = R1 − R0, q(ζ) = f_x / T'(x) (math.md §1).
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
  log_pdf_zeta = _mixture_log_pdf_x(s, y, lq, l1mq) - s.coordinate.log_dzeta_dx(x)
  return zeta, -dfdot * jnp.exp(-log_pdf_zeta)


_inverse_cdf.defjvp(_inverse_cdf_jvp, symbolic_zeros=True)
# Jitted so that eager calls reuse one compiled solver per (smoothing type, shapes); inside an outer
# jit this is inlined.
_inverse_cdf_jit = jax.jit(_inverse_cdf, static_argnums=0)


def inverse_cdf(s: Invertible, rho: base.ArrayLike, q: base.ArrayLike) -> Array:
  """ζ = F⁻¹(ρ; q) of the symmetric mixture by the solver, elementwise over broadcast ρ, q, β.

  ρ is clamped into [finfo.tiny, 1 − finfo.epsneg]; the dtype is the floating dtype shared by ρ, q
  and β. Differentiable in ρ, q and β (implicit derivatives).
  """
  dtype = base.float_dtype(rho, q, s.beta)
  rho = jnp.asarray(rho, dtype)
  q = jnp.asarray(q, dtype)
  beta = jnp.asarray(s.beta, dtype)
  return _inverse_cdf_jit(s.replace(beta=None), rho, q, beta)


def dzeta_dq_x(s: Invertible, x: Array, q: Array) -> Array:
  """The implicit dζ/dq = (R0 − R1)/q(ζ) at ζ = T(x) (math.md §1), from x (no rounding of ζ)."""
  log_q = jnp.log(q)
  log_1mq = jnp.log1p(-q)
  log_pdf_zeta = _mixture_log_pdf_x(s, x, log_q, log_1mq) - s.coordinate.log_dzeta_dx(x)
  return _r0_minus_r1_x(s, x) * jnp.exp(-log_pdf_zeta)
