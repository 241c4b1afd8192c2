"""Tests of dvae_jax.samplers.diagnostics: the population moment error reads ≈ 1 on exact samples
(against exact and against annealed references) and detects a population that lags its parameters
by one realistic optimiser step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rbm_reference as ref

from dvae_jax.priors import rbm
from dvae_jax.samplers import diagnostics


def _exact_draws(seed, m, sizes):
  """Independent exact sample sets of the given sizes (one enumeration, one categorical draw)."""
  z = ref.exact_samples(jax.random.key(seed), m, sum(sizes))
  bounds = np.cumsum((0,) + tuple(sizes))
  return [z[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def test_exact_population_reads_one_and_the_reference_noise_is_removed():
  """40 replications, population S = 1000, exact references of R = 500 each: the mean of the
  unclipped ratio² is 1 for every group (tolerance: 4 standard errors of that mean, from the
  replications' own spread); without the subtraction it would be 1 + S/(2R) = 2."""
  m = ref.random_rbm(3, 10, 10, 1.0)
  num, num_ref, reps = 1000, 500, 40
  sets = _exact_draws(0, m, [num, num_ref, num_ref] * reps)
  squared, naive = [], []
  for r in range(reps):
    pop, a, b = (m.sample_moments(s) for s in sets[3 * r : 3 * r + 3])
    squared.append([float(x) for x in diagnostics.squared_ratios(pop, num, a, b)])
    mean = [0.5 * (x + y) for x, y in zip(a, b, strict=True)]
    err2 = sum(float(jnp.sum((p - q) ** 2)) for p, q in zip(pop, mean, strict=True))
    noise2 = sum(float(jnp.sum(q * (1 - q))) for q in mean) / num
    naive.append(err2 / noise2)
  squared = np.array(squared)  # [reps, 4]: z1, z2, z1z2, pooled
  mean, se = squared.mean(0), squared.std(0, ddof=1) / np.sqrt(reps)
  assert np.all(np.abs(mean - 1.0) < 4 * se), (mean, se)
  # Power: 4 se of the pooled mean (≈ 0.6) is below the +1 that the references' noise would add.
  assert se[-1] < 0.2, se
  naive_mean, naive_se = np.mean(naive), np.std(naive, ddof=1) / np.sqrt(reps)
  assert abs(naive_mean - (1 + num / (2 * num_ref))) < 4 * naive_se, (naive_mean, naive_se)


def test_exact_population_reads_one_against_fresh_anneals():
  """The full diagnostic (two fresh PA runs, whose replicas are correlated by resampling) on exact
  samples: ratio² averages 1 over 8 replications (tolerance: 4 standard errors of the mean)."""
  m = ref.random_rbm(5, 10, 12, 1.0)
  num, reps = 1000, 8
  sets = _exact_draws(1, m, [num] * reps)
  squared = []
  for r, z in enumerate(sets):
    out = diagnostics.population_moment_error(
      jax.random.key(100 + r), z, m, num_replicas=1024, num_temperatures=300
    )
    assert np.isfinite(float(out.reference_log_z_stderr))
    # The references' log Z agrees with enumeration.
    assert abs(float(out.reference_log_z) - ref.log_z(m)) < 4 * float(out.reference_log_z_stderr)
    assert out.groups._fields == ("z1", "z2", "z1z2")
    squared.append([float(out.total) ** 2, float(out.groups.z1z2) ** 2])
  squared = np.array(squared)
  mean, se = squared.mean(0), squared.std(0, ddof=1) / np.sqrt(reps)
  assert np.all(np.abs(mean - 1.0) < 4 * se + 0.02), (mean, se)


def _adam_first_step(m: rbm.RBM, teacher: rbm.RBM, lr: float) -> rbm.RBM:
  """Adam's first update of maximum likelihood towards `teacher`: −lr · sign(gradient)."""
  model, data = rbm.exact_moments(m), rbm.exact_moments(teacher)
  return rbm.RBM(*(p - lr * jnp.sign(g - d) for p, g, d in zip(m, model, data, strict=True)))


def test_a_population_one_optimiser_step_behind_is_detected():
  """Exact samples of θ_old diagnosed as samples of θ_new = one Adam step later. lr = 0.03 moves
  E[z1] by 1.5× the noise of 1000 samples (the default run's measured one-step lag: 2×).

  By enumeration, with b = E_new − E_old and v the variances of the binary statistics, the
  numerator's expectation is ‖b‖² + Σ v_old / S (the references' own noise cancels against the
  subtracted e²) and the denominator's Σ v_new / S, so E[ratio²] = (‖b‖² + Σ v_old/S) / (Σ v_new/S)
  and E[relative_bias² ‖r̄‖²] = ‖b‖² + Σ (v_old − v_new)/S (to O(1/R) of the references' size R).
  Over 8 independent populations and reference keys the means of ratio² and relative_bias² must
  equal those within 4 standard errors of the mean (from the replications' own spread); the same
  populations diagnosed for θ_old read 1 within 4 of theirs, and the lag sits many of them away."""
  lr = 0.03
  num, reps = 1000, 8
  old = ref.random_rbm(7, 12, 12, 1.0)
  new = _adam_first_step(old, ref.random_rbm(8, 12, 12, 1.0), lr)
  exact_old, exact_new = rbm.exact_moments(old), rbm.exact_moments(new)

  def total(f, moments):
    return sum(float(jnp.sum(f(m))) for m in moments)

  bias2 = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(exact_old, exact_new, strict=True))
  v_old, v_new = (total(lambda p: p * (1 - p), m) / num for m in (exact_old, exact_new))
  norm2 = total(jnp.square, exact_new)
  expected = (bias2 + v_old) / v_new
  expected_bias2 = (bias2 + v_old - v_new) / norm2
  assert bias2 / v_new > 1.5, bias2 / v_new  # the lag is worth detecting: > 1.5 × noise

  lagging, in_step = [], []
  for r, z in enumerate(_exact_draws(2, old, [num] * reps)):
    key = jax.random.key(9 + r)
    out = diagnostics.population_moment_error(key, z, new, 2048, 300)
    lagging.append([float(out.total) ** 2, float(out.relative_bias) ** 2])
    in_step.append(float(diagnostics.population_moment_error(key, z, old, 2048, 300).total) ** 2)
  lagging, in_step = np.array(lagging), np.array(in_step)
  mean, se = lagging.mean(0), lagging.std(0, ddof=1) / np.sqrt(reps)
  np.testing.assert_array_less(np.abs(mean - [expected, expected_bias2]), 4 * se)
  in_mean, in_se = in_step.mean(), in_step.std(ddof=1) / np.sqrt(reps)
  # (+ 0.02: the anneals' own bias, as in test_exact_population_reads_one_against_fresh_anneals.)
  assert abs(in_mean - 1.0) < 4 * in_se + 0.02, (in_mean, in_se)
  # Power: the lag is far outside both bands.
  assert mean[0] - in_mean > 4 * np.hypot(se[0], in_se), (mean, se, in_mean, in_se)


def test_shape_errors_name_the_problem():
  m = rbm.init_rbm(3, 4)
  with pytest.raises(ValueError, match="population z have shape"):
    diagnostics.population_moment_error(jax.random.key(0), jnp.zeros((8, 4)), m, 16, 10)
