"""Tests of dvae_jax.samplers.tempering: schedules and the adaptive tempering rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from dvae_jax.priors import rbm
from dvae_jax.samplers import tempering


def test_adaptive_step_solves_for_the_target():
  rng = np.random.default_rng(0)
  e = rng.normal(0.0, 3.0, (4, 50))

  def ess_fraction(d):
    log_w = -d * e
    w = np.exp(log_w - log_w.max(1, keepdims=True))
    return np.mean(w.sum(1) ** 2 / (w**2).sum(1)) / 50

  target = 0.8
  got = float(
    tempering.adaptive_step(jnp.asarray(e, jnp.float32), jnp.float32(1.0), jnp.float32(target))
  )
  expected = optimize.brentq(lambda d: ess_fraction(d) - target, 1e-9, 1.0)
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  # The whole interval is taken when it keeps the target.
  small = float(
    tempering.adaptive_step(jnp.asarray(e, jnp.float32), jnp.float32(1e-4), jnp.float32(0.8))
  )
  assert small == pytest.approx(1e-4)


def test_next_beta_takes_the_target_step_or_the_even_share_and_ends_at_one():
  rng = np.random.default_rng(1)
  e = jnp.asarray(rng.normal(0.0, 3.0, (4, 50)), jnp.float32)
  beta, target = jnp.float32(0.2), jnp.float32(0.8)
  step = float(tempering.adaptive_step(e, 1.0 - beta, target))
  # Plenty of steps left: the ESS target decides.
  got = float(tempering.next_beta(beta, jnp.int32(0), 1000, e, target))
  np.testing.assert_allclose(got, 0.2 + step, rtol=1e-6)
  # Two steps left: never shorter than half of the rest of the path.
  got = float(tempering.next_beta(beta, jnp.int32(998), 1000, e, target))
  np.testing.assert_allclose(got, 0.2 + max(step, 0.4), rtol=1e-6)
  # The last step allowed ends exactly at 1.
  assert float(tempering.next_beta(beta, jnp.int32(999), 1000, e, target)) == 1.0


def test_schedules():
  np.testing.assert_allclose(tempering.linear_schedule(5), [0.0, 0.25, 0.5, 0.75, 1.0])
  betas = np.asarray(tempering.geometric_schedule(5, beta_min=1e-2))
  assert betas[0] == 0.0 and betas[-1] == 1.0
  np.testing.assert_allclose(betas[2:] / betas[1:-1], 10 ** (2 / 3), rtol=1e-5)


def test_errors():
  with pytest.raises(ValueError, match="num_temperatures"):
    tempering.linear_schedule(1)
  with pytest.raises(ValueError, match="beta_min"):
    tempering.geometric_schedule(10, beta_min=0.0)
  with pytest.raises(ValueError, match="target_ess"):
    tempering.check_target_ess(1.5)
  m = rbm.init_rbm(2, 2)
  with pytest.raises(ValueError, match="start at 0"):
    tempering.check_schedule(m, jnp.array([0.1, 1.0]), 1)
  with pytest.raises(ValueError, match="num_sweeps"):
    tempering.check_schedule(m, jnp.array([0.0, 1.0]), 0)
  tempering.check_schedule(m, jax.jit(lambda b: b)(jnp.array([0.0, 1.0])), 1)  # concrete again
