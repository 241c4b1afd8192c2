"""Interop with D-Wave's Ocean: a machine as a ``dimod.BinaryQuadraticModel``, samples back.

Energy mapping at inverse temperature β (the machine's energy E(z) = −bᵀz − Σ_e w_e z_i z_j, its
target p_β(z) ∝ exp(−β E(z))):

* BINARY (QUBO), x = z ∈ {0,1}: linear a_i = −β b_i, quadratic q_ij = −β w_ij, offset 0; so
  ``bqm.energy(x) = β E(z)`` exactly.
* SPIN (Ising), s = 2z − 1 ∈ {−1,+1}, z = (1 + s)/2: h_i = −β(b_i/2 + Σ_{j∈N(i)} w_ij/4),
  J_ij = −β w_ij/4, offset = −β(Σ_i b_i/2 + Σ_e w_e/4); again ``bqm.energy(s) = β E(z)``.

A sampler that draws from exp(−bqm.energy) (a Boltzmann sampler at unit temperature) therefore
targets p_β. Annealers and simulated annealing are not Boltzmann samplers at a known temperature;
their samples are heuristic and must be reweighted or checked before being treated as p_β draws.
``from_bqm`` inverts the mapping (b = −a/β, w = −q/β after conversion to BINARY) and returns the
BQM's offset separately: exp(−bqm.energy(x)) = exp(−offset) · exp(−β E(z)).

Labels: the BQM's variables are the machine graph's node labels (``Graph.labels``); samples come
back as {0,1} arrays with columns in the machine's node order.
Needs ``pip install dvae_jax[dwave]``.
"""

from __future__ import annotations

import numpy as np

from dvae_jax.graphs import machine as machine_lib
from dvae_jax.graphs import topologies
from dvae_jax.priors import graph as graph_prior

BoltzmannMachine = graph_prior.BoltzmannMachine
VARTYPES = ("BINARY", "SPIN")


def _dimod():
  try:
    import dimod
  except ImportError as e:
    raise ImportError("dimod interop needs dimod: pip install 'dvae_jax[dwave]'") from e
  return dimod


def _check_beta(beta: float) -> float:
  beta = float(beta)
  if not (beta > 0 and np.isfinite(beta)):
    raise ValueError(f"beta must be finite and > 0 to export a BQM, got {beta}")
  return beta


def bqm_coefficients(
  m: BoltzmannMachine, vartype: str = "BINARY", beta: float = 1.0
) -> tuple[np.ndarray, np.ndarray, float]:
  """``to_bqm``'s coefficients as float64 arrays, without dimod: (linear [n] in node order,
  quadratic [E] in edge order, offset), so that linear·x + quadratic·(x_i x_j) + offset = β E(z)."""
  if vartype not in VARTYPES:
    raise ValueError(f"unknown vartype {vartype!r}; valid: {', '.join(VARTYPES)}")
  beta = _check_beta(beta)
  machine_lib.check_machine(m)
  g = m.graph
  b = np.asarray(m.b, np.float64)
  w = np.asarray(m.w, np.float64)
  if vartype == "BINARY":
    return -beta * b, -beta * w, 0.0
  i, j = g.edges[:, 0], g.edges[:, 1]
  incident = np.bincount(i, w, g.num_nodes) + np.bincount(j, w, g.num_nodes)
  return -beta * (b / 2 + incident / 4), -beta * w / 4, -beta * (b.sum() / 2 + w.sum() / 4)


def to_bqm(m: BoltzmannMachine, vartype: str = "BINARY", beta: float = 1.0):
  """The machine at inverse temperature β as a BQM with ``bqm.energy = β E`` (module docstring).

  Args:
    m: the machine (parameters are read to float64 on the host).
    vartype: ``'BINARY'`` (QUBO) or ``'SPIN'`` (Ising).
    beta: inverse temperature β > 0.
  """
  dimod = _dimod()
  linear, quadratic, offset = bqm_coefficients(m, vartype, beta)
  g = m.graph
  labels = g.labels
  bqm = dimod.BinaryQuadraticModel(vartype)
  bqm.add_variables_from((labels[k], linear[k]) for k in range(g.num_nodes))
  bqm.add_interactions_from(
    (labels[a], labels[c], q)
    for a, c, q in zip(g.edges[:, 0], g.edges[:, 1], quadratic, strict=True)
  )
  bqm.offset = offset
  return bqm


def from_bqm(bqm, graph: machine_lib.Graph | None = None, beta: float = 1.0, dtype=np.float32):
  """(machine, offset) with β E(z) + offset = bqm.energy(x) for every state (inverse of ``to_bqm``).

  Args:
    bqm: a ``dimod.BinaryQuadraticModel`` (either vartype; converted to BINARY).
    graph: the machine's graph (its labels name the BQM's variables and it must contain every
      interaction); default: a graph on the BQM's variables in the ``topologies.node_order`` order.
    beta: the inverse temperature the BQM was exported at.
    dtype: dtype of b and w.
  """
  import jax.numpy as jnp

  beta = _check_beta(beta)
  binary = bqm.change_vartype("BINARY", inplace=False)
  if graph is None:
    labels = topologies.node_order(binary.variables)
    index = {v: k for k, v in enumerate(labels)}
    edges = [(index[u], index[v]) for u, v in binary.quadratic]
    graph = machine_lib.Graph.from_edges(len(labels), np.array(edges).reshape(-1, 2), None, labels)
  index = {v: k for k, v in enumerate(graph.labels)}
  missing = set(binary.variables) - set(index)
  if missing:
    raise ValueError(f"the graph has no node for BQM variables {sorted(map(str, missing))[:5]}")
  b = np.zeros(graph.num_nodes)
  for v, a in binary.linear.items():
    b[index[v]] = -a / beta
  edge_index = {(int(p), int(q)): e for e, (p, q) in enumerate(graph.edges)}
  w = np.zeros(graph.num_edges)
  for (u, v), q in binary.quadratic.items():
    key = tuple(sorted((index[u], index[v])))
    if key not in edge_index:
      raise ValueError(f"BQM interaction ({u!r}, {v!r}) is not an edge of the graph")
    w[edge_index[key]] = -q / beta
  m = graph_prior.BoltzmannMachine(jnp.asarray(b, dtype), jnp.asarray(w, dtype), graph)
  return m, float(binary.offset)


def samples_to_array(sampleset, graph: machine_lib.Graph, expand: bool = True) -> np.ndarray:
  """[S, n] int8 {0,1} states in the machine's node order from a ``dimod.SampleSet``.

  SPIN samples are mapped by z = (1 + s)/2. With ``expand`` each row is repeated by its
  ``num_occurrences`` (aggregated sample sets, e.g. ``ExactSolver``'s, are kept as they are when
  they have no such field).
  """
  states, variables = sampleset.record.sample, list(sampleset.variables)
  position = {v: k for k, v in enumerate(variables)}
  missing = [label for label in graph.labels if label not in position]
  if missing:
    raise ValueError(f"the sample set has no variable for nodes {missing[:5]} of the graph")
  columns = np.array([position[label] for label in graph.labels])
  z = np.asarray(states)[:, columns]
  if sampleset.vartype.name == "SPIN":
    z = (z + 1) // 2
  if expand and "num_occurrences" in sampleset.record.dtype.names:
    z = np.repeat(z, sampleset.record.num_occurrences, axis=0)
  return z.astype(np.int8)


def sample(sampler, m: BoltzmannMachine, beta: float = 1.0, vartype: str = "BINARY", **kwargs):
  """Samples of ``to_bqm(m, vartype, beta)`` from any ``dimod.Sampler`` as [S, n] arrays of
  m's dtype in node order (kwargs go to ``sampler.sample``, e.g. ``num_reads``)."""
  import jax.numpy as jnp

  sampleset = sampler.sample(to_bqm(m, vartype, beta), **kwargs)
  return jnp.asarray(samples_to_array(sampleset, m.graph), m.b.dtype)
