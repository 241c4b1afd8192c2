"""Tests of dvae_jax.rbm against float64 NumPy brute force (math.md §2)."""

import math

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st
from scipy.special import logsumexp

from dvae_jax.priors import rbm


def random_rbm(seed, n1, n2, w_std, b_std=0.5):
  rng = np.random.default_rng(seed)
  return rbm.RBM(
    jnp.asarray(rng.normal(0.0, b_std, n1), jnp.float32),
    jnp.asarray(rng.normal(0.0, b_std, n2), jnp.float32),
    jnp.asarray(rng.normal(0.0, w_std, (n1, n2)), jnp.float32),
  )


def states(n):
  return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float64)


def np_params(m):
  return [np.asarray(x, np.float64) for x in m]


def surrogate(m, z1, z2, log_z):
  """The training log Z of samples given as their sides: RBM.training_log_partition of [z1, z2]."""
  return m.training_log_partition(jnp.concatenate([z1, z2], -1), log_z)


def np_energy(m, z1, z2):
  b1, b2, w = np_params(m)
  return -(z1 @ b1) - (z2 @ b2) - np.einsum("...i,ij,...j->...", z1, w, z2)


def np_log_z_full(m):
  """Over all 2^(n1+n2) joint states, straight from the energy."""
  n1, n2 = m.w.shape
  z1, z2 = states(n1), states(n2)
  e = np_energy(m, z1[:, None, :], z2[None, :, :])
  return float(logsumexp(-e))


def np_log_z_marginal(m):
  """Over the 2^n states of the smaller side, the other side summed out analytically."""
  b1, b2, w = np_params(m)
  if len(b1) > len(b2):
    b1, b2, w = b2, b1, w.T
  z = states(len(b1))
  return float(logsumexp(z @ b1 + np.logaddexp(0.0, b2 + z @ w).sum(1)))


def np_moments_full(m):
  n1, n2 = m.w.shape
  z1, z2 = states(n1), states(n2)
  log_p = -np_energy(m, z1[:, None, :], z2[None, :, :])
  p = np.exp(log_p - logsumexp(log_p))  # [2^n1, 2^n2]
  return p.sum(1) @ z1, p.sum(0) @ z2, z1.T @ p @ z2


COUPLINGS = [0.3, 1.0, 2.5]  # weak, medium, strong (Gibbs mixes badly at ≥ 1)


def test_init_rbm_is_uniform():
  m = rbm.init_rbm(3, 5)
  chex.assert_shape(m.b1, (3,))
  chex.assert_shape(m.b2, (5,))
  chex.assert_shape(m.w, (3, 5))
  assert m.w.dtype == jnp.float32
  np.testing.assert_allclose(rbm.exact_log_partition(m), 8 * math.log(2.0), rtol=1e-6)
  assert rbm.uniform_log_partition(3, 5) == pytest.approx(8 * math.log(2.0))


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 1),
  # Two fixed shapes (the one-unit edge case and a rectangular one): each new shape compiles every
  # op again, which dominated the run time; the values vary with the seed.
  shape=st.sampled_from([(1, 1, 1), (3, 5, 4)]),
)
def test_energy_matches_numpy_and_broadcasts(seed, shape):
  n1, n2, batch = shape
  m = random_rbm(seed, n1, n2, 1.0)
  rng = np.random.default_rng(seed)
  z1 = rng.integers(0, 2, (batch, 1, n1)).astype(np.float32)
  z2 = rng.integers(0, 2, (3, n2)).astype(np.float32)  # broadcasts to [batch, 3]
  e = rbm.energy(m, jnp.asarray(z1), jnp.asarray(z2))
  chex.assert_shape(e, (batch, 3))
  np.testing.assert_allclose(e, np_energy(m, z1, z2), rtol=1e-5, atol=1e-5)


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 1),
  z1=hnp.arrays(np.float32, (4,), elements=st.sampled_from([0.0, 1.0])),
)
def test_free_energy_sums_out_z2(seed, z1):
  m = random_rbm(seed, 4, 5, 1.5)
  z2 = states(5)
  expected = -logsumexp(-np_energy(m, z1.astype(np.float64), z2))
  np.testing.assert_allclose(rbm.free_energy(m, jnp.asarray(z1)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w_std", COUPLINGS)
@pytest.mark.parametrize("n1,n2", [(1, 1), (4, 6), (7, 3), (6, 6)])
def test_exact_log_partition_matches_joint_brute_force(n1, n2, w_std):
  m = random_rbm(n1 * 10 + n2, n1, n2, w_std)
  np.testing.assert_allclose(rbm.exact_log_partition(m), np_log_z_full(m), rtol=2e-6)


@pytest.mark.parametrize("w_std", COUPLINGS)
@pytest.mark.parametrize("n1,n2", [(14, 14), (16, 10), (9, 18)])
def test_exact_log_partition_matches_smaller_side_enumeration(n1, n2, w_std):
  m = random_rbm(7, n1, n2, w_std)
  # float32 logsumexp over up to 2^16 terms: relative error a few ulp of log Z.
  np.testing.assert_allclose(rbm.exact_log_partition(m), np_log_z_marginal(m), rtol=2e-6)


def test_exact_log_partition_float64_and_chunking():
  m32 = random_rbm(3, 12, 15, 1.0)
  ref = np_log_z_marginal(m32)
  with jax.enable_x64(True):
    m64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), m32)
    for chunk_bits in (3, 7, 12, 20):  # many chunks, one partial plan, a single chunk
      np.testing.assert_allclose(rbm.exact_log_partition(m64, chunk_bits), ref, rtol=1e-13)
    got = rbm.exact_moments(m64, chunk_bits=5)
    assert got.z1.dtype == jnp.float64


@pytest.mark.parametrize("w_std", COUPLINGS)
@pytest.mark.parametrize("n1,n2", [(3, 5), (6, 4)])
def test_exact_moments_match_joint_brute_force(n1, n2, w_std):
  m = random_rbm(11, n1, n2, w_std)
  got = rbm.exact_moments(m, chunk_bits=2)
  chex.assert_shape((got.z1, got.z2, got.z1z2), ((n1,), (n2,), (n1, n2)))
  for a, b in zip(got, np_moments_full(m), strict=True):
    np.testing.assert_allclose(a, b, atol=2e-6)


def test_exact_moments_are_the_gradient_of_log_z():
  m = random_rbm(5, 8, 10, 1.0)
  grad = jax.grad(rbm.exact_log_partition)(m)
  got = rbm.exact_moments(m)
  for a, b in zip(got, grad, strict=True):
    np.testing.assert_allclose(a, b, atol=2e-6)


def test_log_prob_normalises():
  m = random_rbm(2, 4, 3, 1.5)
  log_z = rbm.exact_log_partition(m)
  z1, z2 = states(4)[:, None, :], states(3)[None, :, :]
  lp = rbm.log_prob(m, jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32), log_z)
  chex.assert_shape(lp, (16, 8))
  np.testing.assert_allclose(jnp.sum(jnp.exp(lp)), 1.0, rtol=1e-5)


def test_transpose_swaps_sides():
  m = random_rbm(4, 3, 5, 1.0)
  z1 = jnp.asarray(states(3)[:, None, :], jnp.float32)
  z2 = jnp.asarray(states(5)[None, :, :], jnp.float32)
  np.testing.assert_allclose(rbm.energy(rbm.transpose(m), z2, z1), rbm.energy(m, z1, z2), atol=1e-5)


def test_surrogate_value_and_exact_sample_gradient():
  m = random_rbm(8, 5, 7, 1.0)
  rng = np.random.default_rng(0)
  z1 = jnp.asarray(rng.integers(0, 2, (50, 5)), jnp.float32)
  z2 = jnp.asarray(rng.integers(0, 2, (50, 7)), jnp.float32)
  log_z = jnp.float32(3.25)
  value, grad = jax.value_and_grad(surrogate)(m, z1, z2, log_z)
  assert float(value) == pytest.approx(3.25, abs=1e-5)
  # ∂(−E)/∂θ = (z1, z2, z1 z2ᵀ): the gradient is the sample average of the sufficient statistics.
  np.testing.assert_allclose(grad.b1, z1.mean(0), atol=1e-6)
  np.testing.assert_allclose(grad.b2, z2.mean(0), atol=1e-6)
  np.testing.assert_allclose(grad.w, z1.T @ z2 / 50, atol=1e-6)
  # No gradient leaks into log_z or the samples.
  g_logz = jax.grad(surrogate, argnums=(1, 2, 3))(m, z1, z2, log_z)
  for g in g_logz:
    np.testing.assert_array_equal(g, 0.0)


def exact_samples(key, m, num):
  """Exact samples of p by enumeration: z1 from its marginal, then z2 given z1 (no MCMC)."""
  b1, b2, w = np_params(m)
  z = states(len(b1))
  log_p = z @ b1 + np.logaddexp(0.0, b2 + z @ w).sum(1)
  k1, k2 = jax.random.split(key)
  idx = jax.random.categorical(k1, jnp.asarray(log_p, jnp.float32), shape=(num,))
  z1 = jnp.asarray(z, jnp.float32)[idx]
  z2 = jax.random.bernoulli(k2, jax.nn.sigmoid(m.b2 + z1 @ m.w)).astype(jnp.float32)
  return z1, z2


def test_surrogate_gradient_is_the_gradient_of_log_z_in_expectation():
  m = random_rbm(9, 6, 5, 1.5)
  num = 20000
  z1, z2 = exact_samples(jax.random.key(0), m, num)
  grad = jax.grad(surrogate)(m, z1, z2, jnp.float32(0.0))
  exact = jax.grad(rbm.exact_log_partition)(m)
  # Each gradient entry is the mean of num independent Bernoulli variables with mean p = the exact
  # entry, so its standard error is sqrt(p(1-p)/num); 5 stderr over 41 entries has a false-alarm
  # rate below 1e-4.
  for g, e in zip(grad, exact, strict=True):
    e = np.asarray(e)
    se = np.sqrt(e * (1 - e) / num)
    assert np.max(np.abs(np.asarray(g) - e) / se) < 5.0


def gradient_contributions(m, mode, z1, z2):
  """[N, n1 + n2 + n1·n2] each sample's contribution to the surrogate's gradient under `mode`
  (for 'symmetric' the mean of its two rows), through jax.grad of the surrogate."""

  def one(a, b):
    za, zb = rbm.rao_blackwellize(m, a[None], b[None], mode)
    g = jax.grad(surrogate)(m, za, zb, jnp.float32(0.0))
    return jnp.concatenate([g.b1, g.b2, g.w.reshape(-1)])

  return np.asarray(jax.vmap(one)(z1, z2), np.float64)


def exact_gradient_moments(m, mode):
  """Exact mean [d] and per-component variance [d] of one sample's gradient contribution, by
  enumerating the joint states (float64 weights)."""
  n1, n2 = m.n1, m.n2
  joint = states(n1 + n2)
  z1, z2 = jnp.asarray(joint[:, :n1], jnp.float32), jnp.asarray(joint[:, n1:], jnp.float32)
  log_p = -np.asarray(rbm.energy(m, z1, z2), np.float64)
  p = np.exp(log_p - logsumexp(log_p))
  f = gradient_contributions(m, mode, z1, z2)
  mean = p @ f
  return mean, p @ (f - mean) ** 2


@pytest.mark.parametrize("mode", ["z2", "symmetric"])
@pytest.mark.parametrize("w_std", [0.5, 1.5])
def test_rao_blackwellised_gradient_is_unbiased_with_lower_variance(mode, w_std):
  """Against exact enumeration of a 6×7 RBM: the estimator's expectation is ∇ log Z (exactly, and
  from 20,000 exact samples within 5 standard errors), and each component's variance is at most the
  plain estimator's (Rao-Blackwell), strictly lower in total."""
  m = random_rbm(11, 6, 7, w_std)
  exact = np.concatenate([np.asarray(x).reshape(-1) for x in jax.grad(rbm.exact_log_partition)(m)])
  mean, var = exact_gradient_moments(m, mode)
  plain_mean, plain_var = exact_gradient_moments(m, "none")
  np.testing.assert_allclose(mean, exact, atol=2e-5)
  np.testing.assert_allclose(plain_mean, exact, atol=2e-5)
  assert np.all(var <= plain_var + 1e-6)
  assert var.sum() < 0.9 * plain_var.sum(), (var.sum(), plain_var.sum())

  num = 20000
  z1, z2 = exact_samples(jax.random.key(1), m, num)
  za, zb = rbm.rao_blackwellize(m, z1, z2, mode)
  g = jax.grad(surrogate)(m, za, zb, jnp.float32(0.0))
  g = np.concatenate([np.asarray(x).reshape(-1) for x in g])
  se = np.sqrt(np.maximum(var, 1e-12) / num)
  # 5 se over 55 components: false-alarm rate below 1e-4 for normal errors.
  assert np.max(np.abs(g - exact) / se) < 5.0
  # The per-sample variance seen in the samples is the enumerated one (to 10%: the relative sd
  # of a variance estimate from 20,000 samples is ≲ 2% per component, pooled here).
  sampled_var = np.var(gradient_contributions(m, mode, z1, z2), axis=0)
  np.testing.assert_allclose(sampled_var.sum(), var.sum(), rtol=0.1)


def test_rao_blackwellize_shapes_and_errors():
  m = random_rbm(12, 3, 4, 1.0)
  z1, z2 = jnp.ones((5, 3)), jnp.zeros((5, 4))
  assert rbm.rao_blackwellize(m, z1, z2, "none") == (z1, z2)
  a, b = rbm.rao_blackwellize(m, z1, z2, "z2")
  np.testing.assert_array_equal(a, z1)
  np.testing.assert_allclose(b, jax.nn.sigmoid(m.b2 + z1 @ m.w)[:5])
  a, b = rbm.rao_blackwellize(m, z1, z2, "symmetric")
  chex.assert_shape((a, b), ((10, 3), (10, 4)))
  np.testing.assert_allclose(a[5:], jax.nn.sigmoid(m.b1 + z2 @ m.w.T))
  with pytest.raises(ValueError, match="unknown Rao-Blackwell mode"):
    rbm.rao_blackwellize(m, z1, z2, "z1")


def test_bad_shapes_raise():
  m = rbm.init_rbm(3, 4)
  with pytest.raises(ValueError, match="n1=3"):
    rbm.energy(m, jnp.zeros((2, 4)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="n2=4"):
    rbm.energy(m, jnp.zeros((2, 3)), jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="does not match"):
    rbm.exact_log_partition(rbm.RBM(jnp.zeros(3), jnp.zeros(4), jnp.zeros((4, 3))))
  with pytest.raises(ValueError, match="min\\(n1, n2\\)"):
    rbm.exact_log_partition(rbm.init_rbm(31, 40))
  with pytest.raises(ValueError, match="n1 >= 1"):
    rbm.init_rbm(0, 3)
  with pytest.raises(ValueError, match="trailing dimension of 7"):
    m.training_log_partition(jnp.zeros((2, 6)), 0.0)
  with pytest.raises(ValueError, match="expected samples z \\[S, n\\]"):
    m.training_log_partition(jnp.zeros((7,)), 0.0)


@pytest.mark.slow
def test_exact_log_partition_at_24_units_fits_and_matches_numpy():
  """2^24 states of the smaller side, in chunks; NumPy float64 reference chunked the same way."""
  m = random_rbm(13, 24, 30, 0.3)
  b1, b2, w = np_params(m)
  chunk = 2**18
  parts = []
  for c in range(2**24 // chunk):
    idx = np.arange(c * chunk, (c + 1) * chunk)
    z = ((idx[:, None] >> np.arange(24)) & 1).astype(np.float64)
    parts.append(logsumexp(z @ b1 + np.logaddexp(0.0, b2 + z @ w).sum(1)))
  np.testing.assert_allclose(rbm.exact_log_partition(m), logsumexp(parts), rtol=2e-6)
