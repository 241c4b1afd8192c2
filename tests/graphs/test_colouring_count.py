"""colour_graph's colour count (not only its properness): the known chromatic numbers of standard
graph families, and never more colours than networkx's DSATUR greedy colouring on random graphs.

A proper colouring with one colour per node fails every case here but the complete graph.
"""

import networkx as nx
import numpy as np
import pytest

from dvae_jax.graphs import colouring


def num_colours(graph: nx.Graph) -> int:
  graph = nx.convert_node_labels_to_integers(graph)
  edges = np.array(list(graph.edges), np.int64).reshape(-1, 2)
  c = colouring.colour_graph(graph.number_of_nodes(), edges)
  assert colouring.is_proper(edges, c)
  return int(c.max()) + 1


# (graph, its chromatic number), each family's χ known in closed form; DSATUR is exact on all of
# them (bipartite graphs, cycles, wheels, complete graphs; Brélaz 1979).
KNOWN = [
  ("empty_8", nx.empty_graph(8), 1),
  ("path_9", nx.path_graph(9), 2),
  ("tree", nx.balanced_tree(3, 3), 2),
  ("even_cycle_10", nx.cycle_graph(10), 2),
  ("odd_cycle_11", nx.cycle_graph(11), 3),
  ("grid_5x7", nx.grid_2d_graph(5, 7), 2),
  ("hypercube_4", nx.hypercube_graph(4), 2),
  ("complete_bipartite_4_6", nx.complete_bipartite_graph(4, 6), 2),
  ("complete_7", nx.complete_graph(7), 7),
  ("wheel_even_rim", nx.wheel_graph(9), 3),  # hub + 8-cycle
  ("wheel_odd_rim", nx.wheel_graph(8), 4),  # hub + 7-cycle
  ("petersen", nx.petersen_graph(), 3),
  ("triangular_lattice", nx.triangular_lattice_graph(3, 4), 3),
]


@pytest.mark.parametrize("graph, chromatic", [k[1:] for k in KNOWN], ids=[k[0] for k in KNOWN])
def test_known_chromatic_numbers(graph, chromatic):
  assert num_colours(graph) == chromatic


@pytest.mark.parametrize("seed", range(40))
def test_no_more_colours_than_networkx_dsatur(seed):
  rng = np.random.default_rng(seed)
  graph = nx.gnp_random_graph(int(rng.integers(2, 40)), float(rng.random()), seed=seed)
  greedy = max(nx.greedy_color(graph, strategy="DSATUR").values()) + 1
  # A lower bound too: no proper colouring uses fewer colours than the largest clique has nodes.
  clique = max(len(c) for c in nx.find_cliques(graph))
  assert clique <= num_colours(graph) <= greedy
