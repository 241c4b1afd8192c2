"""Tests of dvae_jax.samplers.external: a prior sampler whose states come from a host function."""

import chex
import graph_reference as gref
import jax
import numpy as np
import pytest
import rbm_reference as ref

from dvae_jax.priors import rbm
from dvae_jax.samplers import external, persistent

NUM = 2000


def exact_draw(seed: int, m) -> np.ndarray:
  """[4 S, n] exact samples of m by enumeration, in NumPy only (it runs inside a host callback);
  more than S rows, to test that the first S are kept."""
  if isinstance(m, rbm.RBM):
    b1, b2, w = (np.asarray(x, np.float64) for x in m)
    n1 = len(b1)
    z = ref.all_states(n1 + len(b2))
    log_p = z[:, :n1] @ b1 + z[:, n1:] @ b2 + np.einsum("si,ij,sj->s", z[:, :n1], w, z[:, n1:])
  else:
    z, log_p = gref._log_p(m)
  p = np.exp(log_p - log_p.max())
  rng = np.random.default_rng(seed)
  return z[rng.choice(len(z), size=4 * NUM, p=p / p.sum())].astype(np.uint8)


def test_exact_draws_track_log_z_along_a_path_and_hold_exact_samples():
  n, steps = 6, 40
  seq, exact = ref.parameter_path(20, n, steps)
  sampler = external.prior_sampler(NUM, exact_draw)
  state = sampler.init(jax.random.key(0), rbm.init_rbm(n, n))
  np.testing.assert_allclose(state.log_z, 12 * np.log(2.0), rtol=1e-7)
  step = jax.jit(sampler.step)
  errors, stderrs = [], []
  for t in range(steps):
    m = rbm.RBM(*(x[t] for x in seq))
    state, info = step(jax.random.key(t + 1), state, m)
    errors.append(float(info.log_z) - exact[t])
    stderrs.append(float(info.log_z_stderr))
  # Fresh exact samples of the previous parameters, reweighted along a path fixed in advance: each
  # increment is an importance-sampling estimate with only its own (reported) variance.
  errors, stderrs = np.array(errors), np.array(stderrs)
  assert np.all(np.abs(errors) < 4.0 * stderrs + 1e-3), np.max(np.abs(errors) / stderrs)
  m = rbm.RBM(*(x[-1] for x in seq))
  z1, z2 = state.z[:, : m.n1], state.z[:, m.n1 :]
  est = [np.asarray(x, np.float64) for x in (z1.mean(0), z2.mean(0))]
  est.append(np.asarray(z1.T @ z2, np.float64) / NUM)
  truth = ref.moments(m)
  assert ref.max_abs_z(est, truth, [ref.binomial_stderr(p, NUM) for p in truth]) < 5.0


def test_graph_machine_states_and_the_seed_comes_from_the_key():
  m = gref.random_machine(gref.odd_cycles_12(), 3, w_std=1.0)
  sampler = external.prior_sampler(NUM, exact_draw)
  state = persistent.zero_state(jax.random.key(0), m, NUM)
  step = jax.jit(sampler.step)
  new, info = step(jax.random.key(1), state, m)
  chex.assert_shape((new.z, info.log_z), ((NUM, 12), ()))
  truth = gref.moments(m)
  z = np.asarray(new.z, np.float64)
  e = m.graph.edges
  est = [z.mean(0), (z[:, e[:, 0]] * z[:, e[:, 1]]).mean(0)]
  assert ref.max_abs_z(est, truth, [ref.binomial_stderr(p, NUM) for p in truth]) < 5.0
  again, _ = step(jax.random.key(1), state, m)
  np.testing.assert_array_equal(again.z, new.z)  # same key, same seed, same states
  other, _ = step(jax.random.key(2), state, m)
  assert np.any(np.asarray(other.z) != np.asarray(new.z))


@pytest.mark.parametrize("kind", ["rbm", "graph"])
def test_draw_gets_numpy_leaves_and_an_int_seed_never_jax_arrays(kind):
  # JAX >= 0.10 hands a callback jax.Arrays; a NumPy call on one may dispatch JAX work inside the
  # callback, which deadlocks a runner that has enqueued many steps (experiments: an annealing run
  # hung). The draw must see the plain NumPy machine its contract promises.
  m = (
    ref.random_rbm(2, 3, 4, 1.0) if kind == "rbm" else gref.random_machine(gref.odd_cycles_12(), 3)
  )
  seen = []

  def draw(seed, machine):
    seen.append((type(seed), [type(leaf) for leaf in jax.tree.leaves(machine)]))
    return exact_draw(seed, machine)

  sampler = external.prior_sampler(8, draw)
  state = persistent.zero_state(jax.random.key(0), m, 8)
  jax.block_until_ready(jax.jit(sampler.step)(jax.random.key(1), state, m))
  ((seed_type, leaf_types),) = seen
  assert seed_type is int
  assert leaf_types and all(t is np.ndarray for t in leaf_types), leaf_types


def test_bad_draws_and_arguments_are_refused_with_the_reason():
  m = ref.random_rbm(1, 3, 4, 1.0)
  state = persistent.zero_state(jax.random.key(0), m, 8)

  def wrong_width(seed, m):
    return np.zeros((8, 6), np.uint8)

  def not_binary(seed, m):
    return np.full((8, 7), 2, np.uint8)

  with pytest.raises(Exception, match=r"returned states of shape \(8, 6\); need \[>= 8, 7\]"):
    jax.block_until_ready(external.step(jax.random.key(1), state, m, draw=wrong_width))
  with pytest.raises(Exception, match="values other than 0 and 1"):
    jax.block_until_ready(external.step(jax.random.key(1), state, m, draw=not_binary))
  with pytest.raises(ValueError, match="num_samples must be >= 1"):
    external.prior_sampler(0, exact_draw)
  with pytest.raises(TypeError, match="draw must be a function"):
    external.prior_sampler(8, "simulated_annealing")
  with pytest.raises(ValueError, match="does not match"):
    external.step(jax.random.key(1), state, rbm.init_rbm(4, 4), draw=exact_draw)
