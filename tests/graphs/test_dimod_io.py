"""BQM export/import and dimod samples (offline: ExactSolver, simulated annealing)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvae_jax import priors
from dvae_jax.graphs import machine

dimod = pytest.importorskip("dimod", reason="the [dwave] extra is not installed")
pytest.importorskip("dwave_networkx", reason="the [dwave] extra is not installed")
from dvae_jax.graphs import dimod_io, topologies  # noqa: E402


def random_machine(g, seed, dtype=jnp.float64):
  rng = np.random.default_rng(seed)
  return priors.BoltzmannMachine(
    jnp.asarray(rng.normal(0, 1, g.num_nodes), dtype),
    jnp.asarray(rng.normal(0, 1, g.num_edges), dtype),
    g,
  )


@pytest.mark.parametrize("vartype", ["BINARY", "SPIN"])
@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_bqm_energy_is_beta_times_machine_energy(vartype, beta):
  g = topologies.pegasus(2)  # coordinate-free linear labels with gaps: exercises the label map
  with jax.enable_x64(True):
    m = random_machine(g, 0)
    bqm = dimod_io.to_bqm(m, vartype, beta)
    assert bqm.vartype.name == vartype and len(bqm.quadratic) == g.num_edges
    z = np.random.default_rng(1).integers(0, 2, (50, g.num_nodes))
    x = z if vartype == "BINARY" else 2 * z - 1
    ref = beta * np.asarray(machine.energy(m, jnp.asarray(z, jnp.float64)))
    got = bqm.energies((x, list(g.labels)))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    # The same coefficients as arrays (what the thrml / PyTorch-plugin benchmark peers are given).
    linear, quadratic, offset = dimod_io.bqm_coefficients(m, vartype, beta)
    e = g.edges
    np.testing.assert_allclose(
      x @ linear + (x[:, e[:, 0]] * x[:, e[:, 1]]) @ quadratic + offset, ref, rtol=1e-12, atol=1e-12
    )
    # dimod's own vartype conversion agrees with the formulas used for SPIN / BINARY.
    other = bqm.change_vartype("SPIN" if vartype == "BINARY" else "BINARY", inplace=False)
    x_other = 2 * z - 1 if vartype == "BINARY" else z
    np.testing.assert_allclose(
      other.energies((x_other, list(g.labels))), ref, rtol=1e-12, atol=1e-12
    )
    # Round trip: machine → BQM → machine.
    back, offset = dimod_io.from_bqm(bqm, g, beta, dtype=np.float64)
    np.testing.assert_allclose(back.b, m.b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(back.w, m.w, rtol=1e-12, atol=1e-14)
    assert offset == pytest.approx(0.0, abs=1e-12)
    # Without a graph the BQM's own variables give one with the same node order.
    rebuilt, _ = dimod_io.from_bqm(bqm, None, beta, dtype=np.float64)
    assert rebuilt.graph.labels == g.labels
    np.testing.assert_allclose(machine.energy(rebuilt, jnp.asarray(z, jnp.float64)), ref / beta)


def test_bqm_refusals():
  g = topologies.chimera(1, 1, 2)
  m = priors.graph.init_machine(g)
  with pytest.raises(ValueError, match="vartype"):
    dimod_io.to_bqm(m, "QUBO")
  with pytest.raises(ValueError, match="beta"):
    dimod_io.to_bqm(m, "BINARY", 0.0)
  bqm = dimod.BinaryQuadraticModel({0: 1.0, 1: 1.0}, {(0, 1): 1.0}, 0.0, "BINARY")
  with pytest.raises(ValueError, match="not an edge"):
    dimod_io.from_bqm(bqm, machine.Graph(2, np.zeros((0, 2))))


@pytest.mark.parametrize("vartype", ["BINARY", "SPIN"])
def test_exact_solver_samples_are_the_machine_states(vartype):
  g = topologies.zephyr(1, 1)
  g = machine.Graph.from_edges(8, g.edges[(g.edges < 8).all(1)], labels=g.labels[:8])
  m = random_machine(g, 2, jnp.float32)
  sampleset = dimod.ExactSolver().sample(dimod_io.to_bqm(m, vartype, 1.7))
  z = dimod_io.samples_to_array(sampleset, g)
  assert z.shape == (256, 8) and set(np.unique(z)) <= {0, 1}
  assert len({row.tobytes() for row in z}) == 256  # every state once, in the right columns
  e = np.asarray(machine.energy(m, jnp.asarray(z, jnp.float32)))
  np.testing.assert_allclose(sampleset.record.energy, 1.7 * e, rtol=1e-5, atol=1e-5)


def test_simulated_annealing_finds_the_ground_state_in_node_order():
  samplers = pytest.importorskip("dwave.samplers", reason="dwave-samplers is not installed")
  g = topologies.pegasus(2)
  # Uncoupled units with biases of alternating sign: the ground state is b > 0, column by column.
  b = jnp.where(jnp.arange(g.num_nodes) % 3 == 0, 2.0, -2.0)
  m = priors.BoltzmannMachine(b, jnp.zeros(g.num_edges), g)
  for vartype in ("BINARY", "SPIN"):
    z = dimod_io.sample(samplers.SimulatedAnnealingSampler(), m, 1.0, vartype, num_reads=4, seed=5)
    assert z.shape == (4, g.num_nodes) and z.dtype == m.b.dtype
    np.testing.assert_array_equal(z, np.broadcast_to(b > 0, z.shape))
