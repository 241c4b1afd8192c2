"""Gaussian smoothing (DVAE#; math.md §1): r(ζ|0) = N(ζ; 0, 1/β), r(ζ|1) = N(ζ; 1, 1/β) on ℝ.

Inverse CDF by the numerical solver (``numerical_inverse``) in x = ζ − ½. The log densities are
finite on all of ℝ, so nothing is clipped.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct
from jax.scipy import special as jsp

from dvae_jax.smoothing import base
from dvae_jax.smoothing import numerical_inverse as solver
from dvae_jax.smoothing.symmetric import Symmetric


@struct.dataclass
class Gaussian(Symmetric):
  """Gaussian smoothing r(ζ|0) = N(ζ; 0, 1/β) on ℝ, r(ζ|1) = N(ζ; 1, 1/β) (DVAE#, math.md §1).

  b(ζ) = β(ζ − ½). The solver coordinate is x = ζ − ½.

  Attributes:
    beta: sharpness = precision β = 1/σ² > 0 (not an inverse temperature), a float or an array
      broadcastable against ζ.
    solver_iterations: iteration budget of the numerical inverse CDF (static).
    name: "gauss" (static, fixed; makes the treedef differ from the other classes').
  """

  beta: base.ArrayLike
  solver_iterations: int = solver.iterations_field()
  name: str = base.name_field("gauss")

  coordinate = solver.SHIFTED

  def __post_init__(self):
    base.check_construction(self, "gauss")

  def log_r0(self, zeta):
    beta = base.beta_array(self, zeta)
    zeta = jnp.asarray(zeta, beta.dtype)
    return 0.5 * (jnp.log(beta) - math.log(2 * math.pi)) - 0.5 * beta * zeta * zeta

  def cdf0(self, zeta):
    beta = base.beta_array(self, zeta)
    return jsp.ndtr(jnp.asarray(zeta, beta.dtype) * jnp.sqrt(beta))

  def cdf1(self, zeta):
    # Written out (not the mirror 1 − R0(1 − ζ)): the lower tail keeps its precision.
    beta = base.beta_array(self, zeta)
    return jsp.ndtr((jnp.asarray(zeta, beta.dtype) - 1.0) * jnp.sqrt(beta))

  def log_ratio(self, zeta):
    beta = base.beta_array(self, zeta)
    return beta * (jnp.asarray(zeta, beta.dtype) - 0.5)

  def _log_cdf0_x(self, x):
    return jsp.log_ndtr((x + 0.5) * jnp.sqrt(base.beta_array(self, x)))

  def _log_sf0_x(self, x):
    return jsp.log_ndtr(-(x + 0.5) * jnp.sqrt(base.beta_array(self, x)))

  def _log_pdf0_x(self, x):
    return self.log_r0(x + 0.5)

  def _bracket_x(self, lr, lr1):
    # R1 ≤ F ≤ R0, so Φ^{-1}(ρ)/√β ≤ ζ* ≤ 1 + Φ^{-1}(ρ)/√β.
    beta = base.beta_array(self, lr)
    # exp(lr) ≥ tiny: XLA on CPU flushes subnormals to zero, and ndtri(0) = −inf.
    z = jsp.ndtri(jnp.maximum(jnp.exp(lr), jnp.finfo(lr.dtype).tiny)) / jnp.sqrt(beta)
    return z - 0.5, z + 0.5

  def _guess_x(self, lr, lr1, lq, l1mq):
    beta = base.beta_array(self, lr)
    finfo = jnp.finfo(lr.dtype)
    first = lr <= l1mq
    p_first = jnp.clip(jnp.exp(lr - l1mq), finfo.tiny, 1.0 - finfo.epsneg)
    # R1(ζ) = (ρ − 1 + q)/q = 1 − (1 − ρ)/q.
    p_second = jnp.clip(-jnp.expm1(lr1 - lq), finfo.tiny, 1.0 - finfo.epsneg)
    z_first = jsp.ndtri(p_first) / jnp.sqrt(beta)
    z_second = 1.0 + jsp.ndtri(p_second) / jnp.sqrt(beta)
    return jnp.where(first, z_first, z_second) - 0.5

  def _sample0_x(self, key, shape, dtype):
    beta = base.beta_array(self, jnp.zeros((), dtype))
    return jax.random.normal(key, shape, dtype) / jnp.sqrt(beta) - 0.5
