"""Tests of dvae_jax.samplers.resampling: unbiasedness, count bounds and the ESS formula."""

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from dvae_jax.samplers import resampling

SCHEMES = ["systematic", "residual", "multinomial"]

# A few fixed lengths: every new shape would recompile, which dominates the run time.
log_weight_arrays = hnp.arrays(
  np.float32, st.sampled_from([1, 5, 40]), elements=st.floats(-8.0, 8.0, width=32)
)


def counts(idx, n):
  return np.bincount(np.asarray(idx), minlength=n)


@hypothesis.settings(deadline=None, max_examples=50)
@hypothesis.given(log_w=log_weight_arrays, shift=st.floats(-50.0, 50.0))
def test_ess_formula(log_w, shift):
  w = np.exp(log_w.astype(np.float64))
  expected = w.sum() ** 2 / (w**2).sum()
  got = jax.jit(resampling.effective_sample_size)(jnp.asarray(log_w + np.float32(shift)))
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  assert 1.0 - 1e-4 <= float(got) <= len(log_w) * (1 + 1e-4)


def test_ess_extremes_and_batching():
  np.testing.assert_allclose(resampling.effective_sample_size(jnp.zeros(7)), 7.0, rtol=1e-6)
  one_hot = jnp.array([0.0, -jnp.inf, -jnp.inf])
  np.testing.assert_allclose(resampling.effective_sample_size(one_hot), 1.0, rtol=1e-6)
  batch = resampling.effective_sample_size(
    jnp.stack([jnp.zeros(4), jnp.array([0.0, -1e9, -1e9, 0])])
  )
  np.testing.assert_allclose(batch, [4.0, 2.0], rtol=1e-6)


@pytest.mark.parametrize("scheme", SCHEMES)
@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(
  log_w=log_weight_arrays, seed=st.integers(0, 2**31 - 1), num=st.sampled_from([1, 8])
)
def test_indices_valid(scheme, log_w, seed, num):
  fn = jax.jit(resampling.get(scheme), static_argnums=2)
  idx = fn(jax.random.key(seed), jnp.asarray(log_w), num)
  chex.assert_shape(idx, (num,))
  assert idx.dtype == jnp.int32
  assert np.all((np.asarray(idx) >= 0) & (np.asarray(idx) < len(log_w)))


@hypothesis.settings(deadline=None, max_examples=50)
@hypothesis.given(log_w=log_weight_arrays, seed=st.integers(0, 2**31 - 1))
def test_systematic_counts_are_floor_or_ceil(log_w, seed):
  n = len(log_w)
  idx = jax.jit(resampling.systematic)(jax.random.key(seed), jnp.asarray(log_w))
  expected = n * np.asarray(jax.nn.softmax(jnp.asarray(log_w)), np.float64)
  c = counts(idx, n)
  # Within one of N·w_i (plus float32 rounding of the cumulative sum).
  assert np.all(c >= np.floor(expected - 1e-3)) and np.all(c <= np.ceil(expected + 1e-3))


@hypothesis.settings(deadline=None, max_examples=50)
@hypothesis.given(log_w=log_weight_arrays, seed=st.integers(0, 2**31 - 1))
def test_residual_keeps_deterministic_copies(log_w, seed):
  n = len(log_w)
  idx = jax.jit(resampling.residual)(jax.random.key(seed), jnp.asarray(log_w))
  expected = n * np.asarray(jax.nn.softmax(jnp.asarray(log_w)), np.float64)
  assert np.all(counts(idx, n) >= np.floor(expected - 1e-3))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_resampling_is_unbiased(scheme):
  """E[count_i] = M·w_i, checked over many independent keys."""
  rng = np.random.default_rng(0)
  n, num, reps = 12, 20, 4000
  log_w = jnp.asarray(rng.normal(0.0, 1.5, n), jnp.float32)
  w = np.asarray(jax.nn.softmax(log_w), np.float64)
  fn = resampling.get(scheme)
  idx = jax.vmap(lambda k: fn(k, log_w, num))(jax.random.split(jax.random.key(1), reps))
  c = np.stack([counts(i, n) for i in np.asarray(idx)])  # [reps, n]
  mean = c.mean(0)
  # The average of `reps` iid counts has stderr std(count)/sqrt(reps); the sample std is a fine
  # estimate with 4000 reps. Counts whose variance is 0 (deterministic) must match exactly up to
  # float rounding. 5 stderr over 12 entries: false alarm < 1e-5.
  se = c.std(0, ddof=1) / np.sqrt(reps)
  z = np.abs(mean - num * w) / np.maximum(se, 1e-12)
  assert np.all((z < 5.0) | (np.abs(mean - num * w) < 1e-4)), (mean, num * w, se)


def test_systematic_has_less_variance_than_multinomial():
  rng = np.random.default_rng(3)
  log_w = jnp.asarray(rng.normal(0.0, 1.0, 50), jnp.float32)
  keys = jax.random.split(jax.random.key(0), 500)
  var = {}
  for scheme in ("systematic", "multinomial"):
    fn = resampling.get(scheme)
    idx = jax.vmap(lambda k, fn=fn: fn(k, log_w))(keys)
    var[scheme] = np.stack([counts(i, 50) for i in np.asarray(idx)]).var(0).sum()
  assert var["systematic"] < 0.5 * var["multinomial"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_zero_weights_never_selected(scheme):
  log_w = jnp.array([-jnp.inf, 0.0, -jnp.inf, 0.0, -jnp.inf])
  idx = resampling.get(scheme)(jax.random.key(0), log_w, 1000)
  assert set(np.unique(np.asarray(idx))) <= {1, 3}


def test_errors():
  with pytest.raises(ValueError, match="unknown resampling scheme"):
    resampling.get("stratified-ish")
  with pytest.raises(ValueError, match="1-D"):
    resampling.systematic(jax.random.key(0), jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="num_samples"):
    resampling.residual(jax.random.key(0), jnp.zeros(3), 0)
