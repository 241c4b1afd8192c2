"""Power-function smoothing (DVAE#; math.md §1).

r(ζ|0) = ζ^{1/β − 1}/β on (0, 1], R0(ζ) = ζ^{1/β}; r(ζ|1) = r(1 − ζ|0). Inverse CDF by the
numerical solver (``numerical_inverse``) in the logit coordinate x = logit ζ.

Numerics (math.md §1 Numerics): the log densities and b(ζ) evaluate ζ clipped to [δ, 1 − δ] with
δ = ``finfo(dtype).epsneg`` (2^-24 ≈ 5.96e-8 in float32: the gap between 1 and the largest float
below 1, so every ζ ≥ 1 − δ/2 is stored as exactly 1). The clip is symmetric, so
r(ζ|1) = r(1 − ζ|0) and b(1 − ζ) = −b(ζ) hold exactly after clipping and draws of z = 0 and z = 1
are treated alike. It caps |b(ζ)| = (1 − 1/β)|logit ζ| at (1 − 1/β) log((1 − δ)/δ): 16.22 for
β = 40 and 16.08 for β = 30 in float32, 35.8 for β = 40 in float64. (The reference adds 1e-7
inside the pdf instead, which caps |b| at about 15.7 for β = 40.) Effect: on [0, δ) and (1 − δ, 1]
the log densities are constant (those at δ and 1 − δ), although these intervals hold probability
δ^{1/β} each under r(·|0) and r(·|1) (0.66 for β = 40): the objectives see b = ∓16.2 for those
draws instead of the exact values (−29 for ζ = 1e-13, say), which float32 cannot represent on the
side of 1 anyway. The CDFs are not clipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from dvae_jax import numerics
from dvae_jax.smoothing import base
from dvae_jax.smoothing import numerical_inverse as solver
from dvae_jax.smoothing.symmetric import Symmetric

# Below this u = α softplus(−x), log(1 − e^{−u}) is evaluated from log u (u may underflow to 0).
_SMALL_U = 1e-4
# Below this y, log(softplus(y)) = y to float32 precision (the next term is e^y/2 < 1.6e-7).
_LOG_SOFTPLUS_LINEAR = -15.0


def _log_softplus(y):
  """log(log(1 + e^y)), finite when softplus(y) underflows."""
  linear = y < _LOG_SOFTPLUS_LINEAR
  y_safe = jnp.where(linear, 0.0, y)
  return jnp.where(linear, y, jnp.log(jax.nn.softplus(y_safe)))


@struct.dataclass
class PowerFunction(Symmetric):
  """Power-function smoothing r(ζ|0) = ζ^{1/β − 1}/β on (0, 1], R0(ζ) = ζ^{1/β} (DVAE#, math.md §1).

  With α = 1/β: b(ζ) = (1 − α) logit ζ, evaluated at ζ clipped to [δ, 1 − δ], δ = finfo.epsneg (see
  the module docstring: |b| ≤ 16.22 at β = 40 in float32).

  Attributes:
    beta: sharpness β > 0 (the exponent of ζ = ρ^β; not an inverse temperature), a float or an
      array broadcastable against ζ.
    solver_iterations: iteration budget of the numerical inverse CDF (static).
    name: "power" (static, fixed; makes the treedef differ from the other classes').
  """

  beta: base.ArrayLike
  solver_iterations: int = solver.iterations_field()
  name: str = base.name_field("power")

  coordinate = solver.LOGIT

  def __post_init__(self):
    base.check_construction(self, "power")

  @staticmethod
  def _clip(zeta):
    delta = jnp.finfo(zeta.dtype).epsneg
    return jnp.clip(zeta, delta, 1.0 - delta)

  def log_r0(self, zeta):
    beta = base.beta_array(self, zeta)
    zeta = jnp.asarray(zeta, beta.dtype)
    inside = (zeta >= 0) & (zeta <= 1)
    value = -jnp.log(beta) + (1.0 / beta - 1.0) * jnp.log(self._clip(zeta))
    return jnp.where(inside, value, -jnp.inf)

  def cdf0(self, zeta):
    beta = base.beta_array(self, zeta)
    zeta = jnp.clip(jnp.asarray(zeta, beta.dtype), 0.0, 1.0)
    positive = zeta > 0
    zeta_safe = jnp.where(positive, zeta, 1.0)
    return jnp.where(positive, jnp.exp(jnp.log(zeta_safe) / beta), 0.0)

  def cdf1(self, zeta):
    # Written out (not the mirror 1 − R0(1 − ζ)): 1 − ζ would round ζ near 0.
    beta = base.beta_array(self, zeta)
    zeta = jnp.clip(jnp.asarray(zeta, beta.dtype), 0.0, 1.0)
    below_one = zeta < 1
    zeta_safe = jnp.where(below_one, zeta, 0.0)
    return jnp.where(below_one, -jnp.expm1(jnp.log1p(-zeta_safe) / beta), 1.0)

  def log_ratio(self, zeta):
    beta = base.beta_array(self, zeta)
    zeta = self._clip(jnp.asarray(zeta, beta.dtype))
    return (1.0 - 1.0 / beta) * (jnp.log(zeta) - jnp.log1p(-zeta))

  def _log_cdf0_x(self, x):
    return jax.nn.log_sigmoid(x) / base.beta_array(self, x)

  def _log_sf0_x(self, x):
    # log(1 − e^{−u}), u = α softplus(−x) = −α log σ(x); from log u where u underflows.
    beta = base.beta_array(self, x)
    u = jax.nn.softplus(-x) / beta
    small = u < _SMALL_U
    u_big = jnp.where(small, 1.0, u)
    log_small = _log_softplus(-x) - jnp.log(beta) - 0.5 * u
    return jnp.where(small, log_small, numerics.log1mexp(-u_big))

  def _log_pdf0_x(self, x):
    beta = base.beta_array(self, x)
    return -jnp.log(beta) + jax.nn.log_sigmoid(x) / beta + jax.nn.log_sigmoid(-x)

  def _bracket_x(self, lr, lr1):
    # R1 ≤ F ≤ R0 (ζ^α + (1 − ζ)^α ≥ 1), so R0^{-1}(ρ) ≤ ζ* ≤ R1^{-1}(ρ): log ζ = β log ρ and
    # log(1 − ζ) = β log(1 − ρ).
    beta = base.beta_array(self, lr)
    return base.logit_from_log(beta * lr), -base.logit_from_log(beta * lr1)

  def _guess_x(self, lr, lr1, lq, l1mq):
    # The component that holds ρ: R0(ζ) = ρ/(1 − q) if ρ ≤ 1 − q, else R1(ζ) = (ρ − 1 + q)/q.
    beta = base.beta_array(self, lr)
    first = lr <= l1mq
    log_zeta = beta * jnp.where(first, lr - l1mq, 0.0)
    log_1mzeta = beta * jnp.where(first, 0.0, lr1 - lq)
    tiny = jnp.finfo(lr.dtype).tiny
    x_first = base.logit_from_log(jnp.minimum(log_zeta, -tiny))
    x_second = -base.logit_from_log(jnp.minimum(log_1mzeta, -tiny))
    return jnp.where(first, x_first, x_second)

  def _sample0_x(self, key, shape, dtype):
    beta = base.beta_array(self, jnp.zeros((), dtype))
    rho = base.open_uniform(key, shape, dtype)
    return base.logit_from_log(beta * jnp.log(rho))
