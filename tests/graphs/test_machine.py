"""Tests of dvae_jax.graphs.machine against float64 NumPy brute force and against dvae_jax.rbm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from dvae_jax import priors
from dvae_jax.graphs import machine
from dvae_jax.priors import rbm

# A 3-cycle with a pendant and an isolated node: not bipartite, two components, degree 0 node.
TRIANGLE_PLUS = (6, [(0, 1), (1, 2), (0, 2), (2, 3), (3, 4)])


def random_graph(seed, n, p):
  rng = np.random.default_rng(seed)
  i, j = np.triu_indices(n, 1)
  keep = rng.random(len(i)) < p
  return machine.Graph.from_edges(n, np.stack([i[keep], j[keep]], 1))


def random_machine(seed, g, w_std=1.0, b_std=0.5, dtype=jnp.float64):
  rng = np.random.default_rng(seed)
  return priors.BoltzmannMachine(
    jnp.asarray(rng.normal(0, b_std, g.num_nodes), dtype),
    jnp.asarray(rng.normal(0, w_std, g.num_edges), dtype),
    g,
  )


def all_states(n):
  return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float64)


def np_energy(m, z):
  b, w = np.asarray(m.b, np.float64), np.asarray(m.w, np.float64)
  e = m.graph.edges
  return -(z @ b) - (z[:, e[:, 0]] * z[:, e[:, 1]]) @ w


def np_exact(m):
  z = all_states(m.num_nodes)
  neg_e = -np_energy(m, z)
  log_z = logsumexp(neg_e)
  p = np.exp(neg_e - log_z)
  e = m.graph.edges
  return log_z, p @ z, p @ (z[:, e[:, 0]] * z[:, e[:, 1]])


def test_graph_validation():
  with pytest.raises(ValueError, match="self-loops"):
    machine.Graph(3, [(1, 1)])
  with pytest.raises(ValueError, match="duplicate"):
    machine.Graph.from_edges(3, [(0, 1), (1, 0)])
  with pytest.raises(ValueError, match="endpoints"):
    machine.Graph(3, [(0, 3)])
  with pytest.raises(ValueError, match="proper colouring"):
    machine.Graph(3, [(0, 1)], colours=[0, 0, 1])
  with pytest.raises(ValueError, match="sorted"):
    machine.Graph(3, [(1, 2), (0, 1)])
  g = machine.Graph.from_edges(*TRIANGLE_PLUS)
  assert g.num_colours == 3 and g.num_edges == 5
  assert hash(g) == hash(machine.Graph.from_edges(*TRIANGLE_PLUS))
  assert g == machine.Graph.from_edges(*TRIANGLE_PLUS) and g != random_graph(0, 6, 0.5)
  with pytest.raises(ValueError, match=r"b \[n=6\] and w \[E=5\]"):
    machine.energy(priors.BoltzmannMachine(jnp.zeros(6), jnp.zeros(4), g), jnp.zeros(6))


def test_neighbour_tables_list_every_edge_twice():
  g = random_graph(3, 9, 0.4)
  pairs = set()
  for i in range(g.num_nodes):
    for j, e in zip(g.neighbours[i], g.edge_ids[i], strict=True):
      if j < g.num_nodes:
        assert tuple(sorted((i, int(j)))) == tuple(g.edges[e])
        pairs.add((i, int(j)))
  assert len(pairs) == 2 * g.num_edges


@pytest.mark.parametrize("seed", [0, 1])
def test_energy_and_fields_match_brute_force(seed):
  with jax.enable_x64(True):
    g = random_graph(seed, 7, 0.5)
    m = random_machine(seed, g)
    z = all_states(7)
    np.testing.assert_allclose(machine.energy(m, jnp.asarray(z)), np_energy(m, z), rtol=1e-12)
    # h_i = E(z with z_i = 0) − E(z with z_i = 1).
    h = np.asarray(machine.local_fields(m, jnp.asarray(z)))
    for i in range(7):
      z0, z1 = z.copy(), z.copy()
      z0[:, i], z1[:, i] = 0, 1
      np.testing.assert_allclose(h[:, i], np_energy(m, z0) - np_energy(m, z1), atol=1e-12)


@pytest.mark.parametrize(
  "graph, chunk_bits",
  [
    (machine.Graph.from_edges(*TRIANGLE_PLUS), 2),  # several chunks
    (random_graph(5, 11, 0.3), 14),
    (random_graph(6, 9, 0.9), 14),
  ],
)
def test_exact_log_partition_and_moments_match_brute_force(graph, chunk_bits):
  with jax.enable_x64(True):
    m = random_machine(11, graph, w_std=2.0)
    log_z, mz, mzz = np_exact(m)
    np.testing.assert_allclose(machine.exact_log_partition(m, chunk_bits), log_z, rtol=1e-12)
    mom = machine.exact_moments(m, chunk_bits)
    np.testing.assert_allclose(mom.unit, mz, atol=1e-12)
    np.testing.assert_allclose(mom.edge, mzz, atol=1e-12)
    # The moments are ∇ log Z.
    grad = jax.grad(lambda mm: machine.exact_log_partition(mm, chunk_bits))(m)
    np.testing.assert_allclose(grad.b, mz, atol=1e-10)
    np.testing.assert_allclose(grad.w, mzz, atol=1e-10)


def test_complete_bipartite_graph_is_the_rbm():
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    r = rbm.RBM(*(jnp.asarray(rng.normal(0, 1, s)) for s in [(5,), (7,), (5, 7)]))
    m = rbm.graph_machine(r)
    assert m.graph.num_colours == 2 and m.graph.num_edges == 35
    z = jnp.asarray(rng.integers(0, 2, (64, 12)), jnp.float64)
    np.testing.assert_allclose(machine.energy(m, z), rbm.energy(r, z[:, :5], z[:, 5:]), rtol=1e-13)
    np.testing.assert_allclose(
      machine.exact_log_partition(m), rbm.exact_log_partition(r), rtol=1e-13
    )
    mom, ref = machine.exact_moments(m), rbm.exact_moments(r)
    np.testing.assert_allclose(mom.unit, np.concatenate([ref.z1, ref.z2]), atol=1e-13)
    np.testing.assert_allclose(mom.edge, np.asarray(ref.z1z2).ravel(), atol=1e-13)


def test_log_partition_surrogate_value_and_gradient():
  with jax.enable_x64(True):
    g = random_graph(2, 6, 0.5)
    m = random_machine(2, g)
    z = jnp.asarray(np.random.default_rng(0).integers(0, 2, (10, 6)), jnp.float64)
    value, grad = jax.value_and_grad(lambda mm: mm.training_log_partition(z, 3.5))(m)
    assert value == 3.5
    e = g.edges
    np.testing.assert_allclose(grad.b, z.mean(0), atol=1e-14)
    np.testing.assert_allclose(grad.w, (z[:, e[:, 0]] * z[:, e[:, 1]]).mean(0), atol=1e-14)


def test_enumeration_refuses_large_machines():
  g = machine.Graph.from_edges(70, [(i, i + 1) for i in range(69)] + [(0, 2)])
  with pytest.raises(ValueError, match="exact enumeration"):
    machine.exact_log_partition(priors.graph.init_machine(g))
