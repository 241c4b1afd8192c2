"""Tests of dvae_jax/evaluation.py: the discrete model's log p(x), ELBO and IW bound (§4, §6).

A tiny model (2 groups × 4 units, 10 pixels) is evaluated against an independent float64 NumPy
implementation that enumerates all 2^8 latent states.
"""

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import logsumexp

from dvae_jax import evaluation, models, priors
from dvae_jax.graphs import machine
from dvae_jax.priors import rbm

SPEC = models.StructSpec(
  "tiny", num_groups=2, units_per_group=4, encoder_hidden=(6,), decoder_hidden=(5,), num_pixels=10
)


def _tiny_model(seed, gaussian_integral=False):
  rng = np.random.default_rng(seed)
  mean_x = rng.uniform(0.2, 0.8, SPEC.num_pixels).astype(np.float32)
  net = models.DVAENet(SPEC, mean_x, gaussian_integral=gaussian_integral, rngs=nnx.Rngs(seed))
  for mlp in [*net.encoders, net.decoder]:
    for d in [*mlp.dense, mlp.out]:
      d.bias[...] = jnp.asarray(0.5 * rng.normal(size=d.bias.shape), jnp.float32)
    for bn in mlp.norm:
      bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, bn.scale.shape), jnp.float32)
      bn.bias[...] = jnp.asarray(0.3 * rng.normal(size=bn.bias.shape), jnp.float32)
      bn.mean[...] = jnp.asarray(0.5 * rng.normal(size=bn.mean.shape), jnp.float32)
      bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, bn.var.shape), jnp.float32)
  prior = rbm.RBM(
    jnp.asarray(0.5 * rng.normal(size=4), jnp.float32),
    jnp.asarray(0.5 * rng.normal(size=4), jnp.float32),
    jnp.asarray(0.7 * rng.normal(size=(4, 4)), jnp.float32),
  )
  x = (rng.uniform(size=(3, SPEC.num_pixels)) < mean_x).astype(np.float32)
  return net, prior, x


# ---- independent float64 reference ---------------------------------------------------------------


def _np_mlp(mlp, h):
  for dense, bn in zip(mlp.dense, mlp.norm, strict=True):
    a = h @ np.asarray(dense.kernel[...], np.float64) + np.asarray(dense.bias[...], np.float64)
    a = (a - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...], np.float64) + 1e-2)
    h = np.tanh(a * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...]))
  return h @ np.asarray(mlp.out.kernel[...], np.float64) + np.asarray(mlp.out.bias[...], np.float64)


def _np_bern(z, logits):
  return np.sum(z * logits - np.logaddexp(0.0, logits), axis=-1)


def _np_reference(net, prior, x):
  """log p(x|z) + log p(z) and log q(z|x) for all 256 states: arrays [256, batch]."""
  x = x.astype(np.float64)
  mean_x = np.asarray(net.mean_x[...], np.float64)
  states = np.array(list(itertools.product([0.0, 1.0], repeat=8)))
  if isinstance(prior, priors.BoltzmannMachine):
    e = prior.graph.edges
    neg_e = states @ np.asarray(prior.b, np.float64) + (
      states[:, e[:, 0]] * states[:, e[:, 1]]
    ) @ np.asarray(prior.w, np.float64)
  else:
    b1, b2, w = (np.asarray(a, np.float64) for a in prior)
    neg_e = states[:, :4] @ b1 + states[:, 4:] @ b2 + np.sum((states[:, :4] @ w) * states[:, 4:], 1)
  log_pz = neg_e - logsumexp(neg_e)
  clipped = np.clip(mean_x, 1e-3, 1 - 1e-3)
  x_logits = _np_mlp(net.decoder, states) + np.log(clipped / (1 - clipped))  # [256, pixels]
  log_px_z = np.stack([_np_bern(xb, x_logits) for xb in x], 1)  # [256, batch]
  log_q = np.zeros((256, len(x)))
  for b, xb in enumerate(x):
    xc = np.broadcast_to(xb - mean_x, (256, len(xb)))
    l0 = _np_mlp(net.encoders[0], xc)
    l1 = _np_mlp(net.encoders[1], np.concatenate([xc, states[:, :4]], 1))
    log_q[:, b] = _np_bern(states[:, :4], l0) + _np_bern(states[:, 4:], l1)
  return log_px_z + log_pz[:, None], log_q


# ---- tests ---------------------------------------------------------------------------------------


def test_exact_log_likelihood_matches_numpy_enumeration():
  net, prior, x = _tiny_model(0)
  log_z = rbm.exact_log_partition(prior)
  got = evaluation.exact_log_likelihood(net, prior, log_z, jnp.asarray(x))
  log_joint, log_q = _np_reference(net, prior, x)
  want_log_px = logsumexp(log_joint, axis=0)
  want_elbo = np.sum(np.exp(log_q) * (log_joint - log_q), axis=0)
  np.testing.assert_allclose(np.exp(logsumexp(log_q, axis=0)), 1.0, rtol=1e-12)  # q normalised
  np.testing.assert_allclose(got["log_px"], want_log_px, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(got["elbo"], want_elbo, rtol=1e-5, atol=1e-4)
  assert np.all(want_elbo < want_log_px)


def test_graph_prior_exact_log_likelihood_matches_numpy_enumeration():
  # A Boltzmann machine on a non-bipartite graph over the 8 latents (node k = unit k; edges inside
  # both groups and across), exact log Z by machine.exact_log_partition.
  net, _, x = _tiny_model(5)
  edges = [(0, 1), (1, 2), (0, 2), (2, 3), (4, 5), (5, 6), (6, 7), (4, 7), (0, 4), (1, 6), (3, 5)]
  g = machine.Graph.from_edges(8, edges)
  assert g.num_colours >= 3
  rng = np.random.default_rng(5)
  prior = priors.BoltzmannMachine(
    jnp.asarray(0.5 * rng.normal(size=8), jnp.float32),
    jnp.asarray(rng.normal(size=g.num_edges), jnp.float32),
    g,
  )
  got = evaluation.exact_log_likelihood(
    net, prior, machine.exact_log_partition(prior), jnp.asarray(x)
  )
  log_joint, log_q = _np_reference(net, prior, x)
  np.testing.assert_allclose(got["log_px"], logsumexp(log_joint, axis=0), rtol=1e-5, atol=1e-4)
  want_elbo = np.sum(np.exp(log_q) * (log_joint - log_q), axis=0)
  np.testing.assert_allclose(got["elbo"], want_elbo, rtol=1e-5, atol=1e-4)


def test_factorial_prior_exact_log_likelihood():
  net, _, x = _tiny_model(1)
  logits = np.random.default_rng(1).normal(size=8)
  prior = priors.FactorialBernoulli(jnp.asarray(logits, jnp.float32))
  got = evaluation.exact_log_likelihood(net, prior, None, jnp.asarray(x))
  # The same reference with an RBM whose W = 0 has log p(z) = Σ_i log Bernoulli(z_i; σ(a_i)).
  as_rbm = rbm.RBM(jnp.asarray(logits[:4]), jnp.asarray(logits[4:]), jnp.zeros((4, 4)))
  log_joint, _ = _np_reference(net, as_rbm, x)
  np.testing.assert_allclose(got["log_px"], logsumexp(log_joint, axis=0), rtol=1e-5, atol=1e-4)


def test_iw_estimate_converges_to_exact_log_likelihood_from_below():
  net, prior, x = _tiny_model(2)
  log_z = rbm.exact_log_partition(prior)
  log_joint, log_q = _np_reference(net, prior, x)
  log_px = logsumexp(log_joint, axis=0)
  elbo = np.sum(np.exp(log_q) * (log_joint - log_q), axis=0)
  # Normalised weights v = w / p(x) under q: E[v] = 1, c = Var(v), m3 = E[(v - 1)^3] (exact).
  v = np.exp(log_joint - log_q - log_px)
  q = np.exp(log_q)
  c = np.sum(q * (v - 1) ** 2, 0)
  m3 = np.sum(q * (v - 1) ** 3, 0)

  means = {}
  # `reps` independent replicates per example: the batch holds each example `reps` times.
  for k, reps, key in [(1, 4000, 0), (10, 400, 1), (1000, 200, 2)]:
    xs = jnp.asarray(np.repeat(x, reps, axis=0))
    out = evaluation.evaluate(jax.random.key(key), net, prior, log_z, xs, k)
    est = -np.asarray(out["nll"], np.float64).reshape(3, reps)
    mean, se = est.mean(1), est.std(1, ddof=1) / math.sqrt(reps)
    means[k] = (mean, se)
    # The IW bound never exceeds log p(x) on average (one-sided, 3 standard errors).
    assert np.all(mean <= log_px + 3 * se), (k, mean, log_px, se)
    if k == 1:
      # K = 1 is the ELBO and neg_elbo its per-sample estimate: both unbiased for the exact ELBO.
      np.testing.assert_allclose(mean, elbo, atol=4 * np.max(se))
      elbo_est = -np.asarray(out["neg_elbo"], np.float64).reshape(3, reps)
      np.testing.assert_allclose(elbo_est, est, rtol=1e-6)
    if k == 1000:
      # Delta method for log of a mean of K i.i.d. weights with mean 1:
      # E log v̄ = −c/(2K) + m3/(3K²) − 3c²/(4K²) + O(K⁻³). Valid while c/K is small (checked);
      # the O(K⁻²) part is at most a few 1e-3 here, and the tolerance is 4 standard errors of the
      # replicate mean plus the size of that part.
      assert np.all(c / k < 0.05), c
      second = m3 / (3 * k**2) - 3 * c**2 / (4 * k**2)
      predicted = log_px - c / (2 * k) + second
      assert np.all(np.abs(mean - predicted) < 4 * se + np.abs(second)), (mean, predicted, se)
      neg_elbo = np.asarray(out["neg_elbo"], np.float64).reshape(3, reps).mean(1)
      np.testing.assert_allclose(-neg_elbo, elbo, atol=4 * np.max(se))
  # The bound tightens with K (3 standard errors of the difference).
  for a, b in [(1, 10), (10, 1000)]:
    diff = means[b][0] - means[a][0]
    assert np.all(diff > -3 * np.hypot(means[a][1], means[b][1]))
  assert np.all(elbo < log_px)


def test_chunked_accumulation_matches_direct_computation():
  net, prior, x = _tiny_model(3)
  log_z = rbm.exact_log_partition(prior)
  key = jax.random.key(5)
  k, chunk = 10, 4  # 3 chunks, the last one half masked
  out = evaluation.evaluate(key, net, prior, log_z, jnp.asarray(x), k, sample_chunk=chunk)
  parts = [
    evaluation.discrete_log_weights(
      jax.random.fold_in(key, c), net, prior, log_z, jnp.asarray(x), chunk
    )
    for c in range(3)
  ]
  log_w = np.concatenate([np.asarray(p, np.float64) for p in parts], 0)[:k]
  np.testing.assert_allclose(out["nll"], -(logsumexp(log_w, 0) - math.log(k)), rtol=1e-6)
  np.testing.assert_allclose(out["neg_elbo"], -log_w.mean(0), rtol=1e-6)


def test_large_log_weights_are_accumulated_stably():
  net, prior, x = _tiny_model(4)
  # An arbitrary log Z offset shifts every log weight by −1000; the NLL shifts by +1000 exactly.
  log_z = rbm.exact_log_partition(prior)
  key = jax.random.key(0)
  a = evaluation.evaluate(key, net, prior, log_z, jnp.asarray(x), 50, sample_chunk=10)
  b = evaluation.evaluate(key, net, prior, log_z + 1000.0, jnp.asarray(x), 50, sample_chunk=10)
  np.testing.assert_allclose(b["nll"] - 1000.0, a["nll"], atol=2e-3)
  chex.assert_tree_all_finite(b)


def test_evaluation_uses_running_statistics_and_ignores_gi_head():
  net, prior, x = _tiny_model(5, gaussian_integral=True)
  log_z = rbm.exact_log_partition(prior)
  key = jax.random.key(1)
  stats_before = jax.tree.map(np.asarray, nnx.state(net, nnx.BatchStat))
  net.train()
  a = evaluation.evaluate(key, net, prior, log_z, jnp.asarray(x), 20)
  chex.assert_trees_all_equal(stats_before, jax.tree.map(np.asarray, nnx.state(net, nnx.BatchStat)))
  net.eval()
  b = evaluation.evaluate(key, net, prior, log_z, jnp.asarray(x), 20)
  chex.assert_trees_all_close(a, b)
  log_joint, _ = _np_reference(net, prior, x)
  np.testing.assert_allclose(
    evaluation.exact_log_likelihood(net, prior, log_z, jnp.asarray(x))["log_px"],
    logsumexp(log_joint, 0),
    rtol=1e-5,
    atol=1e-4,
  )


def test_evaluate_under_jit_with_split_state():
  net, prior, x = _tiny_model(6)
  log_z = rbm.exact_log_partition(prior)
  graphdef, params, stats = nnx.split(net, nnx.Param, nnx.BatchStat)

  @jax.jit
  def run(params, stats, prior, log_z, x, key):
    model = nnx.merge(graphdef, params, stats)
    return evaluation.evaluate(key, model, prior, log_z, x, 30, sample_chunk=8)

  key = jax.random.key(3)
  got = run(params, stats, prior, log_z, jnp.asarray(x), key)
  want = evaluation.evaluate(key, net, prior, log_z, jnp.asarray(x), 30, sample_chunk=8)
  chex.assert_trees_all_close(got, want, rtol=1e-5)


def test_bad_inputs():
  net, prior, x = _tiny_model(7)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="num_samples"):
    evaluation.evaluate(key, net, prior, 0.0, jnp.asarray(x), 0)
  with pytest.raises(ValueError, match="x must have shape"):
    evaluation.evaluate(key, net, prior, 0.0, jnp.zeros((2, 11)), 5)
  with pytest.raises(ValueError, match="units"):
    evaluation.evaluate(key, net, rbm.init_rbm(3, 3), 0.0, jnp.asarray(x), 5)
  with pytest.raises(ValueError, match="log_z"):
    evaluation.evaluate(key, net, prior, None, jnp.asarray(x), 5)
  big = models.DVAENet(
    models.StructSpec("big", 1, 22, (), (), num_pixels=4), np.full(4, 0.5), rngs=nnx.Rngs(0)
  )
  with pytest.raises(ValueError, match="enumerates"):
    evaluation.exact_log_likelihood(big, rbm.init_rbm(11, 11), 0.0, jnp.zeros((1, 4)))
