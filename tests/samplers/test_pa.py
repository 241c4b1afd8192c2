"""Tests of dvae_jax.samplers.population_annealing: log Z, its error bars, samples, tracking."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rbm_reference as ref
from scipy import optimize, stats

from dvae_jax import rbm
from dvae_jax.samplers import pa_log_partition, persistent, resampling
from dvae_jax.samplers import population_annealing as pa

COUPLINGS = [0.3, 1.0, 2.5]  # weak, medium, strong (plain Gibbs mixes badly at >= 1)


@pytest.fixture(scope="module", params=COUPLINGS)
def machine(request):
  m = ref.random_rbm(10, 14, 14, request.param)
  return request.param, m, ref.log_z(m)


@pytest.mark.parametrize("schedule", ["linear", "geometric"])
def test_pa_fixed_schedules_match_exact(machine, schedule):
  w_std, m, exact = machine
  res = pa_log_partition(m, jax.random.key(0), schedule=schedule)
  err = float(res.log_z) - exact
  # 4 stderr: with 16 groups the z-score is t-distributed with 15 dof, P(|t| > 4) = 1.2e-3.
  assert abs(err) < 4.0 * float(res.stderr), (err, float(res.stderr))
  if w_std <= 1.0:
    assert abs(err) < 0.05
  assert int(res.num_steps) == 999
  chex.assert_shape(res.log_z_groups, (16,))
  chex.assert_shape((res.z1, res.z2), ((1024, 14), (1024, 14)))


def test_pa_adaptive_schedule(machine):
  w_std, m, exact = machine
  target = 0.999
  res = pa_log_partition(m, jax.random.key(1), schedule="adaptive", target_ess=target)
  err = float(res.log_z) - exact
  assert abs(err) < 4.0 * float(res.stderr), (err, float(res.stderr))
  if w_std <= 1.0:
    assert abs(err) < 0.05
  steps = int(res.num_steps)
  assert 1 <= steps < 999  # finished before the bound
  betas = np.asarray(res.betas)
  assert betas[0] == 0.0 and betas[steps] == 1.0
  assert np.all(np.diff(betas[: steps + 1]) > 0)
  ess = np.asarray(res.ess)
  # Every step keeps the target except the last, which may be a smaller jump that ends at β = 1.
  assert np.all(ess[: steps - 1] >= target - 1e-6)
  assert np.all(np.isnan(ess[steps:]))


def test_adaptive_stops_at_the_bound():
  m = ref.random_rbm(3, 8, 8, 2.0)
  res = pa_log_partition(
    m, jax.random.key(0), num_replicas=64, num_temperatures=4, schedule="adaptive", num_groups=4
  )
  assert int(res.num_steps) == 3
  # Target unreachable in 3 steps: the budget rule spaces them evenly instead of a final jump.
  np.testing.assert_allclose(res.betas, [0.0, 1 / 3, 2 / 3, 1.0], atol=1e-6)


def test_adaptive_step_solves_for_the_target():
  rng = np.random.default_rng(0)
  e = rng.normal(0.0, 3.0, (4, 50))

  def ess_fraction(d):
    log_w = -d * e
    w = np.exp(log_w - log_w.max(1, keepdims=True))
    return np.mean(w.sum(1) ** 2 / (w**2).sum(1)) / 50

  target = 0.8
  got = float(pa.adaptive_step(jnp.asarray(e, jnp.float32), jnp.float32(1.0), jnp.float32(target)))
  expected = optimize.brentq(lambda d: ess_fraction(d) - target, 1e-9, 1.0)
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  # The whole interval is taken when it keeps the target.
  small = float(pa.adaptive_step(jnp.asarray(e, jnp.float32), jnp.float32(1e-4), jnp.float32(0.8)))
  assert small == pytest.approx(1e-4)


def test_pa_stderr_is_calibrated():
  """Group z-scores (log Ẑ − log Z)/stderr follow Student's t with G − 1 degrees of freedom."""
  m = ref.random_rbm(11, 10, 10, 1.0)
  exact = ref.log_z(m)
  num_groups = 16
  betas = pa.linear_schedule(40)
  runs = jax.jit(jax.vmap(lambda k: pa.anneal(k, m, betas, 256, num_groups)))(
    jax.random.split(jax.random.key(1), 400)
  )
  z = (np.asarray(runs.log_z, np.float64) - exact) / np.asarray(runs.stderr, np.float64)
  assert 0.02 < np.median(runs.stderr) < 0.2  # a budget where the error bar matters
  # t_15: P(|t| < 2) = 0.936; with 400 runs its binomial sd is 0.012, so ±0.05 is a 4-sd band.
  # sd(t_15) = sqrt(15/13) = 1.074; the sample sd of 400 such values has sd ≈ 0.045, and the
  # allowance of 4 sd covers it. The mean has sd ≈ 0.054 (bias of log of a mean is ≈ −var/2).
  expected_coverage = 1.0 - 2.0 * stats.t.sf(2.0, num_groups - 1)
  assert abs(np.mean(np.abs(z) < 2.0) - expected_coverage) < 0.05
  assert abs(np.std(z) - np.sqrt(15 / 13)) < 0.18
  assert abs(np.mean(z)) < 0.25


@pytest.mark.parametrize("w_std", [1.0, 2.5])
def test_pa_samples_give_exact_moments_and_gradient(w_std):
  """The final population's sufficient statistics (= the gradient of the log Z surrogate) match
  the exact moments (= the gradient of log Z)."""
  m = ref.random_rbm(12, 10, 12, w_std)
  num_groups, num = 32, 2048
  res = pa_log_partition(m, jax.random.key(2), num_replicas=num, num_groups=num_groups)
  grad = jax.grad(rbm.log_partition_surrogate)(m, res.z1, res.z2, res.log_z)
  exact = ref.moments(m)
  exact_grad = jax.grad(rbm.exact_log_partition)(m)
  for a, b in zip(exact_grad, exact, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # Standard error from the spread of the 32 independent group means (replicas within a group are
  # correlated by resampling). For units that are (nearly) deterministic every group can agree and
  # the spread vanishes, so it is floored by the error of `num` independent exact samples, which
  # no estimator built from `num` samples of p beats. 5 standard errors over 164 entries (t_31
  # tails): false-alarm rate ≈ 1e-3.
  per_group = lambda x: np.asarray(x, np.float64).reshape(num_groups, -1, *x.shape[1:])
  z1, z2 = per_group(res.z1), per_group(res.z2)
  group_means = [z1.mean(1), z2.mean(1), np.einsum("gsi,gsj->gij", z1, z2) / z1.shape[1]]
  se = [
    np.maximum(g.std(0, ddof=1) / np.sqrt(num_groups), ref.binomial_stderr(p, num))
    for g, p in zip(group_means, exact, strict=True)
  ]
  assert ref.max_abs_z([np.asarray(g) for g in grad], exact, se) < 5.0


def test_persistent_pa_tracks_slowly_changing_parameters():
  n, steps = 12, 60
  seq, exact = ref.parameter_path(20, n, steps)
  state = pa.init(jax.random.key(0), rbm.init_rbm(n, n), num_replicas=1000, num_sweeps=10)
  np.testing.assert_allclose(state.log_z, 24 * np.log(2.0), rtol=1e-7)  # exact start

  @jax.jit
  def track(key, state):
    def body(s, inputs):
      k, m = inputs
      return pa.step(k, s, m, num_sweeps=10)

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
  state = pa.init(jax.random.key(0), m, num_replicas=200, num_sweeps=5)
  new, info = pa.step(jax.random.key(1), state, m, num_sweeps=5)
  assert float(info.log_z_increment) == 0.0
  assert float(info.ess) == pytest.approx(200.0)
  assert int(info.num_stages) == 1
  chex.assert_shape((new.z1, new.z2), ((200, 6), (200, 7)))


def test_persistent_init_far_from_zero_anneals_in_stages():
  m = ref.random_rbm(5, 10, 10, 2.0)
  exact = ref.log_z(m)
  zero = persistent.zero_state(jax.random.key(0), m, 1024)
  state, info = pa.step(jax.random.key(1), zero, m, num_sweeps=10, target_ess=0.9)
  assert int(info.num_stages) > 5  # a jump from 0 to a strong RBM must be split
  # Each stage keeps ESS ≥ 0.9·S (up to float32 rounding of the ESS fraction).
  assert float(info.ess) >= 0.9 * 1024 * (1 - 1e-5)
  assert abs(float(state.log_z) - exact) < 4 * float(info.log_z_stderr) + 0.02


def test_errors():
  m = rbm.init_rbm(4, 4)
  with pytest.raises(ValueError, match="multiple of num_groups"):
    pa_log_partition(m, jax.random.key(0), num_replicas=100, num_groups=16)
  with pytest.raises(ValueError, match="unknown schedule"):
    pa_log_partition(m, jax.random.key(0), schedule="cosine")
  with pytest.raises(ValueError, match="beta_min"):
    pa.geometric_schedule(10, beta_min=0.0)
  with pytest.raises(ValueError, match="target_ess"):
    pa.anneal_adaptive(jax.random.key(0), m, 16, target_ess=1.5)
  state = persistent.zero_state(jax.random.key(0), m, 8)
  with pytest.raises(ValueError, match="do not match"):
    pa.step(jax.random.key(0), state, rbm.init_rbm(5, 4))
  with pytest.raises(ValueError, match="unknown resampling"):
    pa.step(jax.random.key(0), state, m, resampling_scheme="magic")
  assert resampling.get("residual") is resampling.residual
