"""A Boltzmann machine on an arbitrary sparse graph: the graph, energy, local fields, exact
log Z and moments. The machine's parameters are ``priors.graph.BoltzmannMachine`` (b, w and its
``Graph``); the functions here take any object with those three fields.

Over z ∈ {0,1}^n with biases b [n] and one coupling w_e per edge e = (i, j), i < j:

  E(z) = −bᵀz − Σ_{e=(i,j)} w_e z_i z_j,      p_β(z) = exp(−β E(z)) / Z_β.

This is math.md §2's convention with the sign of every term kept: the RBM energy
−b1ᵀz1 − b2ᵀz2 − z1ᵀWz2 is the complete bipartite graph K_{n1,n2} with nodes ordered (z1; z2),
edge (i, n1 + j) carrying W_ij (``priors.rbm.graph_machine``). Positive w favours both ends on.

The parameters (b, w) are the pytree leaves of ``BoltzmannMachine``; the ``Graph`` (node count, the
edge list, a proper colouring, node labels) is static aux data, hashable, so jit caches per graph
and gradients flow into b and w only. Node order is the order of ``Graph.labels`` (see
``dvae_jax.graphs.topologies`` for how a networkx graph is ordered).

Exact enumeration sums the largest colour class out analytically (its units are conditionally
independent given the rest, as the RBM's larger side in ``rbm.exact_log_partition``) and enumerates
the 2^(n − n_max) states of the other classes in chunks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dvae_jax import numerics
from dvae_jax.graphs import colouring as colouring_lib

Array = jax.Array
BoltzmannMachine = Any  # priors.graph.BoltzmannMachine: b [n], w [E], graph

# Beyond 2^30 enumerated states: hours, and int32 state indices overflow (as for the RBM).
MAX_ENUMERATED_UNITS = 30


class Graph:
  """An undirected simple graph with a proper colouring, static (hashable) for jit.

  Attributes:
    num_nodes: n.
    edges: [E, 2] int32, each row (i, j) with i < j, rows sorted, no duplicates.
    colours: [n] int32 proper colouring, colours 0..C−1 (default ``colouring.colour_graph``).
    labels: tuple of n node labels (node k of the machine is ``labels[k]``; default 0..n−1).

  Derived tables (NumPy, built once):
    neighbours, edge_ids: [n, d_max] the neighbours of each node and the index of the joining edge,
      padded with n and E (the index of an appended zero state / zero weight).
    order: [n] the nodes sorted by colour (stable); colour c occupies order[starts[c]:starts[c+1]].
  """

  def __init__(self, num_nodes: int, edges, colours=None, labels=None):
    num_nodes = int(num_nodes)
    if num_nodes < 1:
      raise ValueError(f"a graph needs at least one node, got num_nodes={num_nodes}")
    e = np.asarray(edges, np.int64).reshape(-1, 2) if len(edges) else np.zeros((0, 2), np.int64)
    if e.size and (e.min() < 0 or e.max() >= num_nodes):
      raise ValueError(
        f"edge endpoints must lie in [0, {num_nodes}), got range [{e.min()}, {e.max()}]"
      )
    if np.any(e[:, 0] == e[:, 1]):
      raise ValueError(f"self-loops are not allowed (node {int(e[e[:, 0] == e[:, 1]][0, 0])})")
    e = np.sort(e, axis=1)
    canonical = np.unique(e, axis=0)
    if len(canonical) != len(e):
      raise ValueError(f"duplicate edges: {len(e) - len(canonical)} repeated (i, j) pairs")
    # The canonical order (np.unique's lexicographic rows) is required rather than imposed, so that
    # w is never silently permuted against the caller's weights; Graph.from_edges sorts for you.
    if not np.array_equal(canonical, e):
      raise ValueError(
        "edges must be given sorted lexicographically with i < j (use Graph.from_edges)"
      )
    self.num_nodes = num_nodes
    self.edges = e.astype(np.int32)
    if colours is None:
      colours = colouring_lib.colour_graph(num_nodes, self.edges)
    colours = np.asarray(colours, np.int32)
    if colours.shape != (num_nodes,) or colours.min() < 0:
      raise ValueError(
        f"colours must be [n={num_nodes}] non-negative ints, got shape {colours.shape}"
      )
    if not colouring_lib.is_proper(self.edges, colours):
      raise ValueError("colours is not a proper colouring: some edge joins two nodes of one colour")
    used = np.unique(colours)
    self.colours = np.searchsorted(used, colours).astype(np.int32)  # relabel to 0..C−1
    self.labels = tuple(range(num_nodes)) if labels is None else tuple(labels)
    if len(self.labels) != num_nodes or len(set(self.labels)) != num_nodes:
      raise ValueError(f"labels must be {num_nodes} distinct node labels, got {len(self.labels)}")
    self._build_tables()
    self._hash = hash((num_nodes, self.edges.tobytes(), self.colours.tobytes(), self.labels))

  @classmethod
  def from_edges(cls, num_nodes: int, edges, colours=None, labels=None) -> Graph:
    """A graph from edges in any order and orientation (sorted to the canonical order)."""
    e = np.sort(np.asarray(edges, np.int64).reshape(-1, 2), axis=1)
    if len(e):
      e = e[np.lexsort((e[:, 1], e[:, 0]))]
    return cls(num_nodes, e, colours, labels)

  def _build_tables(self) -> None:
    n, num_edges = self.num_nodes, len(self.edges)
    ends = np.concatenate([self.edges, self.edges[:, ::-1]]).astype(np.int64)
    ids = np.concatenate([np.arange(num_edges), np.arange(num_edges)])
    order = np.lexsort((ends[:, 1], ends[:, 0]))
    ends, ids = ends[order], ids[order]
    degree = np.bincount(ends[:, 0], minlength=n)
    d_max = max(int(degree.max()) if num_edges else 0, 1)
    slot = np.arange(len(ends)) - np.repeat(np.cumsum(degree) - degree, degree)
    self.degree = degree
    self.neighbours = np.full((n, d_max), n, np.int32)
    self.edge_ids = np.full((n, d_max), num_edges, np.int32)
    self.neighbours[ends[:, 0], slot] = ends[:, 1]
    self.edge_ids[ends[:, 0], slot] = ids
    self.order = np.argsort(self.colours, kind="stable").astype(np.int32)
    counts = np.bincount(self.colours)
    self.starts = tuple(int(s) for s in np.concatenate([[0], np.cumsum(counts)]))

  @property
  def num_edges(self) -> int:
    return len(self.edges)

  @property
  def num_colours(self) -> int:
    return len(self.starts) - 1

  def colour_class(self, c: int) -> np.ndarray:
    """Node indices of colour c (ascending)."""
    return self.order[self.starts[c] : self.starts[c + 1]]

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other) -> bool:
    return (
      isinstance(other, Graph)
      and self._hash == other._hash
      and self.num_nodes == other.num_nodes
      and np.array_equal(self.edges, other.edges)
      and np.array_equal(self.colours, other.colours)
      and self.labels == other.labels
    )

  def __repr__(self) -> str:
    return (
      f"Graph(num_nodes={self.num_nodes}, num_edges={self.num_edges}, colours={self.num_colours})"
    )


def check_machine(m: BoltzmannMachine) -> None:
  """Raises ValueError unless b is [n] and w is [E] for the machine's graph."""
  g = m.graph
  if m.b.shape != (g.num_nodes,) or m.w.shape != (g.num_edges,):
    raise ValueError(
      f"BoltzmannMachine expects b [n={g.num_nodes}] and w [E={g.num_edges}]; "
      f"got shapes {m.b.shape}, {m.w.shape}"
    )


def _check_states(m: BoltzmannMachine, z: Array) -> None:
  check_machine(m)
  if z.shape[-1:] != (m.graph.num_nodes,):
    raise ValueError(f"z must have trailing dimension n={m.graph.num_nodes}, got shape {z.shape}")


def energy(m: BoltzmannMachine, z: Array) -> Array:
  """E(z) = −b·z − Σ_e w_e z_i z_j: z [..., n] → [...] (in the dtype of z and m)."""
  _check_states(m, z)
  i, j = m.graph.edges[:, 0], m.graph.edges[:, 1]
  return -(z @ m.b) - (z[..., i] * z[..., j]) @ m.w


def coupling_matrix(m: BoltzmannMachine) -> Array:
  """The symmetric coupling matrix W_f [n, n], (W_f)_ij = (W_f)_ji = w_e for e = (i, j), zero
  diagonal, so that E(z) = −bᵀz − ½ zᵀW_f z. Dense (n² entries): meant for n ≲ a few thousand;
  differentiable in w."""
  check_machine(m)
  i, j = m.graph.edges[:, 0], m.graph.edges[:, 1]
  n = m.graph.num_nodes
  return jnp.zeros((n, n), m.w.dtype).at[i, j].set(m.w).at[j, i].set(m.w)


def _padded(z: Array, w: Array) -> tuple[Array, Array]:
  """z with a zero unit appended ([..., n + 1]) and w with a zero weight appended ([E + 1])."""
  zp = jnp.concatenate([z, jnp.zeros(z.shape[:-1] + (1,), z.dtype)], axis=-1)
  return zp, jnp.concatenate([w, jnp.zeros((1,), w.dtype)])


def local_fields(m: BoltzmannMachine, z: Array) -> Array:
  """h_i = b_i + Σ_{j ∈ N(i)} w_ij z_j, so p(z_i = 1 | z_rest) = σ(β h_i): z [..., n] → [..., n]."""
  _check_states(m, z)
  zp, wp = _padded(z, m.w)
  g = m.graph
  return m.b + jnp.sum(zp[..., g.neighbours] * wp[g.edge_ids], axis=-1)


class Moments(NamedTuple):
  """E[z_i] per unit [n] and E[z_i z_j] per edge [E]: the gradient of log Z for (b, w)."""

  unit: Array
  edge: Array


class _Plan(NamedTuple):
  summed: np.ndarray  # nodes summed out analytically (the largest colour class)
  enumerated: np.ndarray  # the others, enumerated
  chunk_size: int
  num_chunks: int


def _enumeration_plan(g: Graph, chunk_bits: int) -> _Plan:
  sizes = np.diff(g.starts)
  c = int(np.argmax(sizes))
  summed = g.colour_class(c)
  enumerated = np.setdiff1d(np.arange(g.num_nodes), summed).astype(np.int32)
  k = len(enumerated)
  if k > MAX_ENUMERATED_UNITS:
    raise ValueError(
      f"exact enumeration needs n − (largest colour class) <= {MAX_ENUMERATED_UNITS}, got {k}; "
      "use an annealing estimator for larger machines"
    )
  bits = min(k, chunk_bits)
  return _Plan(summed, enumerated, 1 << bits, 1 << (k - bits))


def _chunk_full_states(m: BoltzmannMachine, plan: _Plan, c: Array) -> Array:
  """[chunk, n] states: chunk c of the enumerated units' assignments, summed units at 0."""
  dtype = m.b.dtype
  part = numerics.chunk_states(c, plan.chunk_size, len(plan.enumerated), dtype)
  z = jnp.zeros((plan.chunk_size, m.graph.num_nodes), dtype)
  return z.at[:, plan.enumerated].set(part)


def _neg_free_energy(m: BoltzmannMachine, plan: _Plan, z: Array) -> tuple[Array, Array]:
  """−F(z) = −E(z) + Σ_{i summed} softplus(h_i(z)) for z [..., n] with the summed units at 0,
  and the summed units' fields h [..., n_summed]."""
  h = local_fields(m, z)[..., plan.summed]
  return -energy(m, z) + jnp.sum(jax.nn.softplus(h), axis=-1), h


def exact_log_partition(m: BoltzmannMachine, chunk_bits: int = 14) -> Array:
  """Exact log Z (β = 1) by enumeration with the largest colour class summed out (module doc).

  Memory O(2^chunk_bits · n); use float64 parameters under ``jax.enable_x64`` for float64.
  """
  check_machine(m)
  plan = _enumeration_plan(m.graph, chunk_bits)

  def chunk_logsumexp(c):
    return jax.nn.logsumexp(_neg_free_energy(m, plan, _chunk_full_states(m, plan, c))[0])

  per_chunk = lax.map(chunk_logsumexp, jnp.arange(plan.num_chunks, dtype=jnp.int32))
  return jax.nn.logsumexp(per_chunk)


def exact_moments(m: BoltzmannMachine, chunk_bits: int = 14) -> Moments:
  """Exact E[z] [n] and E[z_i z_j] [E] (= ∇_{b, w} log Z) by the enumeration of
  ``exact_log_partition``; a summed unit i has E[z_i | rest] = σ(h_i), and no edge joins two
  summed units (they share a colour)."""
  check_machine(m)
  g = m.graph
  plan = _enumeration_plan(g, chunk_bits)
  log_z = exact_log_partition(m, chunk_bits)
  i, j = g.edges[:, 0], g.edges[:, 1]

  def accumulate(acc, c):
    z = _chunk_full_states(m, plan, c)
    neg_f, h = _neg_free_energy(m, plan, z)
    p = jnp.exp(neg_f - log_z)
    mean_z = z.at[:, plan.summed].set(jax.nn.sigmoid(h))  # E[z | enumerated units]
    # At most one end of an edge is summed, so E[z_i z_j | rest] = E[z_i | rest] E[z_j | rest].
    return (acc[0] + p @ mean_z, acc[1] + p @ (mean_z[:, i] * mean_z[:, j])), None

  dtype = m.b.dtype
  init = (jnp.zeros((g.num_nodes,), dtype), jnp.zeros((g.num_edges,), dtype))
  (mz, mzz), _ = lax.scan(accumulate, init, jnp.arange(plan.num_chunks, dtype=jnp.int32))
  return Moments(mz, mzz)
