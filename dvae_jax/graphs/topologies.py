"""Graphs of quantum annealers (D-Wave Chimera, Pegasus, Zephyr) and any networkx graph → ``Graph``.

Node order (the index k of a machine's b[k] and of the columns of its states): the graph's node
labels sorted ascending when they are mutually comparable (integers, coordinate tuples), otherwise
the graph's own node iteration order. ``Graph.labels[k]`` is the label of node k; for the D-Wave
topologies built here the labels are dwave-networkx's linear indices (``coordinates=False``), so
node k of ``chimera(m, n, t)`` is the qubit with the k-th smallest linear index (for Chimera and
Zephyr these are 0..N−1; Pegasus's fabric skips some indices).

The D-Wave generators need the optional extra ``pip install dvae_jax[dwave]`` (dwave-networkx);
``from_networkx`` needs only networkx. Both are imported on first use, so the core package does not
depend on them.
"""

from __future__ import annotations

import functools

import numpy as np

from dvae_jax.graphs import machine as machine_lib

Graph = machine_lib.Graph

TOPOLOGIES = ("chimera", "pegasus", "zephyr")


def _dnx():
  try:
    import dwave_networkx
  except ImportError as e:
    raise ImportError(
      "the D-Wave topologies need dwave-networkx: pip install 'dvae_jax[dwave]'"
    ) from e
  return dwave_networkx


def node_order(labels) -> list:
  """The documented node order of an iterable of labels: sorted if comparable, else as given."""
  nodes = list(labels)
  try:
    return sorted(nodes)
  except TypeError:
    return nodes


def from_networkx(nx_graph, colours=None) -> Graph:
  """A ``Graph`` from any networkx graph (self-loops refused; directed graphs refused).

  Args:
    nx_graph: an undirected ``networkx.Graph`` with at least one node.
    colours: optional proper colouring, a mapping label → colour or an [n] array in node order;
      default ``colouring.colour_graph`` (2 colours if bipartite, else DSATUR).
  """
  if nx_graph.is_directed():
    raise ValueError("a Boltzmann machine graph must be undirected; got a directed graph")
  labels = node_order(nx_graph.nodes)
  if not labels:
    raise ValueError("the graph has no nodes")
  index = {label: k for k, label in enumerate(labels)}
  edges = np.array([(index[u], index[v]) for u, v in nx_graph.edges], np.int64).reshape(-1, 2)
  if isinstance(colours, dict):
    colours = np.array([colours[label] for label in labels], np.int32)
  return Graph.from_edges(len(labels), edges, colours, labels)


def chimera(m: int, n: int | None = None, t: int = 4) -> Graph:
  """Chimera C(m, n, t): an m × n grid of K_{t,t} cells (D-Wave 2000Q is chimera(16, 16, 4)).

  Bipartite, so it gets 2 colours."""
  return from_networkx(_dnx().chimera_graph(m, n, t))


def pegasus(m: int) -> Graph:
  """Pegasus P(m) (fabric only; Advantage is pegasus(16)). Not bipartite (odd couplers)."""
  return from_networkx(_dnx().pegasus_graph(m))


def zephyr(m: int, t: int = 4) -> Graph:
  """Zephyr Z(m, t) (Advantage2 is zephyr(12, 4)). Not bipartite."""
  return from_networkx(_dnx().zephyr_graph(m, t))


def first_nodes(graph: Graph, n: int) -> Graph:
  """The subgraph induced by nodes 0..n−1 of ``graph`` (its labels and its colouring, restricted).

  Node k of the result is node k of ``graph``; an edge is kept when both ends are < n.
  """
  if not 1 <= n <= graph.num_nodes:
    raise ValueError(f"cannot take the first {n} nodes of a graph with {graph.num_nodes} nodes")
  keep = (graph.edges[:, 0] < n) & (graph.edges[:, 1] < n)
  return Graph(n, graph.edges[keep], graph.colours[:n], graph.labels[:n])


def _topology(name: str, sizes: tuple[int, ...]) -> Graph:
  if name == "chimera":
    return chimera(*sizes)
  if name == "pegasus":
    return pegasus(*sizes)
  if name == "zephyr":
    return zephyr(*sizes)
  raise ValueError(f"unknown topology {name!r}; valid: {', '.join(TOPOLOGIES)}")


# How many size parameters each family takes: chimera (m[, n[, t]]), pegasus (m), zephyr (m[, t]).
_NUM_SIZES = {"chimera": (1, 3), "pegasus": (1, 1), "zephyr": (1, 2)}


def parse_sizes(name: str, sizes: str) -> tuple[int, ...]:
  """``"5,5,4"`` → (5, 5, 4), checked against the family's parameters (``_NUM_SIZES``); omitted
  ones take dwave-networkx's defaults ("5" → (5, 5, 4) for Chimera, "2" → (2, 4) for Zephyr)."""
  if name not in _NUM_SIZES:
    raise ValueError(f"unknown topology {name!r}; valid: {', '.join(TOPOLOGIES)}")
  try:
    parsed = tuple(int(s) for s in sizes.split(",")) if sizes.strip() else ()
  except ValueError:
    parsed = None
  lo, hi = _NUM_SIZES[name]
  if parsed is None or not lo <= len(parsed) <= hi or min(parsed) < 1:
    usage = {"chimera": "m[,n[,t]]", "pegasus": "m", "zephyr": "m[,t]"}[name]
    raise ValueError(
      f"topology sizes {sizes!r} for {name}: expected {usage} with positive integers, e.g. "
      f"{ {'chimera': '5,5,4', 'pegasus': '3', 'zephyr': '2,4'}[name]!r}"
    )
  # dwave-networkx's defaults made explicit: chimera(m) = chimera(m, m, 4), zephyr(m) = (m, 4).
  if name == "chimera":
    m, n, t = (parsed + (None, None))[:3]
    return (m, n or m, t or 4)
  if name == "zephyr":
    m, t = (parsed + (None,))[:2]
    return (m, t or 4)
  return parsed


def smallest_sizes(name: str, num_nodes: int) -> tuple[int, ...]:
  """The smallest square Chimera C(m, m, 4), Pegasus P(m) or Zephyr Z(m, 4) with ≥ num_nodes
  nodes."""
  for m in range(1, 64):
    sizes = {"chimera": (m, m, 4), "pegasus": (m,), "zephyr": (m, 4)}[name]
    if name == "pegasus" and m < 2:
      continue  # P(1) has no nodes
    if _topology(name, sizes).num_nodes >= num_nodes:
      return sizes
  raise ValueError(f"no {name} graph up to size 63 has {num_nodes} nodes")


def latent_graph(name: str, num_latent: int, sizes: str | tuple[int, ...] = "") -> Graph:
  """The graph of a DVAE prior on a quantum-annealer topology: latent unit k is node k.

  The topology ``name`` with ``sizes`` (``parse_sizes``; empty: ``smallest_sizes``) is built and its
  first ``num_latent`` nodes, in the node order of this module's docstring, are kept with the
  couplers among them (``first_nodes``). For Chimera the linear index of qubit (row i, column j,
  side u, k) is ((i·n + j)·2 + u)·t + k, so the latents fill whole unit cells row by row: latent
  units 8c..8c+7 are cell c, its first t the vertical and its last t the horizontal qubits. The
  encoder's groups are contiguous blocks of latents (``models``), so group g occupies the qubits
  with the g-th block of indices.

  Raises:
    ValueError: the topology has fewer than ``num_latent`` nodes, or bad sizes.
  """
  if isinstance(sizes, str):
    sizes = parse_sizes(name, sizes) if sizes.strip() else smallest_sizes(name, num_latent)
  return _latent_graph(name, num_latent, tuple(sizes))


@functools.lru_cache(maxsize=16)
def _latent_graph(name: str, num_latent: int, sizes: tuple[int, ...]) -> Graph:
  graph = _topology(name, sizes)
  if graph.num_nodes < num_latent:
    raise ValueError(
      f"{name}{sizes} has {graph.num_nodes} nodes, fewer than the {num_latent} latent "
      f"units; choose a larger topology"
    )
  return first_nodes(graph, num_latent)


def named_topology(name: str, size: int, t: int = 4) -> Graph:
  """``chimera`` (size × size × t), ``pegasus`` (size) or ``zephyr`` (size, t) by name."""
  sizes = {"chimera": (size, size, t), "pegasus": (size,), "zephyr": (size, t)}
  return _topology(name, sizes.get(name, ()))
