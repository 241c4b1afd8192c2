"""Tests of dvae_jax/posterior.py: the group-by-group hierarchy (math.md §4, §5).

The relaxed samplers through the hierarchy are tested in test_objectives.py, the Bernoulli one
against exact enumeration in test_evaluation.py; here the loop itself: what each group's encoder
reads, the K-fold repetition of group 0, the combination of the groups, and bad inputs.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dvae_jax import models, posterior, priors

SPEC = models.StructSpec(
  "tiny3", num_groups=3, units_per_group=2, encoder_hidden=(5,), decoder_hidden=(4,), num_pixels=8
)


def _net(gaussian_integral=False):
  rng = np.random.default_rng(0)
  net = models.DVAENet(
    SPEC, rng.uniform(0.2, 0.8, 8), gaussian_integral=gaussian_integral, rngs=nnx.Rngs(0)
  )
  net.eval()
  x = jnp.asarray(rng.uniform(size=(4, 8)) < 0.5, jnp.float32)
  return net, x


def test_bernoulli_hierarchy_matches_a_direct_recomputation():
  net, x = _net()
  k = 5
  post = posterior.sample_hierarchy(
    jax.random.key(1), net, x, k, posterior.bernoulli_group, use_running_average=True
  )
  chex.assert_shape([post.zeta, post.logits], (k, 4, 6))
  chex.assert_shape(post.log_q, (k, 4))
  assert post.z is None
  z = np.asarray(post.zeta)
  assert set(np.unique(z)) <= {0.0, 1.0}
  # Each group's logits recomputed from x and the sampled earlier groups; log q from them.
  xr = jnp.tile(x, (k, 1))
  zr = post.zeta.reshape(k * 4, 6)
  logits = jnp.concatenate(
    [
      net.encode_group(g, xr, None if g == 0 else zr[:, : 2 * g]).logits
      for g in range(SPEC.num_groups)
    ],
    -1,
  )
  np.testing.assert_allclose(post.logits.reshape(k * 4, 6), logits, rtol=1e-5, atol=1e-6)
  want = jnp.sum(priors.bernoulli_log_prob(zr, logits), -1).reshape(k, 4)
  np.testing.assert_allclose(post.log_q, want, rtol=1e-5, atol=1e-5)
  # Group 0 is encoded once: identical logits across the K samples; later groups differ.
  np.testing.assert_array_equal(post.logits[0, :, :2], post.logits[3, :, :2])
  assert float(jnp.max(jnp.abs(post.zeta[0] - post.zeta[1]))) > 0


def test_given_states_without_a_key_and_the_gaussian_integral_encoding():
  net, x = _net(gaussian_integral=True)
  states = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 6)) < 0.5, jnp.float32)
  seen = []

  def given(key, group, encoding):
    assert key is None
    seen.append((group, encoding.logits.shape, encoding.shift_logits.shape))
    z = states[:, 2 * group : 2 * group + 2]
    return posterior.GroupSample(z, encoding.logits, None, z)

  post = posterior.sample_hierarchy(None, net, x, 1, given, use_running_average=True)
  assert seen == [(g, (4, 2), (4, 2)) for g in range(3)]
  np.testing.assert_array_equal(post.zeta[0], states)
  np.testing.assert_array_equal(post.z[0], states)
  assert post.log_q is None


def test_bad_inputs_raise_clear_errors():
  net, x = _net()
  with pytest.raises(ValueError, match="x must have shape"):
    posterior.sample_hierarchy(jax.random.key(0), net, x[:, :5], 1, posterior.bernoulli_group)
  with pytest.raises(ValueError, match="num_samples must be >= 1"):
    posterior.sample_hierarchy(jax.random.key(0), net, x, 0, posterior.bernoulli_group)
