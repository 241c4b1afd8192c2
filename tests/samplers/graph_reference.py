"""Float64 NumPy references for the samplers on graph machines: small graphs with strong couplings,
brute-force enumeration of all 2^n states (independent of dvae_jax.graphs.machine's enumeration,
which sums a colour class out analytically), exact samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rbm_reference as ref
from scipy.special import logsumexp

from dvae_jax import priors
from dvae_jax.graphs import machine


def chimera_cell() -> machine.Graph:
  """Chimera C(1,1,4) built by hand: K_{4,4} (dwave-networkx's, tests/graphs/test_gibbs.py)."""
  return machine.Graph.from_edges(8, [(i, 4 + j) for i in range(4) for j in range(4)])


def zephyr_cell() -> machine.Graph:
  """Zephyr Z(1,1) (12 nodes, 4 colours); skips without the [dwave] extra."""
  pytest.importorskip("dwave_networkx", reason="the [dwave] extra is not installed")
  from dvae_jax.graphs import topologies

  return topologies.zephyr(1, 1)


def odd_cycles_12() -> machine.Graph:
  """12 nodes, a 5-cycle, a triangle and chords: not bipartite, 3+ colours, core only."""
  edges = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (5, 6), (6, 7), (7, 5), (8, 9), (9, 10)]
  edges += [(10, 11), (11, 8), (0, 5), (2, 8), (4, 10), (6, 11), (1, 9), (3, 7)]
  return machine.Graph.from_edges(12, edges)


GRAPHS = {"chimera_1x1x4": chimera_cell, "zephyr_1_1": zephyr_cell, "odd_cycles_12": odd_cycles_12}


def random_machine(g: machine.Graph, seed: int, w_std: float = 2.0, b_std: float = 0.5):
  """float32 machine with N(0, b_std²) biases and N(0, w_std²) couplings."""
  rng = np.random.default_rng(seed)
  return priors.BoltzmannMachine(
    jnp.asarray(rng.normal(0, b_std, g.num_nodes), jnp.float32),
    jnp.asarray(rng.normal(0, w_std, g.num_edges), jnp.float32),
    g,
  )


def _log_p(m) -> tuple[np.ndarray, np.ndarray]:
  """All states [2^n, n] and their unnormalised log probabilities −E(z), float64."""
  z = ref.all_states(m.graph.num_nodes)
  b, w = np.asarray(m.b, np.float64), np.asarray(m.w, np.float64)
  e = m.graph.edges
  return z, z @ b + (z[:, e[:, 0]] * z[:, e[:, 1]]) @ w


def log_z(m) -> float:
  return float(logsumexp(_log_p(m)[1]))


def moments(m) -> tuple[np.ndarray, np.ndarray]:
  """Exact (E[z_i] [n], E[z_i z_j] [E]) by brute force."""
  z, log_p = _log_p(m)
  p = np.exp(log_p - logsumexp(log_p))
  e = m.graph.edges
  return p @ z, p @ (z[:, e[:, 0]] * z[:, e[:, 1]])


def exact_samples(key, m, num) -> jax.Array:
  """[num, n] float32 exact samples of p (one categorical draw over the enumerated states)."""
  z, log_p = _log_p(m)
  idx = jax.random.categorical(key, jnp.asarray(log_p, jnp.float32), shape=(num,))
  return jnp.asarray(z, jnp.float32)[idx]
