"""Tests of dvae_jax.samplers.ais: log Z against exact enumeration, calibration of its stderr."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rbm_reference as ref

from dvae_jax.priors import rbm
from dvae_jax.samplers import ais, ais_log_partition, tempering


@pytest.mark.parametrize("w_std", [0.3, 1.0, 2.5])
def test_ais_log_z_matches_exact(w_std):
  m = ref.random_rbm(10, 14, 14, w_std)
  exact = ref.log_z(m)
  res = ais_log_partition(jax.random.key(0), m)
  assert res.log_weights.shape == (1024,)
  assert res.z.shape == (1024, 28)
  err = float(res.log_z) - exact
  # |error| < 4 stderr: two-sided false-alarm rate 6e-5 if the stderr is right (calibration is
  # tested below); the absolute bound is the brief's accuracy target for w_std <= 1.
  assert abs(err) < 4.0 * float(res.stderr), (err, float(res.stderr))
  if w_std <= 1.0:
    assert abs(err) < 0.05
  assert 1.0 <= float(res.ess) <= 1024.0


def test_ais_stderr_is_calibrated():
  """Over many independent small runs, (log Ẑ − log Z)/stderr behaves like a standard normal."""
  m = ref.random_rbm(11, 10, 10, 1.0)
  exact = ref.log_z(m)
  betas = tempering.linear_schedule(40)
  runs = jax.jit(jax.vmap(lambda k: ais.run(k, m, betas, 128)))(
    jax.random.split(jax.random.key(1), 400)
  )
  z = (np.asarray(runs.log_z, np.float64) - exact) / np.asarray(runs.stderr, np.float64)
  # Budget chosen so the weights are not degenerate (stderr ≈ 0.05–0.1, ESS ≈ 60% of chains).
  assert 0.02 < np.median(runs.stderr) < 0.2
  # With 400 runs: coverage of ±2 sd is 0.954 for a normal, binomial sd 0.0105, so [0.91, 0.99]
  # is a 4-sd band; the sd of the z-scores has sampling sd ≈ 1/sqrt(800) = 0.035, so [0.85, 1.15]
  # also allows for the delta method's small bias; the mean has sd 0.05 (bias of log of a mean,
  # -var/2 ≈ -0.005 nats, is a tenth of a stderr here).
  coverage = np.mean(np.abs(z) < 2.0)
  assert 0.91 < coverage < 0.99, coverage
  assert 0.85 < np.std(z) < 1.15, np.std(z)
  assert abs(np.mean(z)) < 0.25, np.mean(z)


def test_zero_rbm_is_exact():
  m = rbm.init_rbm(5, 7)
  res = ais_log_partition(jax.random.key(0), m, num_chains=16, num_temperatures=5)
  np.testing.assert_allclose(res.log_z, 12 * np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(res.stderr, 0.0, atol=1e-6)


def test_errors():
  m = rbm.init_rbm(3, 3)
  with pytest.raises(ValueError, match="num_temperatures"):
    tempering.linear_schedule(1)
  with pytest.raises(ValueError, match="betas"):
    ais.run(jax.random.key(0), m, jnp.zeros((2, 2)), 4)
  with pytest.raises(ValueError, match="num_sweeps"):
    ais.run(jax.random.key(0), m, jnp.linspace(0, 1, 3), 4, num_sweeps=0)
  with pytest.raises(ValueError, match="start at 0"):
    ais.run(jax.random.key(0), m, jnp.linspace(0.5, 1, 3), 4)


@pytest.mark.parametrize("num_temperatures", [2, 41, 100])
def test_progress_reports_every_part_and_changes_nothing(num_temperatures):
  """With ``progress`` the schedule runs in host-driven parts (so that the runner can show a
  bar): the same keys and arithmetic per step, hence the same estimate, weights and chains as the
  one compiled program, bit for bit on this backend."""
  m = ref.random_rbm(3, 6, 5, 1.0)
  key = jax.random.key(7)
  whole = ais_log_partition(key, m, num_chains=64, num_temperatures=num_temperatures)
  done = []
  parts = ais_log_partition(
    key, m, num_chains=64, num_temperatures=num_temperatures, progress=done.append
  )
  np.testing.assert_array_equal(parts.z, whole.z)
  np.testing.assert_array_equal(parts.log_weights, whole.log_weights)
  np.testing.assert_array_equal(parts.log_z, whole.log_z)
  np.testing.assert_array_equal(parts.stderr, whole.stderr)
  steps = num_temperatures - 1
  assert done[-1] == steps and done == sorted(set(done))
  assert len(done) == min(steps, 20)
