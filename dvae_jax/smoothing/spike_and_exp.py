"""Spike-and-exponential smoothing (DVAE, Rolfe 2017; math.md §1)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct
from jax import lax

from dvae_jax import numerics
from dvae_jax.smoothing import base


@struct.dataclass
class SpikeAndExp:
  """Spike-and-exponential smoothing (DVAE, math.md §1).

  r(ζ|0) = δ(ζ) (a point mass: no density, so ``log_r0``, ``log_ratio`` and ``mixture_log_prob``
  raise), r(ζ|1) = β e^{βζ}/(e^β − 1) on [0, 1]. The inverse CDF is analytic and ζ = 0 exactly when
  ρ ≤ 1 − q.

  Attributes:
    beta: sharpness β > 0 of r(ζ|1) (not an inverse temperature), a float or an array
      broadcastable against ζ.
    name: "spike_exp" (static, fixed; makes the treedef differ from the other classes').
  """

  beta: base.ArrayLike
  name: str = base.name_field("spike_exp")

  numerical_inverse = False

  def __post_init__(self):
    base.check_construction(self, "spike_exp")

  def _no_density(self, what):
    raise ValueError(
      f"SpikeAndExp: {what} is undefined because r(ζ|0) is a point mass at ζ = 0 (no density); "
      "use an overlapping smoothing (Exponential, PowerFunction, Gaussian, UniformExponential)"
    )

  def log_r0(self, zeta):
    self._no_density("log r(ζ|0)")

  def log_ratio(self, zeta):
    self._no_density("the log-ratio b(ζ)")

  def log_r1(self, zeta):
    beta = base.beta_array(self, zeta)
    zeta = jnp.asarray(zeta, beta.dtype)
    inside = (zeta >= 0) & (zeta <= 1)
    value = jnp.log(beta) - beta * (1.0 - jnp.clip(zeta, 0.0, 1.0)) - numerics.log1mexp(-beta)
    return jnp.where(inside, value, -jnp.inf)

  def cdf0(self, zeta):
    beta = base.beta_array(self, zeta)
    return jnp.where(jnp.asarray(zeta, beta.dtype) >= 0, 1.0, 0.0).astype(beta.dtype)

  def cdf1(self, zeta):
    beta = base.beta_array(self, zeta)
    zeta = jnp.clip(jnp.asarray(zeta, beta.dtype), 0.0, 1.0)
    # (e^{βζ} − 1)/(e^β − 1) = e^{−β(1−ζ)} (1 − e^{−βζ})/(1 − e^{−β}), free of overflow.
    value = jnp.exp(-beta * (1.0 - zeta)) * jnp.expm1(-beta * zeta) / jnp.expm1(-beta)
    # Exactly 1 at the end of the support (x/x need not round to 1 under jit).
    return jnp.where(zeta >= 1.0, 1.0, jnp.clip(value, 0.0, 1.0))

  def inverse_cdf(self, rho, q):
    dtype = base.float_dtype(rho, q, self.beta)
    beta = jnp.asarray(self.beta, dtype)
    rho = jnp.asarray(rho, dtype)
    q = jnp.asarray(q, dtype)
    spike = rho <= 1.0 - q
    # u = (ρ − 1 + q)/q ∈ (0, 1] off the spike; ζ = 1 + log(1 − (1 − u)(1 − e^{−β}))/β.
    q_safe = jnp.where(spike, 1.0, q)
    u = jnp.where(spike, 1.0, (rho - 1.0 + q) / q_safe)
    zeta = 1.0 + jnp.log1p((1.0 - u) * jnp.expm1(-beta)) / beta
    return jnp.where(spike, 0.0, jnp.clip(zeta, 0.0, 1.0))

  def sample_given_z(self, key, z, q):
    dtype = q.dtype
    beta = base.beta_array(self, jnp.zeros((), dtype))
    rho = base.open_uniform(key, z.shape, dtype)
    zeta1 = 1.0 + jnp.log1p((1.0 - rho) * jnp.expm1(-beta)) / beta
    zeta = jnp.where(z, jnp.clip(zeta1, 0.0, 1.0), 0.0)
    return zeta, self._dzeta_dq(lax.stop_gradient(zeta), z, q)

  def _dzeta_dq(self, zeta, z, q):
    # Off the spike, dζ/dq = (R0 − R1)/(q r1(ζ)) with R0 = 1; on the spike q(ζ) = ∞, so 0.
    beta = base.beta_array(self, zeta)
    zeta_safe = jnp.where(z, zeta, 0.5)
    # 1 − R1(ζ) = (e^β − e^{βζ})/(e^β − 1) = (1 − e^{−β(1−ζ)})/(1 − e^{−β}).
    one_m_r1 = -jnp.expm1(-beta * (1.0 - zeta_safe)) / (-jnp.expm1(-beta))
    value = one_m_r1 * jnp.exp(-self.log_r1(zeta_safe)) / q
    return jnp.where(z, value, 0.0)
