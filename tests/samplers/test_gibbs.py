"""Tests of dvae_jax.samplers.gibbs: Bernoulli draws, the exact sweep kernel, stationary moments."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rbm_reference as ref
from scipy import stats
from scipy.special import expit

from dvae_jax.priors import rbm
from dvae_jax.samplers import gibbs


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_random_bits_uniform(impl):
  key = jax.random.key(0, impl=impl)
  bits = np.asarray(jax.jit(gibbs.random_bits, static_argnums=1)(key, (1000, 64)), np.float64)
  u = bits / 2.0**32
  # Kolmogorov–Smirnov on 64000 draws: p < 1e-4 would be a real defect.
  assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-4
  # With a threefry key, columns j and j + 32 are the two output words of one hash: they must not
  # be correlated (r ≈ N(0, 1/32000) under independence; 5 sd = 0.028).
  assert abs(np.corrcoef(u[:, :32].ravel(), u[:, 32:].ravel())[0, 1]) < 0.028
  odd = np.asarray(gibbs.random_bits(key, (3, 7)))  # odd last axis: one word is dropped per row
  assert odd.shape == (3, 7) and len(np.unique(odd)) == 21
  other = np.asarray(gibbs.random_bits(jax.random.key(1, impl=impl), (1000, 64)))
  assert np.mean(other == bits) < 1e-3


def test_bernoulli_logits_frequencies():
  logits = jnp.array([-30.0, -4.0, -1.0, 0.0, 0.5, 3.0, 30.0])
  num = 200_000
  z = gibbs.bernoulli_logits(jax.random.key(3), jnp.broadcast_to(logits, (num, 7)))
  assert z.dtype == jnp.float32
  freq = np.asarray(z.mean(0), np.float64)
  p = expit(np.asarray(logits, np.float64))
  # Binomial stderr sqrt(p(1-p)/num); 5 sd; the 2^-24 resolution adds at most 6e-8.
  se = np.sqrt(p * (1 - p) / num)
  assert np.all(np.abs(freq - p) <= 5 * se + 1e-7), (freq, p)


def exact_sweep_kernel(m, beta):
  """T[(z1), (z1', z2')] = p_β(z2' | z1) p_β(z1' | z2') in float64 for a tiny RBM."""
  b1, b2, w = (np.asarray(x, np.float64) for x in m)
  s1, s2 = ref.all_states(len(b1)), ref.all_states(len(b2))

  def cond(field, z):  # Π_j Bernoulli(z_j; σ(β field_j))
    p = expit(beta * field)
    return np.prod(np.where(z == 1, p, 1 - p), axis=-1)

  p_z2 = cond(b2 + s1 @ w, s2[:, None, :]).T  # [z1, z2']
  p_z1 = cond(b1 + s2 @ w.T, s1[:, None, :]).T  # [z2', z1']
  return np.einsum("ab,bc->acb", p_z2, p_z1)  # [z1, z1', z2']


def state_index(z):
  return (np.asarray(z, np.int64) << np.arange(z.shape[-1])).sum(-1)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
@pytest.mark.parametrize("beta", [1.0, 0.4])
def test_sweep_matches_exact_kernel(beta, impl):
  m = ref.random_rbm(1, 2, 3, 1.5, b_std=1.0)
  kernel = exact_sweep_kernel(m, beta)  # [4, 4, 8]
  np.testing.assert_array_equal(state_index(ref.all_states(3)), np.arange(8))  # same enumeration
  per_start = 20_000
  starts = ref.all_states(2)
  z1 = jnp.asarray(np.repeat(starts, per_start, axis=0), jnp.float32)
  z2 = jnp.zeros((z1.shape[0], 3), jnp.float32)
  out = jax.jit(gibbs.sweep)(jax.random.key(7, impl=impl), gibbs.GibbsState(z1, z2), m, beta)
  chex.assert_shape(out.z1, (4 * per_start, 2))
  chex.assert_shape(out.z2, (4 * per_start, 3))
  i1, i2 = state_index(out.z1), state_index(out.z2)
  for s in range(4):
    sl = slice(s * per_start, (s + 1) * per_start)
    freq = np.zeros((4, 8))
    np.add.at(freq, (i1[sl], i2[sl]), 1.0 / per_start)
    # Multinomial cell frequencies: stderr sqrt(p(1-p)/n); 5 sd over 32 cells per start.
    se = np.sqrt(kernel[s] * (1 - kernel[s]) / per_start) + 1e-9
    assert np.max(np.abs(freq - kernel[s]) / se) < 5.0


def test_beta_zero_is_uniform_and_init_is_uniform():
  m = ref.random_rbm(2, 6, 5, 3.0)
  state = gibbs.init(jax.random.key(0), m, 20_000)
  assert state.z1.dtype == jnp.float32
  # Bernoulli(1/2) means: stderr 0.5/sqrt(20000) = 0.0035; 5 sd.
  for z in (state.z1, state.z2):
    assert np.max(np.abs(np.asarray(z.mean(0)) - 0.5)) < 0.018
  out = gibbs.sweep(jax.random.key(1), state, m, beta=0.0)
  for z in (out.z1, out.z2):
    assert np.max(np.abs(np.asarray(z.mean(0)) - 0.5)) < 0.018


def test_sweep_with_energy_returns_energy():
  m = ref.random_rbm(3, 7, 9, 1.0)
  state = gibbs.init(jax.random.key(0), m, 64)
  (z1, z2), e = gibbs.sweep_with_energy(jax.random.key(1), state, m, 0.7)
  np.testing.assert_allclose(e, rbm.energy(m, z1, z2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w_std", [0.3, 1.0])
def test_run_reaches_exact_moments(w_std):
  """Independent chains after many sweeps are (nearly) exact samples: moments within stderr."""
  m = ref.random_rbm(4, 8, 10, w_std)
  num = 4000
  state = gibbs.init(jax.random.key(0), m, num)
  state = jax.jit(gibbs.run, static_argnums=3)(jax.random.key(1), state, m, 200)
  est = (state.z1.mean(0), state.z2.mean(0), state.z1.T @ state.z2 / num)
  exact = ref.moments(m)
  # One sample per independent chain, each moment the mean of num Bernoulli(p) variables: stderr
  # sqrt(p(1-p)/num) from the exact p. 5 sd over 98 entries: false alarm < 1e-4.
  se = [ref.binomial_stderr(p, num) for p in exact]
  assert ref.max_abs_z([np.asarray(e) for e in est], exact, se) < 5.0


def test_no_retracing_and_zero_sweeps():
  m = ref.random_rbm(5, 4, 4, 1.0)
  state = gibbs.init(jax.random.key(0), m, 8)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def many(key, state, m):
    return gibbs.run(key, state, m, 3)

  for i in range(3):
    state = many(jax.random.key(i), state, m)
  same = gibbs.run(jax.random.key(0), state, m, 0)
  chex.assert_trees_all_equal(same, state)


def test_errors():
  m = rbm.init_rbm(3, 4)
  z1, z2 = jnp.zeros((5, 3)), jnp.zeros((5, 4))
  with pytest.raises(ValueError, match="beta"):
    gibbs.sweep(jax.random.key(0), gibbs.GibbsState(z1, z2), m, beta=-1.0)
  with pytest.raises(ValueError, match="z1 must have shape"):
    gibbs.sweep(jax.random.key(0), gibbs.GibbsState(jnp.zeros((5, 4)), z2), m)
  with pytest.raises(ValueError, match="z2 must have shape"):
    gibbs.sweep(jax.random.key(0), gibbs.GibbsState(z1, jnp.zeros((4, 4))), m)
  with pytest.raises(ValueError, match="num_chains"):
    gibbs.init(jax.random.key(0), m, 0)
  with pytest.raises(ValueError, match="num_sweeps"):
    gibbs.run(jax.random.key(0), gibbs.GibbsState(z1, z2), m, -1)
  with pytest.raises(TypeError, match="state comes before the RBM"):
    gibbs.run(jax.random.key(0), m, gibbs.GibbsState(z1, z2), 1)


def test_run_with_energy_matches_run_and_returns_energy():
  m = ref.random_rbm(3, 7, 9, 1.0)
  state = gibbs.init(jax.random.key(0), m, 64)
  out, e = gibbs.run_with_energy(jax.random.key(1), state, m, 3, 0.7)
  chex.assert_trees_all_equal(out, gibbs.run(jax.random.key(1), state, m, 3, 0.7))
  np.testing.assert_allclose(e, rbm.energy(m, out.z1, out.z2), rtol=1e-5, atol=1e-5)
