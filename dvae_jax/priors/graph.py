"""The graph prior: a Boltzmann machine on any graph, e.g. a quantum annealer's Chimera / Pegasus /
Zephyr (math.md §2–§4; ``dvae_jax.graphs`` holds the graph, its colouring and the sweep).

Over z ∈ {0,1}^n with biases b [n] and one coupling w_e per edge e = (i, j), i < j:

  E(z) = −bᵀz − Σ_{e=(i,j)} w_e z_i z_j = −bᵀz − ½ zᵀW_f z,

W_f the symmetric coupling matrix (``graphs.machine.coupling_matrix``). Node k is latent unit k.
The RBM is the special case K_{n1,n2} (``rbm.graph_machine``), for which every method gives the
RBM's result (tests/priors). The sweep is the chromatic block Gibbs sweep of ``graphs.gibbs``
(colours in order); the relaxations use the dense W_f (``base``'s helpers, n ≲ 2000).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dvae_jax.graphs import gibbs as graph_gibbs
from dvae_jax.graphs import machine as machine_lib
from dvae_jax.priors import base

Array = jax.Array
Graph = machine_lib.Graph
Moments = machine_lib.Moments


@struct.dataclass
class BoltzmannMachine:
  """Parameters of a Boltzmann machine on ``graph``: b [n], w [E] (edge order of ``graph.edges``).

  A pytree whose leaves are (b, w); ``graph`` is static (hashable), so jit caches per graph and
  gradients flow into b and w only. E(z) = −bᵀz − Σ_e w_e z_i z_j.
  """

  b: Array
  w: Array
  graph: Graph = struct.field(pytree_node=False)

  @property
  def num_nodes(self) -> int:
    return self.graph.num_nodes

  @property
  def num_units(self) -> int:
    return self.graph.num_nodes

  @property
  def dtype(self):
    return self.b.dtype

  @property
  def needs_sampler(self) -> bool:
    return True

  def check(self) -> None:
    machine_lib.check_machine(self)

  # ---- the discrete model (math.md §2)
  def energy(self, z: Array) -> Array:
    """E(z): z [..., n] → [...] (``graphs.machine.energy``)."""
    return machine_lib.energy(self, z)

  def log_prob(self, z: Array, log_z: Array | None) -> Array:
    return base.boltzmann_log_prob(self, z, log_z)

  def training_log_partition(self, z: Array | None, log_z: Array | None) -> Array:
    """``base.log_partition_surrogate``: gradient the sample means of (z_i, z_i z_j per edge)."""
    return base.log_partition_surrogate(self, z, log_z)

  def rao_blackwellize(self, z: Array, mode: str) -> Array:
    return base.rao_blackwell_none_only(z, mode, "a graph prior")

  def exact_log_partition(self) -> Array:
    return machine_lib.exact_log_partition(self)

  def exact_moments(self) -> Moments:
    return machine_lib.exact_moments(self)

  def sample_moments(self, z: Array) -> Moments:
    """Sample means of E[z_i] [n] and E[z_i z_j] per edge [E] of chains z [S, n]."""
    i, j = self.graph.edges[:, 0], self.graph.edges[:, 1]
    return Moments(jnp.mean(z, 0), jnp.mean(z[:, i] * z[:, j], 0))

  def coupling_matrix(self) -> Array:
    return machine_lib.coupling_matrix(self)

  # ---- sampling (math.md §3): the chromatic sweep of graphs.gibbs
  def colour_classes(self) -> tuple[np.ndarray, ...]:
    g = self.graph
    return tuple(g.colour_class(c) for c in range(g.num_colours))

  def init_chains(self, key: Array, num_chains: int) -> Array:
    return graph_gibbs.init(key, self, num_chains)

  def run(self, key: Array, z: Array, num_sweeps: int, beta=1.0) -> Array:
    if num_sweeps == 0:
      base.check_chains(self, z)
      return z
    return graph_gibbs.run(key, z, self, num_sweeps, beta)

  def run_with_energy(self, key: Array, z: Array, num_sweeps: int, beta=1.0):
    return graph_gibbs.run_with_energy(key, z, self, num_sweeps, beta)

  # ---- relaxations (math.md §4)
  def mean_field_log_partition(
    self, a: Array, num_iterations: int = base.MEAN_FIELD_ITERATIONS
  ) -> Array:
    """``base.colour_mean_field_log_partition`` over the graph's colouring (colours in order).

    For ``rbm.graph_machine`` (z2 is colour 0, z1 colour 1) the iterates are those of
    ``rbm.mean_field_log_partition``: m2 then m1.
    """
    base.check_num_iterations(num_iterations)
    base.check_width(self, a, "fields")
    return base.colour_mean_field_log_partition(
      self.b, self.coupling_matrix(), self.colour_classes(), a, num_iterations
    )

  def field_log_partition_exact(self, a: Array) -> Array:
    # machine.exact_log_partition checks the size (n − the largest colour class).
    return machine_lib.exact_log_partition(self.replace(b=self.b + a))

  def relaxed_log_prob(
    self,
    smoothing,
    zeta: Array,
    log_z: Array | None,
    num_iterations: int = base.MEAN_FIELD_ITERATIONS,
    exact: bool = False,
  ) -> Array:
    return base.boltzmann_relaxed_log_prob(self, smoothing, zeta, log_z, num_iterations, exact)

  def gaussian_integral_lambda(self, beta: float) -> Array:
    """λ from W_f's largest |eigenvalue| (for ``rbm.graph_machine`` the RBM's σ_max(W))."""
    return base.dense_gaussian_integral_lambda(self.coupling_matrix(), beta)

  def gaussian_integral_log_prob(self, zeta: Array, beta: float, log_z: Array | None) -> Array:
    base.check_width(self, zeta, "zeta")
    return base.dense_gaussian_integral_log_prob(
      self.b, self.coupling_matrix(), zeta, beta, log_z
    )

  def expected_neg_energy(self, mu: Array, num_groups: int, across: base.Across) -> Array:
    """b·μ + ½ μᵀW_same μ + across(W_later, all units, all units) (``base.group_couplings``).

    Given ζ_<g the group g is factorial, so E[z_i z_j] = μ_i μ_j inside a group; an edge from an
    earlier group to a later one is the method's ``across``. With one group every edge is inside.
    For ``rbm.graph_machine`` with G ≥ 2 groups, W_later = [[0, W], [0, 0]] and W_same = 0.
    """
    return base.dense_expected_neg_energy(
      self.b, self.coupling_matrix(), mu, num_groups, across
    )

  def coupling_sum_of_squares(self) -> Array:
    """Σ_e w_e² (each edge once, so ``rbm.graph_machine`` gives the RBM's penalty)."""
    return jnp.sum(jnp.square(self.w))

  def graph_machine(self) -> BoltzmannMachine:
    return self


def init_machine(graph: Graph, dtype=jnp.float32) -> BoltzmannMachine:
  """All-zero parameters (uniform p, log Z = n log 2), as ``rbm.init_rbm``."""
  return BoltzmannMachine(
    jnp.zeros((graph.num_nodes,), dtype), jnp.zeros((graph.num_edges,), dtype), graph
  )
