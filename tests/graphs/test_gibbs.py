"""Chromatic block Gibbs on graph machines: stationary moments against exact enumeration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p

from dvae_jax import priors
from dvae_jax.graphs import colouring, machine, topologies
from dvae_jax.graphs import gibbs as graph_gibbs
from dvae_jax.samplers import gibbs as rbm_gibbs


def dwave(name, *args):
  """A D-Wave topology; skips the test without the [dwave] extra."""
  pytest.importorskip("dwave_networkx", reason="the [dwave] extra is not installed")
  return getattr(topologies, name)(*args)


def chimera_cell():
  """Chimera C(1,1,4) built by hand: K_{4,4} (equal to dwave-networkx's, checked below)."""
  return machine.Graph.from_edges(8, [(i, 4 + j) for i in range(4) for j in range(4)])


def odd_cycles_12():
  """12 nodes, a 5-cycle, a triangle and chords: not bipartite, needs 3+ colours, core only."""
  edges = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (5, 6), (6, 7), (7, 5), (8, 9), (9, 10)]
  edges += [(10, 11), (11, 8), (0, 5), (2, 8), (4, 10), (6, 11), (1, 9), (3, 7)]
  return machine.Graph.from_edges(12, edges)


def test_hand_built_chimera_cell_is_dwave_networkx_s():
  g = dwave("chimera", 1, 1, 4)
  assert g.num_colours == 2 and {tuple(e) for e in g.edges} == {
    tuple(e) for e in chimera_cell().edges
  }


def strong_machine(g, seed, w_std=1.5, b_std=0.5):
  rng = np.random.default_rng(seed)
  return priors.BoltzmannMachine(
    jnp.asarray(rng.normal(0, b_std, g.num_nodes), jnp.float32),
    jnp.asarray(rng.normal(0, w_std, g.num_edges), jnp.float32),
    g,
  )


@pytest.mark.parametrize(
  "make_graph, colours",
  [(chimera_cell, 2), (lambda: dwave("zephyr", 1, 1), None), (odd_cycles_12, None)],
  ids=["chimera_1x1x4", "zephyr_1_1", "odd_cycles_12"],
)
@pytest.mark.parametrize("beta, layout", [(1.0, "dense"), (0.5, "sparse")])
def test_stationary_moments_match_enumeration(make_graph, colours, beta, layout):
  """S independent chains after T sweeps: every E[z_i] and E[z_i z_j] within 5 standard errors.

  Strong couplings (|w| ~ 1.5, up to ~5); 200 sweeps from uniform is far past mixing for these
  cells (checked: the 100- and 200-sweep moments agree within noise). With ≤ 12 + 48 statistics a
  5σ band fails by chance with probability < 1e-4. ``layout`` forces the coupling computation
  (these cells are small, so the automatic choice would be the dense block everywhere).
  """
  g = make_graph()
  assert colours is None or g.num_colours == colours
  assert g.num_colours >= 2 and colouring.is_proper(g.edges, g.colours)
  m = strong_machine(g, seed=3)
  with jax.enable_x64(True):
    m64 = priors.BoltzmannMachine(
      jnp.asarray(m.b, jnp.float64) * beta, jnp.asarray(m.w, jnp.float64) * beta, g
    )
    exact = machine.exact_moments(m64)
  num_chains = 20_000
  key_init, key_run = jax.random.split(jax.random.key(7))
  z = graph_gibbs.init(key_init, m, num_chains)
  run = jax.jit(graph_gibbs.run, static_argnums=3, static_argnames="layout")
  z = run(key_run, z, m, 200, beta, layout=layout)
  z = np.asarray(z, np.float64)
  e = g.edges
  for est, ref in ((z.mean(0), exact.unit), ((z[:, e[:, 0]] * z[:, e[:, 1]]).mean(0), exact.edge)):
    ref = np.asarray(ref)
    se = np.sqrt(np.maximum(ref * (1 - ref), 1e-4) / num_chains)
    assert np.all(np.abs(est - ref) < 5 * se), np.max(np.abs(est - ref) / se)


def test_run_is_repeated_sweeps_and_keeps_node_order():
  g = odd_cycles_12()
  m = strong_machine(g, seed=0)
  key = jax.random.key(1)
  z0 = graph_gibbs.init(jax.random.key(2), m, 16)
  z, sweep = z0, jax.jit(graph_gibbs.sweep)
  for k in jax.random.split(key, 3):
    z = sweep(k, z, m)
  np.testing.assert_array_equal(graph_gibbs.run(key, z0, m, 3), z)
  # Sparse sweeps hold the chains as uint8 inside; what comes back has the chains' dtype.
  for layout in ("sparse", "dense"):
    assert graph_gibbs.run(key, z0, m, 1, layout=layout).dtype == z0.dtype == jnp.float32
    assert graph_gibbs.sweep(key, z0, m, layout=layout).dtype == jnp.float32
  # A unit with a huge bias and no effective coupling sits in its own column: order is preserved.
  b = jnp.where(jnp.arange(g.num_nodes) % 3 == 0, 50.0, -50.0)
  ordered = priors.BoltzmannMachine(b, jnp.zeros(g.num_edges), g)
  z = sweep(key, z0, ordered)
  np.testing.assert_array_equal(z, jnp.broadcast_to(b > 0, z.shape).astype(z.dtype))
  np.testing.assert_array_equal(graph_gibbs.run(key, z0, ordered, 0), z0)


def test_run_with_energy_is_run_and_the_final_energy():
  m = strong_machine(odd_cycles_12(), seed=2)
  z0 = graph_gibbs.init(jax.random.key(0), m, 64)
  key = jax.random.key(1)
  z, e = jax.jit(graph_gibbs.run_with_energy, static_argnums=3)(key, z0, m, 4, 0.8)
  np.testing.assert_array_equal(z, graph_gibbs.run(key, z0, m, 4, 0.8))
  # The two sum the same terms in different orders: their float32 rounding is relative to the
  # terms' size Σ|b_i z_i| + Σ|w_e z_i z_j| (the energy of |m|), not to an energy that cancels to
  # ≈ 0.003 (one chain here).
  scale = -machine.energy(m.replace(b=jnp.abs(m.b), w=jnp.abs(m.w)), z)
  np.testing.assert_array_less(jnp.abs(e - machine.energy(m, z)), 1e-6 * scale + 1e-30)


def test_sweep_energy_and_bad_input():
  g = machine.Graph.from_edges(4, [(0, 2), (0, 3), (1, 2), (1, 3)])  # Chimera C(1,1,2)
  m = strong_machine(g, seed=1)
  z0 = graph_gibbs.init(jax.random.key(0), m, 8)
  z, e = graph_gibbs.sweep_with_energy(jax.random.key(1), z0, m)
  np.testing.assert_allclose(e, machine.energy(m, z), rtol=1e-6)
  with pytest.raises(ValueError, match=r"\[num_chains, n=4\]"):
    graph_gibbs.sweep(jax.random.key(0), z0[:, :3], m)
  with pytest.raises(ValueError, match="beta"):
    graph_gibbs.sweep(jax.random.key(0), z0, m, -1.0)
  with pytest.raises(ValueError, match="unknown layout 'csr'"):
    graph_gibbs.sweep(jax.random.key(0), z0, m, layout="csr")
  with pytest.raises(ValueError, match="num_sweeps"):
    graph_gibbs.run(jax.random.key(0), z0, m, -1)


def test_dense_and_sparse_couplings_draw_the_same_states():
  """Weights on a 1/4 grid make both field sums exact, so the same key gives the same states."""
  g = machine.Graph.from_edges(
    30, np.argwhere(np.triu(np.random.default_rng(5).random((30, 30)) < 0.3, 1))
  )
  assert g.num_colours >= 3
  rng = np.random.default_rng(4)
  m = priors.BoltzmannMachine(
    jnp.asarray(rng.integers(-4, 5, g.num_nodes) / 4, jnp.float32),
    jnp.asarray(rng.integers(-8, 9, g.num_edges) / 4, jnp.float32),
    g,
  )
  z0 = graph_gibbs.init(jax.random.key(0), m, 64)
  out = {}
  for layout in ("dense", "sparse"):
    out[layout] = graph_gibbs.run(jax.random.key(1), z0, m, 4, layout=layout)
  np.testing.assert_array_equal(out["dense"], out["sparse"])
  assert 0 < float(jnp.mean(out["dense"])) < 1


@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (7, 13), (64, 1000)])
def test_fused_draw_is_the_rbm_samplers_draw_bit_for_bit(shape):
  """The sweep's draw of logits [n_c, S] (the hash written out in jnp, two fused halves) against
  ``samplers.gibbs.bernoulli_logits`` (JAX's threefry2x32 primitive) of the chains' layout
  [S, n_c]: the same states, odd and even unit counts; the hash's words against the primitive's on
  random counters and keys; other key implementations fall back to ``samplers.gibbs``."""
  logits = 3 * jax.random.normal(jax.random.key(12), shape)
  for seed in (0, 11):
    key = jax.random.key(seed)
    got = jax.jit(graph_gibbs._bernoulli_logits)(key, logits)
    np.testing.assert_array_equal(got, rbm_gibbs.bernoulli_logits(key, logits.T).T)
    assert got.dtype == logits.dtype
  words = jax.random.bits(jax.random.key(13), (4, *shape), jnp.uint32)
  key_words, x0, x1 = words[0, 0, :2], words[1], words[2]
  np.testing.assert_array_equal(
    jnp.stack(graph_gibbs._threefry2x32(key_words, x0, x1)),
    jnp.stack(threefry2x32_p.bind(key_words[0], key_words[1], x0, x1)),
  )
  rbg = jax.random.key(5, impl="rbg")
  np.testing.assert_array_equal(
    graph_gibbs._bernoulli_logits(rbg, logits), rbm_gibbs.bernoulli_logits(rbg, logits.T).T
  )
