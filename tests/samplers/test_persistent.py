"""Tests of dvae_jax.samplers.persistent: the state helpers shared by the persistent samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvae_jax.priors import rbm
from dvae_jax.samplers import make_prior_sampler, persistent


@pytest.mark.parametrize("kind", ["pa", "pcd"])
def test_reset_log_z_re_anchors_the_running_estimate(kind):
  """reset_log_z replaces log Z, zeroes the Kahan compensation, sets the variance to stderr², keeps
  dtypes, chains and parameters; the next step then adds the same increment to the new anchor."""
  sampler = make_prior_sampler(kind, num_samples=32, num_sweeps=2)
  m = rbm.init_rbm(5, 4)
  state = sampler.init(jax.random.key(0), m)
  state = state._replace(log_z_compensation=jnp.float32(1e-6), log_z_variance=jnp.float32(0.5))
  reset = persistent.reset_log_z(state, 3.25, 0.125)
  assert float(reset.log_z) == 3.25
  assert float(reset.log_z_compensation) == 0.0
  assert float(reset.log_z_variance) == 0.125**2
  for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(reset), strict=True):
    assert new.dtype == old.dtype and new.shape == old.shape
  for name in ("z", "params"):
    for a, b in zip(
      jax.tree.leaves(getattr(state, name)), jax.tree.leaves(getattr(reset, name)), strict=True
    ):
      np.testing.assert_array_equal(a, b)

  m2 = jax.tree.map(lambda x: x + 0.1, m)
  key = jax.random.key(1)
  _, info = sampler.step(key, state._replace(log_z_compensation=jnp.float32(0.0)), m2)
  after, info_reset = sampler.step(key, reset, m2)
  np.testing.assert_allclose(info_reset.log_z_increment, info.log_z_increment, rtol=1e-6)
  np.testing.assert_allclose(after.log_z, 3.25 + info.log_z_increment, rtol=1e-6)
