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


def named_topology(name: str, size: int, t: int = 4) -> Graph:
  """``chimera`` (size × size × t), ``pegasus`` (size) or ``zephyr`` (size, t) by name."""
  if name == "chimera":
    return chimera(size, size, t)
  if name == "pegasus":
    return pegasus(size)
  if name == "zephyr":
    return zephyr(size, t)
  raise ValueError(f"unknown topology {name!r}; valid: {', '.join(TOPOLOGIES)}")
