"""Tests of dvae_jax.samplers.population_annealing: log Z, its error bars, samples, the kernels."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rbm_reference as ref
from scipy import stats

from dvae_jax.priors import rbm
from dvae_jax.samplers import pa_log_partition, resampling, tempering
from dvae_jax.samplers import population_annealing as pa

COUPLINGS = [0.3, 1.0, 2.5]  # weak, medium, strong (plain Gibbs mixes badly at >= 1)


@pytest.fixture(scope="module", params=COUPLINGS)
def machine(request):
  m = ref.random_rbm(10, 14, 14, request.param)
  return request.param, m, ref.log_z(m)


@pytest.mark.parametrize("schedule", ["linear", "geometric"])
def test_pa_fixed_schedules_match_exact(machine, schedule):
  w_std, m, exact = machine
  res = pa_log_partition(jax.random.key(0), m, schedule=schedule)
  err = float(res.log_z) - exact
  # 4 stderr: with 16 groups the z-score is t-distributed with 15 dof, P(|t| > 4) = 1.2e-3.
  assert abs(err) < 4.0 * float(res.stderr), (err, float(res.stderr))
  if w_std <= 1.0:
    assert abs(err) < 0.05
  assert int(res.num_steps) == 999
  chex.assert_shape(res.log_z_groups, (16,))
  chex.assert_shape(res.z, (1024, 28))


def test_pa_adaptive_schedule(machine):
  w_std, m, exact = machine
  target = 0.999
  res = pa_log_partition(jax.random.key(1), m, schedule="adaptive", target_ess=target)
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
    jax.random.key(0), m, num_replicas=64, num_temperatures=4, schedule="adaptive", num_groups=4
  )
  assert int(res.num_steps) == 3
  # Target unreachable in 3 steps: the budget rule spaces them evenly instead of a final jump.
  np.testing.assert_allclose(res.betas, [0.0, 1 / 3, 2 / 3, 1.0], atol=1e-6)


def test_pa_stderr_is_calibrated():
  """Group z-scores (log Ẑ − log Z)/stderr follow Student's t with G − 1 degrees of freedom."""
  m = ref.random_rbm(11, 10, 10, 1.0)
  exact = ref.log_z(m)
  num_groups = 16
  betas = tempering.linear_schedule(40)
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
  res = pa_log_partition(jax.random.key(2), m, num_replicas=num, num_groups=num_groups)
  grad = jax.grad(lambda m: m.training_log_partition(res.z, res.log_z))(m)
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
  z1, z2 = per_group(res.z[:, : m.n1]), per_group(res.z[:, m.n1 :])
  group_means = [z1.mean(1), z2.mean(1), np.einsum("gsi,gsj->gij", z1, z2) / z1.shape[1]]
  se = [
    np.maximum(g.std(0, ddof=1) / np.sqrt(num_groups), ref.binomial_stderr(p, num))
    for g, p in zip(group_means, exact, strict=True)
  ]
  assert ref.max_abs_z([np.asarray(g) for g in grad], exact, se) < 5.0


def test_errors():
  m = rbm.init_rbm(4, 4)
  with pytest.raises(ValueError, match="multiple of num_groups"):
    pa_log_partition(jax.random.key(0), m, num_replicas=100, num_groups=16)
  with pytest.raises(ValueError, match="unknown schedule"):
    pa_log_partition(jax.random.key(0), m, schedule="cosine")
  with pytest.raises(ValueError, match="beta_min"):
    tempering.geometric_schedule(10, beta_min=0.0)
  with pytest.raises(ValueError, match="target_ess"):
    pa.anneal_adaptive(jax.random.key(0), m, 16, target_ess=1.5)
  with pytest.raises(ValueError, match="unknown resampling"):
    pa_log_partition(jax.random.key(0), m, resampling_scheme="magic")
  assert resampling.get("residual") is resampling.residual
  # (The persistent sampler's checks moved to test_persistent_pa.py.)


def test_anneal_is_a_scan_of_the_public_step():
  """`anneal` = init, then `step` to each β of the schedule (blackjax's smc shape)."""
  m = ref.random_rbm(7, 6, 5, 1.0)
  betas = tempering.linear_schedule(6)
  res = pa.anneal(jax.random.key(3), m, betas, 64, num_groups=4, num_sweeps=2)
  k_init, k_run = jax.random.split(jax.random.key(3))
  state = pa.init(k_init, m, 64, num_groups=4)
  chex.assert_shape((state.energy, state.log_z_ratio), ((64,), (4,)))
  ess = []
  for k, beta in zip(jax.random.split(k_run, 5), betas[1:], strict=True):
    state, info = pa.step(k, state, m, beta, num_sweeps=2)
    ess.append(info.ess)
    assert float(state.beta) == float(beta)
  chex.assert_trees_all_close(pa.result(m, state, 5, betas, jnp.stack(ess)), res, rtol=1e-6)
  np.testing.assert_allclose(state.energy, m.energy(state.z), rtol=1e-5, atol=1e-5)


def test_step_to_the_same_beta_changes_nothing_but_the_samples():
  m = ref.random_rbm(8, 5, 6, 1.0)
  state = pa.init(jax.random.key(0), m, 32, num_groups=2)
  state, _ = pa.step(jax.random.key(1), state, m, jnp.float32(0.5))
  again, info = pa.step(
    jax.random.key(2), state, m, jnp.float32(0.5), resample_fn=resampling.residual
  )
  np.testing.assert_array_equal(info.log_z_increment, 0.0)
  assert float(info.ess) == pytest.approx(1.0)
  np.testing.assert_array_equal(again.log_z_ratio, state.log_z_ratio)


def test_reweight_resample_keeps_replicas_in_their_group():
  log_w = jnp.array([[0.0, -jnp.inf, -jnp.inf], [-jnp.inf, -jnp.inf, 0.0]])
  particles = jnp.arange(6.0)
  inc, ess, out = pa.reweight_resample(jax.random.key(0), log_w, particles, resampling.systematic)
  np.testing.assert_array_equal(out, [0.0, 0.0, 0.0, 5.0, 5.0, 5.0])
  np.testing.assert_allclose(inc, [-np.log(3.0)] * 2, rtol=1e-6)
  np.testing.assert_allclose(ess, 1 / 3, rtol=1e-6)
