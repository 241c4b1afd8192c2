"""D-Wave topologies and networkx graphs → Graph: sizes, node order, labels, refusals."""

import numpy as np
import pytest

dnx = pytest.importorskip("dwave_networkx", reason="the [dwave] extra is not installed")
import networkx as nx  # noqa: E402

from dvae_jax.graphs import topologies  # noqa: E402


@pytest.mark.parametrize(
  "graph, nx_graph",
  [
    (lambda: topologies.chimera(16, 16, 4), lambda: dnx.chimera_graph(16, 16, 4)),
    (lambda: topologies.pegasus(6), lambda: dnx.pegasus_graph(6)),
    (lambda: topologies.zephyr(4, 4), lambda: dnx.zephyr_graph(4, 4)),
  ],
  ids=["chimera16", "pegasus6", "zephyr4"],
)
def test_dwave_graphs_keep_nodes_edges_and_sorted_labels(graph, nx_graph):
  g, h = graph(), nx_graph()
  assert g.num_nodes == h.number_of_nodes() and g.num_edges == h.number_of_edges()
  assert list(g.labels) == sorted(h.nodes)
  labelled = {frozenset((g.labels[i], g.labels[j])) for i, j in g.edges}
  assert labelled == {frozenset(e) for e in h.edges}


def test_named_topology_and_sizes():
  assert topologies.named_topology("chimera", 2).num_nodes == 2 * 2 * 8
  assert (
    topologies.named_topology("zephyr", 1, t=2).num_nodes
    == dnx.zephyr_graph(1, 2).number_of_nodes()
  )
  with pytest.raises(ValueError, match="unknown topology 'king'"):
    topologies.named_topology("king", 3)


def test_any_networkx_graph_and_unsortable_labels():
  h = nx.Graph([("a", 2), (2, (0, 1)), ((0, 1), "a")])  # labels of mixed types: insertion order
  g = topologies.from_networkx(h)
  assert g.labels == ("a", 2, (0, 1)) and g.num_colours == 3
  g = topologies.from_networkx(nx.petersen_graph())
  assert g.num_nodes == 10 and g.num_edges == 15 and g.num_colours == 3
  with pytest.raises(ValueError, match="undirected"):
    topologies.from_networkx(nx.DiGraph([(0, 1)]))
  with pytest.raises(ValueError, match="no nodes"):
    topologies.from_networkx(nx.Graph())
  colours = topologies.from_networkx(nx.path_graph(4), colours={0: 1, 1: 0, 2: 1, 3: 0}).colours
  np.testing.assert_array_equal(colours, [1, 0, 1, 0])
