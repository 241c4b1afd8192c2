"""The relaxed prior of DVAE# and GumBolt and the per-sample terms of their bound (math.md §4)."""

from __future__ import annotations

from typing import NamedTuple

import jax

from dvae_jax import models
from dvae_jax import priors as priors_lib
from dvae_jax.objectives.methods import (
  _RELAXED_FAMILIES,
  FAMILY_DVAE_SHARP,
  FAMILY_DVAE_SHARP_GI,
  FAMILY_GUMBOLT,
  Method,
)
from dvae_jax.objectives.relaxations import reconstruction_log_prob, sample_posterior

Array = jax.Array


def relaxed_log_prior(prior: priors_lib.Prior, zeta: Array, log_z: Array, method: Method) -> Array:
  """log p(ζ) of the relaxed prior for ``method`` (math.md §4), [..., n] → [...].

  DVAE#: the marginal of the augmented machine of the method's overlapping smoothing
  (``Prior.relaxed_log_prob``, mean-field log Z_ζ) or of the Gaussian integral
  (``Prior.gaussian_integral_log_prob``). GumBolt: the proxy −E(ζ) − log Z with the discrete log Z
  (``Prior.log_prob`` at relaxed ζ: not normalised over continuous ζ; it tends to the discrete
  log p(z) as τ → 0). A prior without a sampler ignores ``log_z`` (it is normalised).
  """
  if method.family == FAMILY_GUMBOLT:
    return prior.log_prob(zeta, log_z)
  if method.family == FAMILY_DVAE_SHARP_GI:
    return prior.gaussian_integral_log_prob(zeta, method.beta, log_z)
  if method.family != FAMILY_DVAE_SHARP:
    raise ValueError(f"method {method.name!r} has no relaxed prior (it uses the discrete KL)")
  return prior.relaxed_log_prob(
    method.smoothing, zeta, log_z, num_iterations=method.mean_field_iterations, exact=False
  )


class RelaxedTerms(NamedTuple):
  """Per-sample terms of the DVAE# objective, each [K, batch] (math.md §4)."""

  log_px: Array
  log_prior: Array
  log_q: Array


def relaxed_terms(
  key: Array,
  model: models.DVAENet,
  prior: priors_lib.Prior,
  log_z: Array,
  x: Array,
  method: Method,
  num_samples: int = 1,
) -> RelaxedTerms:
  """log p(x|ζ_k), log p(ζ_k), log q(ζ_k|x) for K relaxed posterior samples (DVAE#, GumBolt; §4).

  ``log_z`` is the scalar log Z of the Boltzmann prior (for gradients, the training surrogate of
  ``training_log_partition``); the log weights are ``kappa * (log_prior - log_q) + log_px``.
  """
  if method.family not in _RELAXED_FAMILIES:
    raise ValueError(f"method {method.name!r} has no relaxed prior (it uses the discrete KL)")
  post = sample_posterior(key, model, x, method, num_samples)
  log_px = reconstruction_log_prob(model, post.zeta, x)
  return RelaxedTerms(log_px, relaxed_log_prior(prior, post.zeta, log_z, method), post.log_q)
