"""Training objectives of DVAE, DVAE++, DVAE# and GumBolt (math.md §4), one entry per method.

Modules, by concern: ``methods`` (the registry: ``get_method``, the families, the method table),
``relaxations`` (each method's relaxed posterior and its sampler), ``kl`` (the discrete KL of DVAE
and DVAE++), ``relaxed_prior`` (the relaxed prior of DVAE# and GumBolt), ``loss`` (``loss_fn``, the
importance-weighted loss, the training log Z, the weight decay). The priors enter only through
their contract (``priors.base.Prior``); what is specific to a method lives here.

Shapes: x [batch, pixels]; K = num_samples posterior samples per example; the latent vector
``zeta`` [K, batch, num_latent] is the concatenation of the groups.
"""

from dvae_jax.objectives.kl import across_estimate, discrete_kl, rolfe_cross_term
from dvae_jax.objectives.loss import (
  iw_loss,
  log_z_sensitivity,
  loss_fn,
  training_log_partition,
  weight_decay,
)
from dvae_jax.objectives.methods import (
  FAMILY_DVAE,
  FAMILY_DVAE_PP,
  FAMILY_DVAE_SHARP,
  FAMILY_DVAE_SHARP_GI,
  FAMILY_GUMBOLT,
  METHODS,
  RELAXED_SAMPLERS,
  WEIGHT_DECAY,
  Method,
  get_method,
)
from dvae_jax.objectives.relaxations import (
  gumbolt_log_q,
  reconstruction_log_prob,
  relaxed_group_sampler,
  sample_binary_concrete,
  sample_posterior,
  sample_shifted_gaussian_mixture,
  shifted_gaussian_mixture_dzeta_dq,
  shifted_gaussian_mixture_log_prob,
)
from dvae_jax.objectives.relaxed_prior import RelaxedTerms, relaxed_log_prior, relaxed_terms

__all__ = [
  "FAMILY_DVAE",
  "FAMILY_DVAE_PP",
  "FAMILY_DVAE_SHARP",
  "FAMILY_DVAE_SHARP_GI",
  "FAMILY_GUMBOLT",
  "METHODS",
  "RELAXED_SAMPLERS",
  "WEIGHT_DECAY",
  "Method",
  "RelaxedTerms",
  "across_estimate",
  "discrete_kl",
  "get_method",
  "gumbolt_log_q",
  "iw_loss",
  "log_z_sensitivity",
  "loss_fn",
  "reconstruction_log_prob",
  "relaxed_group_sampler",
  "relaxed_log_prior",
  "relaxed_terms",
  "rolfe_cross_term",
  "sample_binary_concrete",
  "sample_posterior",
  "sample_shifted_gaussian_mixture",
  "shifted_gaussian_mixture_dzeta_dq",
  "shifted_gaussian_mixture_log_prob",
  "training_log_partition",
  "weight_decay",
]
