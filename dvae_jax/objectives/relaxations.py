"""The relaxed hierarchical posterior of each method (math.md §1, §4): the shifted Gaussian mixture
of the Gaussian integral, GumBolt's binary concrete, the smoothings' samplers, and the walk over the
groups (``posterior.sample_hierarchy``, the same loop as evaluation's) with one group drawn by
``relaxed_group_sampler``. Shapes: x [batch, pixels]; K posterior samples per example; ζ
[K, batch, num_latent], the concatenation of the groups.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import log_ndtr

from dvae_jax import models, numerics
from dvae_jax import posterior as posterior_lib
from dvae_jax import priors as priors_lib
from dvae_jax import smoothing as smoothing_lib
from dvae_jax.objectives.methods import (
  FAMILY_DVAE,
  FAMILY_DVAE_PP,
  FAMILY_DVAE_SHARP_GI,
  FAMILY_GUMBOLT,
  Method,
)

Array = jax.Array


# --------------------------------------------------------------------------------------------------
# The shifted Gaussian mixture posterior of the Gaussian integral (math.md §4, §1).

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def shifted_gaussian_mixture_log_prob(
  zeta: Array, logits: Array, shift: Array, scale: Array
) -> Array:
  """log[(1 − q) N(ζ; Δμ, s²) + q N(ζ; 1 + Δμ, s²)] elementwise, q = σ(logits) (math.md §4)."""
  u0 = (zeta - shift) / scale
  u1 = u0 - 1.0 / scale
  mix = jnp.logaddexp(
    jax.nn.log_sigmoid(-logits) - 0.5 * u0**2, jax.nn.log_sigmoid(logits) - 0.5 * u1**2
  )
  return mix - jnp.log(scale) - _HALF_LOG_2PI


def _log_ndtr_diff(a: Array, b: Array) -> Array:
  """log(Φ(a) − Φ(b)) for a > b; uses Φ(−b) − Φ(−a) in the upper tail to avoid cancellation."""
  upper = (a + b) > 0
  hi = jnp.where(upper, -b, a)
  lo = jnp.where(upper, -a, b)
  log_hi = log_ndtr(hi)
  return log_hi + numerics.log1mexp(log_ndtr(lo) - log_hi)


def shifted_gaussian_mixture_dzeta_dq(
  zeta: Array, logits: Array, shift: Array, scale: Array
) -> Array:
  """Implicit derivative dζ/dq = (R0(ζ) − R1(ζ)) / q(ζ) of the shifted mixture (math.md §1).

  R0, R1 are the component CDFs Φ((ζ − Δμ)/s), Φ((ζ − 1 − Δμ)/s) and q(ζ) the mixture density;
  computed in log space, so it stays finite wherever the density is positive.
  """
  u0 = (zeta - shift) / scale
  log_diff = _log_ndtr_diff(u0, u0 - 1.0 / scale)
  return jnp.exp(log_diff - shifted_gaussian_mixture_log_prob(zeta, logits, shift, scale))


def sample_shifted_gaussian_mixture(key: Array, logits: Array, shift: Array, scale: Array) -> Array:
  """ζ = z + Δμ + s·ε, z ~ Bernoulli(σ(logits)), ε ~ N(0, 1), with the implicit q-gradient.

  Ancestral form of math.md §1: z carries no gradient; the surrogate
  ζ + sg(dζ/dq)·q − sg(sg(dζ/dq)·q) attaches the implicit gradient with respect to q, while Δμ and s
  get their pathwise gradients (dζ/dΔμ = 1, dζ/ds = ε), which are unbiased for the implicit ones.

  Args:
    key: PRNG key.
    logits: [...] Bernoulli logits l.
    shift: [...] Δμ (broadcastable).
    scale: [...] s > 0 (broadcastable).

  Returns:
    [...] samples, the shape of ``logits``.
  """
  key_z, key_eps = jax.random.split(key)
  q = jax.nn.sigmoid(logits)
  z = jax.random.uniform(key_z, logits.shape, logits.dtype) < lax.stop_gradient(q)
  eps = jax.random.normal(key_eps, logits.shape, logits.dtype)
  zeta = z.astype(logits.dtype) + shift + scale * eps
  dzeta_dq = lax.stop_gradient(shifted_gaussian_mixture_dzeta_dq(zeta, logits, shift, scale))
  return zeta + dzeta_dq * q - lax.stop_gradient(dzeta_dq * q)


# --------------------------------------------------------------------------------------------------
# GumBolt's binary concrete relaxation (Khoshaman & Amin 2018; Maddison et al. 2017).


def sample_binary_concrete(key: Array, logits: Array, temperature: float) -> Array:
  """ζ = σ((l + log u − log(1 − u)) / τ), u ~ U(0, 1): the binary concrete relaxation of
  Bernoulli(σ(l)), reparameterised (pathwise gradient in l). As τ → 0, ζ → z = 1[l + L > 0] ~
  Bernoulli(σ(l)). Shapes: ``logits`` [...] → [...]."""
  noise = jax.random.logistic(key, logits.shape, logits.dtype)
  return jax.nn.sigmoid((logits + noise) / temperature)


def gumbolt_log_q(zeta: Array, logits: Array) -> Array:
  """GumBolt's proxy posterior log q̆(ζ|x) = Σ_i ζ_i log q_i + (1 − ζ_i) log(1 − q_i): the discrete
  Bernoulli log-probability at the relaxed ζ (not the concrete density, which diverges as τ → 0).
  [..., n] → [...]."""
  return jnp.sum(priors_lib.bernoulli_log_prob(zeta, logits), -1)


# --------------------------------------------------------------------------------------------------
# The relaxed hierarchical posterior (math.md §4).


def _sample_relaxed_group(
  key: Array, method: Method, enc: models.GroupEncoding, scale: Array | None
) -> posterior_lib.GroupSample:
  """One group's relaxed (ζ, logits, log q, z) from its encoder output ``enc``."""
  logits = enc.logits
  if method.family == FAMILY_GUMBOLT:
    zeta = sample_binary_concrete(key, logits, method.beta)
    return posterior_lib.GroupSample(zeta, logits, gumbolt_log_q(zeta, logits), None)
  if method.family == FAMILY_DVAE_SHARP_GI:
    shift = models.gaussian_shift(enc.shift_logits)
    zeta = sample_shifted_gaussian_mixture(key, logits, shift, scale)
    log_q = jnp.sum(shifted_gaussian_mixture_log_prob(zeta, logits, shift, scale), -1)
    return posterior_lib.GroupSample(zeta, logits, log_q, None)
  s = method.smoothing
  if method.family == FAMILY_DVAE:
    # Spike-and-exp: z = 1 exactly when ρ > 1 − q, the branch of the inverse CDF (math.md §1).
    rho = jax.random.uniform(key, logits.shape, logits.dtype)
    q = jax.nn.sigmoid(logits)
    zeta = smoothing_lib.inverse_cdf(s, rho, q)
    z = (rho > 1.0 - lax.stop_gradient(q)).astype(logits.dtype)
    return posterior_lib.GroupSample(zeta, logits, None, z)
  if method.relaxed_sampler == "ancestral":
    zeta = smoothing_lib.sample_ancestral(key, s, logits)
  else:
    zeta = smoothing_lib.sample(key, s, logits)
  if method.family == FAMILY_DVAE_PP:
    return posterior_lib.GroupSample(zeta, logits, None, None)
  log_q = jnp.sum(smoothing_lib.mixture_log_prob_logits(s, zeta, logits), -1)
  return posterior_lib.GroupSample(zeta, logits, log_q, None)


def relaxed_group_sampler(method: Method, model: models.DVAENet) -> posterior_lib.SampleGroup:
  """The training ``sample_group`` of ``method`` for ``posterior.sample_hierarchy`` (math.md §4).

  Relaxed samples of the method's smoothing (``method.relaxed_sampler``: ancestral or numerical
  inverse CDF, both with the implicit gradient); the Gaussian integral always uses its ancestral
  shifted-mixture sampler with the model's per-unit scales. ``log_q`` is given for the DVAE#
  families, ``z`` for spike-and-exp.
  """
  gaussian_integral = method.family == FAMILY_DVAE_SHARP_GI
  if gaussian_integral and not model.gaussian_integral:
    raise ValueError(f"method {method.name!r} needs a DVAENet built with gaussian_integral=True")
  scale_all = model.gaussian_scale() if gaussian_integral else None
  units = model.spec.units_per_group

  def sample_group(key, group, enc):
    scale = None if scale_all is None else scale_all[group * units : (group + 1) * units]
    return _sample_relaxed_group(key, method, enc, scale)

  return sample_group


def sample_posterior(
  key: Array, model: models.DVAENet, x: Array, method: Method, num_samples: int = 1
) -> posterior_lib.PosteriorSample:
  """K relaxed samples of the hierarchical posterior (math.md §4): ``posterior.sample_hierarchy``
  with ``relaxed_group_sampler(method, model)``.

  Args:
    key: one PRNG key for the whole batch.
    model: the network (train or eval mode as set on the module).
    x: [batch, pixels] data.
    method: from ``get_method``.
    num_samples: K.

  Returns:
    ``posterior.PosteriorSample`` with leading dimensions [K, batch]: relaxed ζ, logits, log q(ζ|x)
    (DVAE# families; else ``None``) and the binary z behind ζ (spike-and-exp; else ``None``).
  """
  sample_group = relaxed_group_sampler(method, model)
  return posterior_lib.sample_hierarchy(key, model, x, num_samples, sample_group)


def reconstruction_log_prob(model: models.DVAENet, zeta: Array, x: Array) -> Array:
  """log p(x|ζ) summed over pixels: ``zeta`` [K, batch, n], x [batch, pixels] → [K, batch]."""
  k, batch, n = zeta.shape
  logits = model.decode(zeta.reshape(k * batch, n)).reshape(k, batch, -1)
  return jnp.sum(priors_lib.bernoulli_log_prob(x, logits), axis=-1)
