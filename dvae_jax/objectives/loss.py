"""The training loss of each method (math.md §4) and the weight decay (math.md §2, §6).

``loss_fn`` is a pure function of the model (a merged NNX module), the prior pytree, the prior
sampler's samples and a PRNG key; the runner differentiates it with respect to the model's
``nnx.Param`` state and the prior. ``weight_decay`` is added by the runner (math.md §6).
DVAE and DVAE++ use the discrete KL (``kl``), DVAE# and GumBolt the importance-weighted bound on
relaxed samples with the relaxed prior (``relaxed_prior``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from dvae_jax import models, numerics
from dvae_jax import priors as priors_lib
from dvae_jax.objectives.kl import discrete_kl
from dvae_jax.objectives.methods import FAMILY_DVAE, FAMILY_DVAE_PP, WEIGHT_DECAY, Method
from dvae_jax.objectives.relaxations import reconstruction_log_prob, sample_posterior
from dvae_jax.objectives.relaxed_prior import relaxed_terms

Array = jax.Array


def iw_loss(log_w: Array, weight_log_w: Array | None = None) -> Array:
  """−mean_x Σ_k sg(softmax_k(log w)) log w_k, ``log_w`` [K, batch] (math.md §4).

  Its gradient equals that of −mean_x log (1/K) Σ_k w_k (the IWAE gradient); with K = 1 it is the
  negative ELBO.

  ``weight_log_w`` [K, batch], if given, is what the weights are computed from: ``log_w`` plus a
  constant per example (the softmax is shift-invariant, so in exact arithmetic nothing changes).
  ``loss_fn`` passes the log weights without the prior's log Z, so that the weights — and with
  them the training trajectory — do not depend on the value of the training log Z, which only
  shifts ``log_w`` and whose rounding would otherwise move every K > 1 run.
  """
  if weight_log_w is None:
    weight_log_w = log_w
  elif weight_log_w.shape != log_w.shape:
    raise ValueError(f"weight_log_w {weight_log_w.shape} must have log_w's shape {log_w.shape}")
  weights = lax.stop_gradient(jax.nn.softmax(weight_log_w, axis=0))
  return -jnp.mean(jnp.sum(weights * log_w, axis=0))


def training_log_partition(prior: priors_lib.Prior, prior_samples) -> Array:
  """The training log Z of math.md §2 from the sampler's samples (``Prior.training_log_partition``:
  value log_z, gradient the samples' mean sufficient statistics; analytic for a prior without a
  sampler).

  Args:
    prior: the prior.
    prior_samples: ``(z [S, n], log_z)``, or a sequence whose first two entries are those (a
      ``samplers.PersistentState``); ignored (may be ``None``) for a prior without a sampler.
  """
  if not prior.needs_sampler:
    return prior.training_log_partition(None, None)
  if prior_samples is None:
    raise ValueError("a prior with a sampler needs prior_samples = (z [S, n], log_z)")
  return prior.training_log_partition(prior_samples[0], prior_samples[1])


def log_z_sensitivity(kappa: float) -> dict[str, float]:
  """d(value)/d(log Z) of each output of ``loss_fn`` that depends on the training log Z's value.

  Every one is linear in it (math.md §2, §4): ``log_z``, ``kl``, ``neg_elbo`` and ``neg_iw_bound``
  move by Δlog Z, ``log_prior`` by −Δlog Z and the loss by κ Δlog Z (in the DVAE# family the
  importance weights are computed without log Z and sum to 1). So a caller holding a better
  estimate of log Z for the same prior re-expresses a step's reported values exactly, without
  recomputing them (``experiments.sampler_monitor``). Keys absent from a method's terms are simply
  not there to shift; ``recon`` and ``log_q`` do not depend on log Z.
  """
  return {
    "loss": float(kappa),
    "log_z": 1.0,
    "kl": 1.0,
    "neg_elbo": 1.0,
    "neg_iw_bound": 1.0,
    "log_prior": -1.0,
  }


def loss_fn(
  key: Array,
  model: models.DVAENet,
  prior: priors_lib.Prior,
  prior_samples,
  x: Array,
  method: Method,
  num_samples: int = 1,
  kappa: Array | float = 1.0,
) -> tuple[Array, dict[str, Array]]:
  """The training loss of ``method`` on a batch (math.md §4).

  DVAE, DVAE++: mean over the K samples and the batch of −log p(x|ζ) + κ·KL. DVAE#, GumBolt: the
  importance-weighted bound with log w_k = κ[log p(ζ_k) − log q(ζ_k|x)] + log p(x|ζ_k) (the relaxed
  ELBO for K = 1); for GumBolt log p and log q are the proxies −E(ζ) − log Z and ``gumbolt_log_q``.

  Args:
    key: one PRNG key for the whole batch.
    model: the network (BatchNorm in training mode normally; batch statistics are updated in place).
    prior: the prior (``priors.base.Prior``).
    prior_samples: ``(z [S, n], log_z)`` (or a sampler state, whose first fields are those) for
      the training log Z; ignored (may be ``None``) for a prior without a sampler.
    x: [batch, pixels] binary data (float).
    method: from ``get_method``.
    num_samples: K.
    kappa: KL warm-up weight κ.

  Returns:
    ``(loss, terms)``: the scalar loss and a dict of scalar diagnostics, batch means at κ = 1 (no
    gradient): ``recon`` (−log p(x|ζ)), ``kl``, ``neg_elbo`` (= recon + kl), ``log_z`` (the value
    used), and for DVAE# and GumBolt also ``log_prior``, ``log_q`` and ``neg_iw_bound`` (−log of the
    mean importance weight).
  """
  if prior.num_units != model.spec.num_latent:
    raise ValueError(
      f"prior has {prior.num_units} units, the model {model.spec.num_latent} latents"
    )
  log_z = training_log_partition(prior, prior_samples)
  terms = {"log_z": log_z}
  if method.family in (FAMILY_DVAE, FAMILY_DVAE_PP):
    post = sample_posterior(key, model, x, method, num_samples)
    log_px = reconstruction_log_prob(model, post.zeta, x)
    kl = discrete_kl(prior, log_z, post, method, model.spec.num_groups)
    loss = jnp.mean(-log_px + kappa * kl)
    terms["kl"] = jnp.mean(kl)
  else:
    if not prior.needs_sampler:
      t = relaxed_terms(key, model, prior, log_z, x, method, num_samples)
      weight_log_w = None  # Normalised analytically: no log Z in log p(ζ).
    else:
      # log p(ζ) + log Z first, then − log Z: the importance weights come from the former, so the
      # trajectory does not depend on the training log Z's value (iw_loss), only on its gradient.
      t = relaxed_terms(key, model, prior, jnp.zeros_like(log_z), x, method, num_samples)
      weight_log_w = kappa * (t.log_prior - t.log_q) + t.log_px
      t = t._replace(log_prior=t.log_prior - log_z)
    log_px = t.log_px
    loss = iw_loss(kappa * (t.log_prior - t.log_q) + t.log_px, weight_log_w)
    terms["log_prior"] = jnp.mean(t.log_prior)
    terms["log_q"] = jnp.mean(t.log_q)
    terms["kl"] = terms["log_q"] - terms["log_prior"]
    terms["neg_iw_bound"] = -jnp.mean(numerics.log_mean_exp(t.log_px + t.log_prior - t.log_q))
  terms["recon"] = -jnp.mean(log_px)
  terms["neg_elbo"] = terms["recon"] + terms["kl"]
  terms = {k: lax.stop_gradient(v) for k, v in terms.items()}
  return loss, terms


# --------------------------------------------------------------------------------------------------
# Weight decay (math.md §2, §6).


def _is_decayed(path) -> bool:
  names = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", "")))) for p in path]
  return "kernel" in names or ("norm" in names and "scale" in names)


def weight_decay(
  params, prior: priors_lib.Prior | None = None, coefficient: float = WEIGHT_DECAY
) -> Array:
  """coefficient · ½ Σ‖w‖² over dense kernels, BatchNorm scales and the prior's couplings.

  Args:
    params: the model's ``nnx.Param`` state (``nnx.state(model, nnx.Param)`` or the ``params`` of
      ``nnx.split(model, nnx.Param, nnx.BatchStat)``); leaves are selected by their path: ``kernel``
      of every Dense layer and ``scale`` of every BatchNorm (``norm``) layer.
    prior: the prior (its ``coupling_sum_of_squares``: an RBM's W, a graph machine's edge
      couplings w, each edge once, nothing for the factorial prior) or ``None`` (nothing).
    coefficient: 1e-4 in math.md §6.

  Returns:
    Scalar penalty to add to the loss.
  """
  leaves = [
    leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0] if _is_decayed(path)
  ]
  if not leaves:
    raise ValueError(
      "weight_decay found no dense kernel in params; pass nnx.state(model, nnx.Param)"
    )
  total = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
  if prior is not None:
    total = total + prior.coupling_sum_of_squares()
  return 0.5 * coefficient * total
