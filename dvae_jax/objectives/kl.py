"""The discrete KL of DVAE and DVAE++ (math.md §4): KL(q(z|x) ‖ p(z)) = CE − H from one posterior
sample per row. The prior gives the method-independent pieces (``Prior.expected_neg_energy``: its
linear term, the couplings inside a group and, through a function passed in, those across groups);
this module gives the methods' estimates of E_q[z_i z_j] across groups: DVAE++'s ν and DVAE's Rolfe
(2017) surrogate gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from dvae_jax import posterior as posterior_lib
from dvae_jax import priors as priors_lib
from dvae_jax import smoothing as smoothing_lib
from dvae_jax.objectives.methods import FAMILY_DVAE, Method

Array = jax.Array

def rolfe_cross_term(w: Array, z1: Array, logits1: Array, mu2: Array) -> Array:
  """E_q[z1ᵀ W z2] of a hierarchical spike-and-exp posterior: Rolfe (2017) eqs. 11–12 (math.md §4).

  For a coupling block w [n1, n2] whose rows are units of groups no later than its columns' (zero
  entries are fine), q_j (a column) depends on ζ_i (a row) but not the other way round. With ρ_i
  uniform, z_i = 1[ρ_i > 1 − q_i] and ζ_i continuous in ρ_i (ζ_i = 0 at the switch),
    ∂/∂φ E[z_i z_j] = E[ (1 − z_i)/(1 − q_i) · q_j · ∂q_i/∂φ + z_i · ∂q_j/∂φ ],
  the first term being the boundary term of the moving threshold (q_j at ζ_i = 0, i.e. on the
  z_i = 0 samples) and the second the pathwise term. The returned value is the unbiased
  single-sample estimate Σ_ij z_i W_ij q_j; its gradient is that of the surrogate
    Σ_i q_i · sg((1 − z_i)/(1 − q_i) Σ_j W_ij q_j) + Σ_ij sg(z_i) W_ij q_j
  (W gets the gradient z_i q_j from the second term only).

  Args:
    w: [n1, n2] couplings from the earlier units (rows) to the later ones (columns).
    z1: [..., n1] binary states of the rows' units (no gradient).
    logits1: [..., n1] their posterior logits.
    mu2: [..., n2] posterior means of the columns' units given the earlier relaxed samples.

  Returns:
    [...] estimates of E[z1ᵀ W z2].
  """
  z1 = lax.stop_gradient(z1)
  q1 = jax.nn.sigmoid(logits1)
  # (1 − z)/(1 − q) = (1 − z)(1 + e^l); the exponent is clamped where z = 1 (where it is unused)
  # so that no inf·0 appears; a z = 0 draw with l > 80 has probability < e^-80.
  inv_one_minus_q = 1.0 + jnp.exp(jnp.where(z1 > 0, 0.0, jnp.minimum(logits1, 80.0)))
  boundary = lax.stop_gradient((1.0 - z1) * inv_one_minus_q * (mu2 @ w.T))
  surrogate = jnp.sum(q1 * boundary, -1) + jnp.sum((z1 @ w) * mu2, -1)
  value = jnp.sum((z1 @ w) * mu2, -1)
  return lax.stop_gradient(value) + surrogate - lax.stop_gradient(surrogate)


def across_estimate(
  post: posterior_lib.PosteriorSample, mu: Array, method: Method, num_groups: int
):
  """The method's ``across(w, rows, cols)`` for ``Prior.expected_neg_energy``: an estimate of
  Σ_ij w_ij E_q[z_i z_j] for the coupling block w from earlier units ``rows`` to later ``cols``;
  ``mu`` = σ(post.logits) [..., n], the array the caller's linear term uses (one σ, so that the
  gradient sums its paths' terms before the σ', as it always has: bit-identical results).

  - One group: given x the posterior is factorial, E[z_i z_j] = μ_i μ_j.
  - DVAE (spike-and-exp), several groups: z_i μ_j with Rolfe's boundary + pathwise gradient
    surrogate (``rolfe_cross_term``).
  - DVAE++, several groups: q(z_j | ζ_<g(j)) = μ_j, and given ζ_<g(j) the unit z_i depends on the
    later relaxed samples only through its own ζ_i, so E[z_i | ζ_<g(j)] = σ(l_i + b(ζ_i)) = ν_i
    (the overlapping smoothing's posterior of z_i) and E[z_i z_j] = E[ν_i μ_j].
  """
  logits = post.logits
  if num_groups == 1:
    # The rows' means as their own σ (not the columns' array): the gradient then sums the two
    # paths' terms in the order it always has, so results stay bit-identical.
    return lambda w, rows, cols: jnp.sum(
      (jax.nn.sigmoid(logits[..., rows]) @ w) * mu[..., cols], -1
    )
  if method.family == FAMILY_DVAE:
    return lambda w, rows, cols: rolfe_cross_term(
      w, post.z[..., rows], logits[..., rows], mu[..., cols]
    )

  def dvae_pp(w, rows, cols):
    nu = jax.nn.sigmoid(logits + smoothing_lib.log_ratio(method.smoothing, post.zeta))
    return jnp.sum((nu[..., rows] @ w) * mu[..., cols], -1)

  return dvae_pp


def discrete_kl(
  prior: priors_lib.Prior,
  log_z: Array | None,
  post: posterior_lib.PosteriorSample,
  method: Method,
  num_groups: int,
) -> Array:
  """KL(q(z|x) ‖ p(z)) for DVAE and DVAE++ from one posterior sample per row (math.md §4).

  KL = CE − H, H = Σ_i H_Bernoulli(q_i) over all groups (conditionals given the earlier relaxed
  samples), CE = −E_q[−E(z)] + log Z with E_q[−E(z)] estimated by the prior's
  ``expected_neg_energy`` (its linear term b·μ and μ_i μ_j inside a group) and the method's
  ``across_estimate`` for couplings from an earlier group to a later one. An RBM takes every
  coupling to go from z1 (earlier) to z2 (later); a factorial prior has no couplings, and its
  log Z is analytic (``log_z`` is ignored: a prior without a sampler gives its own).

  Returns:
    [K, batch] KL estimates (their gradient is the KL gradient).
  """
  logits = post.logits
  entropy = jnp.sum(priors_lib.bernoulli_entropy(logits), -1)
  mu = jax.nn.sigmoid(logits)
  across = across_estimate(post, mu, method, num_groups)
  neg_energy = prior.expected_neg_energy(mu, num_groups, across)
  if not prior.needs_sampler:
    log_z = prior.training_log_partition(None, None)
  return -neg_energy + log_z - entropy
