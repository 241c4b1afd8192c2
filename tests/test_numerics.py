"""Tests of dvae_jax/numerics.py against float64 NumPy/SciPy references."""

import decimal
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from dvae_jax import numerics


def test_log_mean_exp_matches_float64_and_is_shift_stable():
  rng = np.random.default_rng(0)
  log_w = rng.normal(3.0, 2.0, (7, 40))
  for axis in (0, 1, -1):
    want = logsumexp(log_w, axis=axis) - math.log(log_w.shape[axis])
    got = numerics.log_mean_exp(jnp.asarray(log_w, jnp.float32), axis=axis)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
  # A shift of 1e4 (e^{1e4} overflows any float) shifts the result exactly.
  shifted = numerics.log_mean_exp(jnp.asarray(log_w + 1e4, jnp.float32), axis=1)
  np.testing.assert_allclose(shifted - 1e4, logsumexp(log_w, 1) - math.log(40), atol=2e-3)


def test_log_mean_exp_stderr_matches_numpy_delta_method():
  rng = np.random.default_rng(1)
  log_w = rng.normal(0.0, 1.0, (3, 500))
  w = np.exp(log_w)
  got_mean, got_se = numerics.log_mean_exp_stderr(jnp.asarray(log_w, jnp.float32))
  np.testing.assert_allclose(got_mean, np.log(w.mean(1)), rtol=1e-5)
  np.testing.assert_allclose(got_se, w.std(1, ddof=1) / np.sqrt(500) / w.mean(1), rtol=1e-4)
  # Along axis 0, and under a shift that overflows e^{log w}.
  mean0, se0 = numerics.log_mean_exp_stderr(jnp.asarray(log_w.T + 500.0, jnp.float32), axis=0)
  np.testing.assert_allclose(mean0 - 500.0, np.log(w.mean(1)), atol=1e-4)
  np.testing.assert_allclose(se0, got_se, rtol=1e-4)


def test_log_mean_exp_stderr_of_one_sample_is_nan():
  mean, se = numerics.log_mean_exp_stderr(jnp.array([[2.0], [3.0]]))
  np.testing.assert_allclose(mean, [2.0, 3.0])
  assert np.all(np.isnan(np.asarray(se)))


def log1mexp_reference(t):
  """log(1 − e^t) with 50 significant digits (Python's decimal module), as float64."""
  with decimal.localcontext() as ctx:
    ctx.prec = 50
    return np.array([float((1 - decimal.Decimal(float(v)).exp()).ln()) for v in t])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_log1mexp_matches_float64_on_both_sides_of_log2(dtype):
  t = -np.concatenate([np.logspace(-30, -1, 40), np.linspace(0.1, 5.0, 40), [math.log(2.0), 50.0]])
  with jax.enable_x64(dtype == jnp.float64):
    got = np.asarray(numerics.log1mexp(jnp.asarray(t, dtype)), np.float64)
  t_in = t.astype(np.float32).astype(np.float64) if dtype == jnp.float32 else t
  want = log1mexp_reference(t_in)
  rtol = 1e-6 if dtype == jnp.float32 else 1e-14
  np.testing.assert_allclose(got, want, rtol=rtol, atol=0)


def test_log1mexp_clamps_nonnegative_input_and_has_finite_gradients():
  values = numerics.log1mexp(jnp.array([0.0, 1.0, -0.0]))
  assert np.all(np.isfinite(np.asarray(values)))
  assert float(values[0]) < -80  # log(1 − e^{−tiny}) ≈ log(tiny)
  t = jnp.array([-1e-6, -0.5, -math.log(2.0), -1.0, -30.0, -100.0])
  grads = jax.vmap(jax.grad(numerics.log1mexp))(t)
  # d/dt log(1 − e^t) = −e^t/(1 − e^t) = −1/expm1(−t).
  want = -1.0 / np.expm1(-np.asarray(t, np.float64))
  np.testing.assert_allclose(grads, want, rtol=1e-5, atol=1e-37)  # e^{-100} is subnormal


# Moved from tests/samplers/test_ais.py with the functions (issue 12).
def test_log_mean_exp_stderr_of_one_axis_matches_numpy():
  rng = np.random.default_rng(0)
  log_w = rng.normal(3.0, 1.0, 500)
  w = np.exp(log_w)
  got_mean, got_se = numerics.log_mean_exp_stderr(jnp.asarray(log_w, jnp.float32))
  np.testing.assert_allclose(got_mean, np.log(w.mean()), rtol=1e-5)
  np.testing.assert_allclose(got_se, w.std(ddof=1) / np.sqrt(500) / w.mean(), rtol=1e-4)


def test_kahan_add_beats_naive_float32():
  # 20000 increments of 0.001 onto 100: float32 spacing at 100 is 7.6e-6, so each naive add
  # rounds by up to 3.8e-6.
  def body(carry, x):
    naive, total, comp = carry
    total, comp = numerics.kahan_add(total, comp, x)
    return (naive + x, total, comp), None

  xs = jnp.full((20000,), 0.001, jnp.float32)
  start = jnp.float32(100.0)
  (naive, total, _), _ = jax.lax.scan(body, (start, start, jnp.float32(0.0)), xs)
  truth = 100.0 + 20000 * float(np.float32(0.001))
  assert abs(float(total) - truth) < 1e-5
  assert abs(float(naive) - truth) > 10 * abs(float(total) - truth)
