"""Every kind of prior honours the contract of ``priors.base.Prior`` the same way: one chain layout
z [S, n], a normalised log-probability (by float64 enumeration of the 2^n states), moments whose
structure the sampler diagnostic can pool, the training log Z's value and gradient, the sweep's
colouring a partition of the units, and exact draws at β = 0 and for the factorial prior."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from dvae_jax import priors
from dvae_jax.graphs import machine

N = 6
STATES = np.array(list(itertools.product([0.0, 1.0], repeat=N)))


def make(kind, seed=0):
  rng = np.random.default_rng(seed)
  if kind == "rbm":
    return priors.RBM(
      *(jnp.asarray(rng.normal(0, 1, s), jnp.float32) for s in [(3,), (3,), (3, 3)])
    )
  if kind == "factorial":
    return priors.FactorialBernoulli(jnp.asarray(rng.normal(0, 1, N), jnp.float32))
  g = machine.Graph.from_edges(N, [(0, 1), (1, 2), (0, 2), (2, 3), (3, 4), (4, 5), (1, 5)])
  return priors.BoltzmannMachine(
    jnp.asarray(rng.normal(0, 1, N), jnp.float32),
    jnp.asarray(rng.normal(0, 1, g.num_edges), jnp.float32),
    g,
  )


KINDS = ("rbm", "factorial", "graph")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_follows_the_contract(kind):
  m = make(kind)
  assert isinstance(m, priors.Prior)
  assert m.num_units == N and m.dtype == jnp.float32
  assert m.needs_sampler == (kind != "factorial")
  m.check()
  z = jnp.asarray(STATES, jnp.float32)
  neg_e = -np.asarray(m.energy(z), np.float64)
  log_z = logsumexp(neg_e)
  np.testing.assert_allclose(m.exact_log_partition(), log_z, rtol=1e-5)
  lp = m.log_prob(z, jnp.float32(log_z))
  np.testing.assert_allclose(np.exp(np.asarray(lp, np.float64)).sum(), 1.0, rtol=1e-5)
  # The colouring partitions the units.
  units = np.sort(np.concatenate(m.colour_classes()))
  np.testing.assert_array_equal(units, np.arange(N))
  # One chain layout; sample moments have the structure of the exact ones (∇ log Z).
  chains = m.init_chains(jax.random.key(0), 10)
  chex.assert_shape(chains, (10, N))
  out = m.run(jax.random.key(1), chains, 3, 0.5)
  chex.assert_shape(out, (10, N))
  out, e = m.run_with_energy(jax.random.key(1), chains, 2)
  np.testing.assert_allclose(e, m.energy(out), rtol=1e-5, atol=1e-5)
  exact = m.exact_moments()
  sampled = m.sample_moments(out)
  assert type(sampled) is type(exact)
  chex.assert_trees_all_equal_shapes(sampled, exact)
  # The training log Z: value log_z, gradient the samples' mean statistics; analytic (and
  # independent of the samples) without a sampler.
  train_log_z = m.training_log_partition(out, jnp.float32(2.5))
  if m.needs_sampler:
    assert float(train_log_z) == 2.5
    grad = jax.grad(lambda p: p.training_log_partition(out, jnp.float32(2.5)))(m)
    want = jax.grad(lambda p: jnp.mean(-p.energy(out)))(m)
    chex.assert_trees_all_close(grad, want, rtol=1e-6)
  else:
    np.testing.assert_allclose(train_log_z, log_z, rtol=1e-5)
  # Exactly the RBM has the sides that Rao-Blackwellisation needs; 'none' passes through.
  assert m.rao_blackwellize(out, "none").shape == out.shape
  if kind != "rbm":
    with pytest.raises(ValueError, match="needs an RBM prior"):
      m.rao_blackwellize(out, "z2")
  # The graph form has the same law (dimod export).
  np.testing.assert_allclose(m.graph_machine().exact_log_partition(), log_z, rtol=1e-5)
  with pytest.raises(ValueError, match="trailing dimension"):
    m.energy(z[:, :4])


@pytest.mark.parametrize("kind", KINDS)
def test_beta_zero_sweeps_and_init_are_uniform(kind):
  """At β = 0 every sweep draws uniform states: the means of 20,000 chains are 1/2 within 5 sd."""
  m = make(kind, seed=1)
  num = 20_000
  chains = m.init_chains(jax.random.key(2), num)
  after = m.run(jax.random.key(3), chains, 2, 0.0)
  for z in (chains, after):
    assert np.max(np.abs(np.asarray(z.mean(0)) - 0.5)) < 5 * 0.5 / np.sqrt(num)


def test_factorial_sweep_is_an_exact_draw():
  """One sweep of the factorial prior draws its law exactly: the means of 20,000 chains are σ(l)
  within 5 binomial standard errors."""
  m = make("factorial", seed=2)
  num = 20_000
  z = m.run(jax.random.key(4), m.init_chains(jax.random.key(5), num), 1)
  p = np.asarray(jax.nn.sigmoid(m.logits), np.float64)
  assert np.all(np.abs(np.asarray(z.mean(0)) - p) < 5 * np.sqrt(p * (1 - p) / num))
