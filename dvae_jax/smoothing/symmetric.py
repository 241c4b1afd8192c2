"""``Symmetric``: what the overlapping smoothings share, r(ζ|1) = r(1 − ζ|0) (math.md §1).

A subclass (exponential, uniform+exp, power function, Gaussian) writes r(·|0) twice: in ζ
(``log_r0``, ``cdf0``, ``log_ratio``) and in its solver coordinate x (the primitives of
``numerical_inverse.Invertible``, plus ``_sample0_x(key, shape, dtype)``, a draw of x with
T(x) ~ r(·|0)). The mirror symmetry gives the z = 1 component, the solver the inverse CDF, and the
mirrored draw x → −x the ancestral sample given z.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
from jax import lax

# Aliased: ``numerical_inverse`` is also the class constant of the ``Smoothing`` protocol.
from dvae_jax.smoothing import numerical_inverse as solver


class Symmetric:
  """Base class of the symmetric smoothings; subclasses are ``flax.struct`` dataclasses."""

  numerical_inverse: ClassVar[bool] = True
  coordinate: ClassVar[solver.Coordinate]

  def log_r1(self, zeta):
    return self.log_r0(1.0 - zeta)

  def cdf1(self, zeta):
    return 1.0 - self.cdf0(1.0 - zeta)

  def inverse_cdf(self, rho, q):
    return solver.inverse_cdf(self, rho, q)

  def sample_given_z(self, key, z, q):
    x0 = self._sample0_x(key, z.shape, q.dtype)
    x = jnp.where(z, -x0, x0)
    return self.coordinate.to_zeta(x), solver.dzeta_dq_x(self, lax.stop_gradient(x), q)
