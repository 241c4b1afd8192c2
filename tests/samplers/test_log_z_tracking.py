"""Tests of dvae_jax.samplers.log_z_tracking: with the tracker re-anchoring every 25 steps, the
log Z that a training loop reports stays at the exact value along a maximum-likelihood training run
whose updates use the sampler's samples (where the sampler's own running log Z drifts low)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import rbm_reference as ref
from scipy import stats

from dvae_jax.priors import rbm
from dvae_jax.samplers import log_z_tracking, make_prior_sampler, persistent


def train_and_report(num_sweeps, refresh_every=25, num_steps=600, n=16, lr=0.05):
  """Adam maximum likelihood of an n×n RBM on exact samples of a teacher, the gradient's model term
  from the persistent PA sampler (as in training). Returns per step: the log Z a training loop
  reports (the sampler's, after its step and before any refresh), the sampler's own running log Z
  without refreshes (its increments summed; the parameters do not depend on log Z), the exact log Z
  of the sampler's parameters, and the reported stderr."""
  teacher = ref.random_rbm(30, n, n, 1.5)
  data_z = ref.exact_samples(jax.random.key(0), teacher, 4096)
  sampler = make_prior_sampler("pa", num_samples=1000, num_sweeps=num_sweeps)
  optimizer = optax.adam(lr)

  def step(carry, key):
    params, opt_state, state, tracker, t = carry
    k_sampler, k_refresh = jax.random.split(key)
    state, info = sampler.step(k_sampler, state, params)

    def nll(p):
      log_z = p.training_log_partition(state.z, state.log_z)
      return jnp.mean(p.energy(data_z)) + log_z

    updates, opt_state = optimizer.update(jax.grad(nll)(params), opt_state)
    reported = (state.log_z, info.log_z_increment, jnp.sqrt(state.log_z_variance), state.params)

    def refresh(args):
      tracker, state, _, _ = log_z_tracking.refresh(k_refresh, *args, num_sweeps=40)
      return tracker, state

    tracker, state = jax.lax.cond(
      (t + 1) % refresh_every == 0, refresh, lambda args: args, (tracker, state)
    )
    params = optax.apply_updates(params, updates)
    return (params, opt_state, state, tracker, t + 1), reported

  params = rbm.init_rbm(n, n)
  state = sampler.init(jax.random.key(1), params)
  tracker = log_z_tracking.seed(jax.random.key(3), state, 512)
  chex.assert_shape(tracker.z, (512, 2 * n))
  carry = (params, optimizer.init(params), state, tracker, jnp.zeros((), jnp.int32))
  keys = jax.random.split(jax.random.key(2), num_steps)
  run = jax.jit(lambda c, k: jax.lax.scan(step, c, k))
  _, (reported, increments, stderr, path) = run(carry, keys)
  exact = np.asarray(jax.jit(jax.vmap(rbm.exact_log_partition))(path), np.float64)
  untracked = float(state.log_z) + np.cumsum(np.asarray(increments, np.float64))
  return np.asarray(reported, np.float64), untracked, exact, np.asarray(stderr), path


@pytest.mark.parametrize(
  "num_sweeps", [4, pytest.param(40, marks=pytest.mark.slow)], ids=["4-sweeps", "40-sweeps"]
)
def test_reported_log_z_stays_exact_along_training(num_sweeps):
  reported, untracked, exact, stderr, _ = train_and_report(num_sweeps)
  error = reported - exact
  # Measured: max |error| 0.17 (4 sweeps) and 0.08 (40) nats, reported stderr 0.08; 0.25 nats is
  # 3 stderr, and half the 0.5-nat requirement of issue 10.
  assert np.max(np.abs(error)) < 0.25, np.max(np.abs(error))
  assert abs(error[-1]) < 4 * stderr[-1], (error[-1], stderr[-1])
  if num_sweeps == 4:
    # Without the refreshes the sampler's own log Z drifts low (measured −0.39 nats after 600
    # steps, 4 stderr): the setting does expose the bias the tracker removes.
    assert untracked[-1] - exact[-1] < -0.25, untracked[-1] - exact[-1]


@pytest.mark.parametrize("target_ess", [0.9, pytest.param(0.99, marks=pytest.mark.slow)])
def test_tracker_is_unbiased_with_a_calibrated_stderr_along_a_training_path(target_ess):
  # Many independent trackers (exact start at θ = 0) follow one recorded training path; at its end
  # their log Z errors against enumeration must average 0 within 4 se and spread as the stderr they
  # report. (On the default run's path the in-run −0.78 that looked like a bias was the worst of
  # 176 replays; BUILD_NOTES, issue 10.)
  num_steps, every, num_trackers, num_replicas, n = 300, 25, 48, 256, 12
  *_, path = train_and_report(4, refresh_every=every, num_steps=num_steps, n=n)
  targets = jax.tree.map(lambda x: x[every - 1 :: every], path)
  exact = ref.log_z(jax.tree.map(lambda x: x[-1], targets))

  def track(key):
    k0, k1 = jax.random.split(key)
    tracker = persistent.zero_state(k0, rbm.init_rbm(n, n), num_replicas)

    def body(tracker, inputs):
      k, target = inputs
      refreshed = log_z_tracking.refresh(
        k, tracker, tracker._replace(params=target), num_sweeps=40, target_ess=target_ess
      )
      return refreshed[0], None

    tracker, _ = jax.lax.scan(body, tracker, (jax.random.split(k1, num_steps // every), targets))
    return tracker.log_z, tracker.log_z_variance

  keys = jax.random.split(jax.random.key(4), num_trackers)
  log_z, variance = jax.jit(jax.vmap(track))(keys)
  error = np.asarray(log_z, np.float64) - exact
  se = error.std(ddof=1) / np.sqrt(num_trackers)
  # Measured −0.009 ± 0.015 (0.9) and −0.011 ± 0.009 (0.99).
  assert abs(error.mean()) < 4 * se, (error.mean(), se)
  # The spread against the reported stderr, within the 1e-4 tails of its χ² law if calibrated
  # (measured 0.105 against 0.093 at 0.9, 0.065 against 0.053 at 0.99).
  spread = error.std(ddof=1)
  ratio = spread / np.sqrt(np.mean(np.asarray(variance, np.float64)))
  dof = num_trackers - 1
  low, high = np.sqrt(stats.chi2.ppf([1e-4, 1 - 1e-4], dof) / dof)
  assert low < ratio < high, (ratio, low, high)
  if target_ess == 0.99:
    # Finer stages shrink the spread: 0.065 plus 3.5 standard errors of a spread from 48 trackers
    # (≈ 10%), below the 0.105 of target ESS 0.9.
    assert spread < 0.088, spread


def test_seed_and_refresh_contract():
  m = ref.random_rbm(4, 5, 6, 0.5)
  sampler = make_prior_sampler("pa", num_samples=64, num_sweeps=4)
  state = sampler.init(jax.random.key(0), m)
  tracker = log_z_tracking.seed(jax.random.key(1), state, 32)
  # Replicas come from the population, the rest of the state is the sampler's.
  rows = {tuple(r) for r in np.asarray(state.z).tolist()}
  assert all(tuple(r) in rows for r in np.asarray(tracker.z).tolist())
  chex.assert_trees_all_equal(
    (tracker.log_z, tracker.log_z_variance, tracker.params),
    (state.log_z, state.log_z_variance, state.params),
  )
  moved = jax.tree.map(lambda x: x + 0.1, m)
  state, _ = sampler.step(jax.random.key(2), state, moved)
  tracker, refreshed, drift, info = log_z_tracking.refresh(
    jax.random.key(3), tracker, state, num_sweeps=40
  )
  assert int(info.num_stages) >= 1 and 0 < float(info.ess) <= 32
  chex.assert_trees_all_equal(tracker.params, moved)
  chex.assert_trees_all_equal((refreshed.z, refreshed.params), (state.z, state.params))
  np.testing.assert_allclose(refreshed.log_z, tracker.log_z)
  np.testing.assert_allclose(drift, state.log_z - tracker.log_z)
  # A larger tracker than the population draws with replacement.
  assert log_z_tracking.seed(jax.random.key(4), state, 100).z.shape[0] == 100
  with pytest.raises(ValueError, match="num_replicas"):
    log_z_tracking.seed(jax.random.key(4), state, 0)
