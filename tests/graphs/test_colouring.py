"""Colourings: proper on random graphs (hypothesis), 2 when bipartite, few on D-Wave graphs."""

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from dvae_jax.graphs import colouring


@st.composite
def graphs(draw):
  n = draw(st.integers(1, 30))
  p = draw(st.floats(0.0, 1.0))
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  i, j = np.triu_indices(n, 1)
  keep = rng.random(len(i)) < p
  return n, np.stack([i[keep], j[keep]], 1)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(graphs())
def test_colouring_is_proper_and_dsatur_bound(graph):
  n, edges = graph
  c = colouring.colour_graph(n, edges)
  assert c.shape == (n,) and colouring.is_proper(edges, c)
  d = colouring.dsatur_colouring(n, edges)
  assert colouring.is_proper(edges, d)
  degree = np.bincount(edges.ravel(), minlength=n)
  assert d.max() + 1 <= degree.max(initial=0) + 1  # greedy never needs more than Δ + 1


def test_bipartite_detection():
  even_cycle = np.array([(i, (i + 1) % 6) for i in range(6)])
  odd_cycle = np.array([(i, (i + 1) % 5) for i in range(5)])
  c = colouring.bipartite_colouring(6, even_cycle)
  assert c is not None and colouring.is_proper(even_cycle, c) and c.max() == 1
  assert colouring.bipartite_colouring(5, odd_cycle) is None
  assert colouring.colour_graph(5, odd_cycle).max() == 2
  assert not colouring.is_proper(odd_cycle, np.zeros(5, int))


@pytest.mark.parametrize(
  "name, args, max_colours",
  [("chimera", (16, 16, 4), 2), ("pegasus", (6,), 4), ("zephyr", (4, 4), 5), ("zephyr", (1, 1), 5)],
)
def test_dwave_topologies_get_few_colours(name, args, max_colours):
  pytest.importorskip("dwave_networkx", reason="the [dwave] extra is not installed")
  from dvae_jax.graphs import topologies

  g = getattr(topologies, name)(*args)
  assert colouring.is_proper(g.edges, g.colours)
  assert g.num_colours <= max_colours
