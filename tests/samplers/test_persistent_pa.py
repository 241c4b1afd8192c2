"""Tests of dvae_jax.samplers.persistent_pa: log Z tracking under changing parameters."""

import chex
import jax
import numpy as np
import pytest
import rbm_reference as ref

from dvae_jax.priors import rbm
from dvae_jax.samplers import persistent, resampling
from dvae_jax.samplers import persistent_pa as ppa


def test_persistent_pa_tracks_slowly_changing_parameters():
  n, steps = 12, 60
  seq, exact = ref.parameter_path(20, n, steps)
  state = ppa.init(jax.random.key(0), rbm.init_rbm(n, n), num_replicas=1000, num_sweeps=10)
  np.testing.assert_allclose(state.log_z, 24 * np.log(2.0), rtol=1e-7)  # exact start

  @jax.jit
  def track(key, state):
    def body(s, inputs):
      k, m = inputs
      return ppa.step(k, s, m, num_sweeps=10)

    return jax.lax.scan(body, state, (jax.random.split(key, steps), seq))

  state, info = track(jax.random.key(1), state)
  err = np.asarray(info.log_z, np.float64) - exact
  se = np.asarray(info.log_z_stderr, np.float64)
  # The running error is a sum of the per-step incremental errors; log_z_stderr accumulates their
  # delta-method variances (calibration: the slow test in test_prior_sampler.py). 4 sd at each step,
  # plus 1e-4 for float32 rounding of the exact-vs-float32 parameters.
  assert np.all(np.abs(err) < 4.0 * se + 1e-4), np.max(np.abs(err) / se)
  assert np.max(np.abs(err)) < 0.1
  assert np.all(np.asarray(info.num_stages) >= 1)
  chex.assert_trees_all_close(state.params, jax.tree.map(lambda x: x[-1], seq))


def test_persistent_step_without_change_keeps_log_z():
  m = ref.random_rbm(4, 6, 7, 1.0)
  state = ppa.init(jax.random.key(0), m, num_replicas=200, num_sweeps=5)
  new, info = ppa.step(jax.random.key(1), state, m, num_sweeps=5)
  assert float(info.log_z_increment) == 0.0
  assert float(info.ess) == pytest.approx(200.0)
  assert int(info.num_stages) == 1
  chex.assert_shape(new.z, (200, 13))


def test_persistent_init_far_from_zero_anneals_in_stages():
  m = ref.random_rbm(5, 10, 10, 2.0)
  exact = ref.log_z(m)
  zero = persistent.zero_state(jax.random.key(0), m, 1024)
  state, info = ppa.step(jax.random.key(1), zero, m, num_sweeps=10, target_ess=0.9)
  assert int(info.num_stages) > 5  # a jump from 0 to a strong RBM must be split
  # Each stage keeps ESS ≥ 0.9·S (up to float32 rounding of the ESS fraction).
  assert float(info.ess) >= 0.9 * 1024 * (1 - 1e-5)
  assert abs(float(state.log_z) - exact) < 4 * float(info.log_z_stderr) + 0.02


def test_errors():
  m = rbm.init_rbm(4, 4)
  state = persistent.zero_state(jax.random.key(0), m, 8)
  with pytest.raises(ValueError, match="does not match"):
    ppa.step(jax.random.key(0), state, rbm.init_rbm(5, 4))
  with pytest.raises(TypeError, match="resample_fn must be a function"):
    ppa.step(jax.random.key(0), state, m, resample_fn="magic")
  with pytest.raises(ValueError, match="target_ess"):
    ppa.prior_sampler(target_ess=1.5)
  with pytest.raises(ValueError, match="max_stages"):
    ppa.step(jax.random.key(0), state, m, max_stages=0)


def test_prior_sampler_is_init_and_step_with_its_options():
  m = ref.random_rbm(4, 6, 7, 1.0)
  sampler = ppa.prior_sampler(64, 4, target_ess=0.8, resample_fn=resampling.residual)
  state = sampler.init(jax.random.key(0), m)
  chex.assert_trees_all_equal(
    state, ppa.init(jax.random.key(0), m, 64, 4, target_ess=0.8, resample_fn=resampling.residual)
  )
  a = sampler.step(jax.random.key(1), state, m)
  b = ppa.step(jax.random.key(1), state, m, 4, target_ess=0.8, resample_fn=resampling.residual)
  chex.assert_trees_all_equal(a, b)
