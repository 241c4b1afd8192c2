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


def test_first_nodes_is_the_induced_subgraph_with_the_parents_labels():
  g = topologies.chimera(3, 3, 4)
  sub = topologies.first_nodes(g, 20)
  h = dnx.chimera_graph(3, 3, 4).subgraph(range(20))
  assert sub.num_nodes == 20 and sub.labels == g.labels[:20]
  assert {frozenset(e) for e in sub.edges.tolist()} == {frozenset(e) for e in h.edges}
  assert sub.num_colours == 2  # the parent's bipartition, restricted
  with pytest.raises(ValueError, match="first 73 nodes of a graph with 72"):
    topologies.first_nodes(g, 73)


@pytest.mark.parametrize(
  "name, num_latent, sizes, smaller",
  [
    ("chimera", 200, (5, 5, 4), (4, 4, 4)),
    ("chimera", 400, (8, 8, 4), (7, 7, 4)),
    ("pegasus", 200, (4,), (3,)),
    ("zephyr", 200, (3, 4), (2, 4)),
    ("zephyr", 400, (4, 4), (3, 4)),
  ],
)
def test_latent_graph_default_is_the_smallest_that_fits(name, num_latent, sizes, smaller):
  assert topologies.smallest_sizes(name, num_latent) == sizes
  with pytest.raises(ValueError, match=f"fewer than the {num_latent} latent units"):
    topologies.latent_graph(name, num_latent, smaller)
  g = topologies.latent_graph(name, num_latent)
  assert g.num_nodes == num_latent
  assert g == topologies.first_nodes(topologies._topology(name, sizes), num_latent)


def test_chimera_latents_fill_unit_cells_row_by_row():
  # Linear index ((i·n + j)·2 + u)·t + k: latent 8c..8c+7 is cell c; its first 4 vertical (u = 0).
  g = topologies.latent_graph("chimera", 200, "5,5,4")
  coords = dnx.chimera_coordinates(5, 5, 4)
  for k in (0, 3, 4, 7, 8, 45, 199):
    i, j, u, kk = coords.linear_to_chimera(g.labels[k])
    assert (i * 5 + j, u, kk) == (k // 8, (k // 4) % 2, k % 4)


@pytest.mark.parametrize(
  "name, sizes, message",
  [
    ("chimera", "5,x", "expected m\\[,n\\[,t\\]\\]"),
    ("pegasus", "3,2", "expected m with"),
    ("zephyr", "0", "positive integers"),
    ("king", "3", "unknown topology 'king'"),
  ],
)
def test_bad_sizes_are_refused_by_name(name, sizes, message):
  with pytest.raises(ValueError, match=message):
    topologies.parse_sizes(name, sizes)


def test_omitted_sizes_take_dwave_networkx_defaults():
  assert topologies.parse_sizes("chimera", "5") == (5, 5, 4)
  assert topologies.parse_sizes("chimera", "5,6") == (5, 6, 4)
  assert topologies.parse_sizes("zephyr", "2") == (2, 4)
  assert topologies._topology("chimera", (5, 6, 4)) == topologies.chimera(5, 6)
