"""The smoothing contract (``Smoothing``), helpers of the families, and the public functions.

math.md §1. A smoothing r(ζ|z) turns a Bernoulli z into a continuous ζ; with q = σ(l) the relaxed
mixture is q(ζ) = (1 − q) r(ζ|0) + q r(ζ|1), with CDF F(ζ) = (1 − q) R0(ζ) + q R1(ζ).

Every family (one module each: ``spike_and_exp``, ``exponential``, ``power_function``,
``gaussian``) is a small frozen ``flax.struct`` dataclass that satisfies the ``Smoothing`` protocol.
The public functions below (``log_r0(s, ζ)``, ``inverse_cdf(s, ρ, q)``, ``sample(key, s, l)``, …)
validate the smoothing and its β and then call the protocol's methods; they are what users and the
rest of the library call.

β in this package is always the *sharpness* of a smoothing (larger β = r(ζ|z) closer to the point
mass at z; the precision 1/σ² for the Gaussian). It is not the inverse temperature of the samplers
(``dvae_jax.samplers``) nor the λ_min of the Gaussian integral (``dvae_jax.priors``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from dvae_jax import numerics

Array = jax.Array
ArrayLike = Any


@runtime_checkable
class Smoothing(Protocol):
  """What a smoothing provides (math.md §1); every method is elementwise over broadcast inputs.

  Attributes:
    beta: the sharpness β > 0 (the only pytree leaf): a float or an array broadcastable against ζ.
    name: a static, per-class fixed string ('spike_exp', 'exp', 'power', 'gauss', 'unexp'). It
      makes the treedefs of the classes differ: in jax 0.10.2 the treedefs of two dataclasses with
      equal static fields compare equal, and jit's cache then occasionally ran one class's compiled
      program on the other (BUILD_NOTES.md, "Smoothings").
    numerical_inverse: whether ``inverse_cdf`` is the numerical solver of ``numerical_inverse``
      (class constant).
  """

  beta: ArrayLike
  name: str
  numerical_inverse: ClassVar[bool]

  def log_r0(self, zeta: ArrayLike) -> Array:
    """log r(ζ|0); −inf outside the support (ValueError if r(·|0) has no density)."""
    ...

  def log_r1(self, zeta: ArrayLike) -> Array:
    """log r(ζ|1); −inf outside the support."""
    ...

  def cdf0(self, zeta: ArrayLike) -> Array:
    """R0(ζ) = P(ζ' ≤ ζ | z = 0)."""
    ...

  def cdf1(self, zeta: ArrayLike) -> Array:
    """R1(ζ) = P(ζ' ≤ ζ | z = 1)."""
    ...

  def log_ratio(self, zeta: ArrayLike) -> Array:
    """b(ζ) = log r(ζ|1) − log r(ζ|0), finite for every ζ."""
    ...

  def inverse_cdf(self, rho: ArrayLike, q: ArrayLike) -> Array:
    """ζ = F⁻¹(ρ; q), differentiable in ρ, q and β."""
    ...

  def sample_given_z(self, key: Array, z: Array, q: Array) -> tuple[Array, Array]:
    """(ζ ~ r(·|z), dζ/dq) for binary ``z`` [...] and the Bernoulli means ``q`` [...].

    ζ is differentiable in β (z does not depend on β); dζ/dq = (R0(ζ) − R1(ζ))/q(ζ) is the implicit
    derivative of the mixture's inverse CDF at that ζ (math.md §1), used by ``sample_ancestral``
    without gradient. Shapes and dtype are those of ``q``.
    """
    ...


# --------------------------------------------------------------------------------------------------
# Helpers of the families.


def float_dtype(*xs) -> jnp.dtype:
  """The floating dtype shared by the arguments (integers promote to the default float)."""
  dtype = jnp.result_type(*xs)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.result_type(dtype, float)
  return dtype


def beta_array(s: Smoothing, like) -> Array:
  """β of ``s`` as an array of the floating dtype shared with ``like``."""
  return jnp.asarray(s.beta, float_dtype(like, s.beta))


def logit_from_log(log_p: Array) -> Array:
  """logit(p) from log p (p ∈ (0, 1)), keeping precision for p near 0 and near 1."""
  return log_p - numerics.log1mexp(log_p)


def check_beta(name: str, beta, *, on_use: bool) -> None:
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


def name_field(name: str):
  """The static, keyword-only, fixed ``name`` field of a smoothing class (see ``Smoothing``)."""
  return struct.field(pytree_node=False, default=name, kw_only=True, repr=False)


def check_construction(s: Smoothing, expected_name: str) -> None:
  """Construction checks of a family: a Python-number β must be > 0, ``name`` is fixed."""
  cls = type(s).__name__
  check_beta(cls, s.beta, on_use=False)
  # The static ``name`` keeps the treedefs of the classes apart (see ``Smoothing``).
  if s.name != expected_name:
    raise ValueError(f"{cls}: name is fixed to {expected_name!r}, got {s.name!r}")


def open_uniform(key: Array, shape, dtype) -> Array:
  """ρ ~ U(0, 1) on the midpoints of jax's uniform grid ((2k + 1)·eps/2): never exactly 0 or 1.

  The relaxed samplers draw ρ this way so that no inverse CDF is ever evaluated at 0 or 1.
  """
  half_step = 0.5 * jnp.finfo(dtype).eps
  return jax.random.uniform(key, shape, dtype) + jnp.asarray(half_step, dtype)


def check_smoothing(s) -> None:
  """TypeError unless ``s`` satisfies ``Smoothing``; ValueError unless a concrete β is > 0."""
  if not isinstance(s, Smoothing):
    raise TypeError(f"expected a smoothing from dvae_jax.smoothing, got {type(s).__name__}")
  check_beta(type(s).__name__, s.beta, on_use=True)


# --------------------------------------------------------------------------------------------------
# Public per-component functions (math.md §1).


def log_r0(s: Smoothing, zeta: ArrayLike) -> Array:
  """log r(ζ|0), elementwise over ζ [...] (broadcast against β); −inf outside the support.

  This is c(ζ) of the DVAE# relaxed prior (math.md §4). Raises ValueError for ``SpikeAndExp``.
  """
  check_smoothing(s)
  return s.log_r0(zeta)


def log_r1(s: Smoothing, zeta: ArrayLike) -> Array:
  """log r(ζ|1), elementwise; = log r(1 − ζ|0) for the overlapping smoothings."""
  check_smoothing(s)
  return s.log_r1(zeta)


def cdf0(s: Smoothing, zeta: ArrayLike) -> Array:
  """R0(ζ) = P(ζ' ≤ ζ | z = 0), elementwise (a unit step at 0 for ``SpikeAndExp``)."""
  check_smoothing(s)
  return s.cdf0(zeta)


def cdf1(s: Smoothing, zeta: ArrayLike) -> Array:
  """R1(ζ) = P(ζ' ≤ ζ | z = 1), elementwise; = 1 − R0(1 − ζ) for the overlapping smoothings."""
  check_smoothing(s)
  return s.cdf1(zeta)


def log_ratio(s: Smoothing, zeta: ArrayLike) -> Array:
  """b(ζ) = log r(ζ|1) − log r(ζ|0) (math.md §1, §4), finite for every ζ.

  ζ is clipped to the support (and for ``PowerFunction`` to [δ, 1 − δ], δ = finfo.epsneg; see
  ``power_function``). Raises ValueError for ``SpikeAndExp``.
  """
  check_smoothing(s)
  return s.log_ratio(zeta)


def mixture_cdf(s: Smoothing, zeta: ArrayLike, q: ArrayLike) -> Array:
  """F(ζ) = (1 − q) R0(ζ) + q R1(ζ), elementwise over broadcast ζ, q, β (math.md §1)."""
  check_smoothing(s)
  return (1.0 - q) * s.cdf0(zeta) + q * s.cdf1(zeta)


def mixture_log_prob(s: Smoothing, zeta: ArrayLike, q: ArrayLike) -> Array:
  """log q(ζ) = log[(1 − q) r(ζ|0) + q r(ζ|1)] by logaddexp, elementwise (math.md §1).

  Prefer ``mixture_log_prob_logits`` when the logits are at hand. Raises ValueError for
  ``SpikeAndExp`` (its mixture has an atom at 0).
  """
  check_smoothing(s)
  q = jnp.asarray(q)
  return jnp.logaddexp(jnp.log1p(-q) + s.log_r0(zeta), jnp.log(q) + s.log_r1(zeta))


def mixture_log_prob_logits(s: Smoothing, zeta: ArrayLike, logits: ArrayLike) -> Array:
  """log q(ζ) from the logits l, with log q = −softplus(−l), log(1 − q) = −softplus(l).

  Elementwise over broadcast ζ, l, β [...]. Raises ValueError for ``SpikeAndExp``.
  """
  check_smoothing(s)
  logits = jnp.asarray(logits)
  return jnp.logaddexp(
    -jax.nn.softplus(logits) + s.log_r0(zeta), -jax.nn.softplus(-logits) + s.log_r1(zeta)
  )


def inverse_cdf(s: Smoothing, rho: ArrayLike, q: ArrayLike) -> Array:
  """ζ = F^{-1}(ρ; q), elementwise over broadcast ρ, q, β (math.md §1).

  Analytic for ``SpikeAndExp`` and ``Exponential`` (differentiated by autodiff); numerical for the
  others (``numerical_inverse``: fixed-budget safeguarded Newton on log F, differentiated
  implicitly: dζ/dq = (R0 − R1)/q(ζ), dζ/dρ = 1/q(ζ), dζ/dβ = −(∂F/∂β)/q(ζ)), which clamp ρ into
  [finfo.tiny, 1 − finfo.epsneg]; ρ ∈ {0, 1} gives finite ζ for every smoothing.
  """
  check_smoothing(s)
  return s.inverse_cdf(rho, q)


def _check_logits(logits) -> Array:
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
  return logits


def sample(key: Array, s: Smoothing, logits: Array) -> Array:
  """Reparameterised relaxed sample ζ = F^{-1}(ρ; σ(l)), ρ ~ U(0, 1), shape = ``logits.shape``.

  Gradients flow to the logits (and to β) through the inverse CDF (math.md §1).
  """
  check_smoothing(s)
  logits = _check_logits(logits)
  rho = open_uniform(key, logits.shape, logits.dtype)
  return inverse_cdf(s, rho, jax.nn.sigmoid(logits))


def sample_ancestral(key: Array, s: Smoothing, logits: Array) -> Array:
  """Ancestral relaxed sample: z ~ Bernoulli(σ(l)) (no gradient), ζ ~ r(·|z) (math.md §1).

  The implicit gradient is attached by the surrogate ζ_out = ζ + (sg(dζ/dq)·q − sg(sg(dζ/dq)·q)),
  dζ/dq = (R0(ζ) − R1(ζ))/q(ζ) (from ``s.sample_given_z``); ζ itself stays differentiable in β
  through r(·|z)'s own sampler (z does not depend on β). Same distribution and expected gradient as
  ``sample``. Shape = ``logits.shape``.
  """
  check_smoothing(s)
  logits = _check_logits(logits)
  key_z, key_r = jax.random.split(key)
  q = jax.nn.sigmoid(logits)
  q_sg = lax.stop_gradient(q)
  z = jax.random.uniform(key_z, logits.shape, logits.dtype) < q_sg
  zeta, dzeta_dq = s.sample_given_z(key_r, z, q_sg)
  surrogate = lax.stop_gradient(dzeta_dq) * q
  # (a − sg(a)) is exactly 0 in value; ζ + a − sg(a) would round ζ near 1.
  return zeta + (surrogate - lax.stop_gradient(surrogate))
