"""The two machines the samplers accept, an `rbm.RBM` or a graph `graphs.BoltzmannMachine`, behind
one small interface (MATH.md §2–§3), so that AIS, population annealing (fixed, adaptive,
persistent), PCD, the diagnostics and the log Z tracker are written once with the machine as a
parameter.

Chains of either machine are a `gibbs.GibbsState(z1, z2)`, 0/1 in the parameters' dtype:
- RBM (n1, n2): z1 [S, n1], z2 [S, n2], as everywhere in `samplers`;
- graph machine with n nodes: z1 = z [S, n] (every unit, in the machine's node order,
  `Graph.labels`) and z2 an empty [S, 0] array of the same dtype.
So `jnp.concatenate([z1, z2], -1)` is the latent vector [S, n] of either machine, and every
sampler's public state and result types (PAState, PAResult, AISResult, PersistentState, ...) keep
their z1/z2 fields; the other modules refer here for this convention.

Sweeps: the RBM's two-sided block Gibbs (`gibbs`), the graph's chromatic block Gibbs
(`graphs.gibbs`, colours in order; for a bipartite graph the same two-sided sweep). Both leave
p_β(z) ∝ exp(−β E(z)) invariant and start from the exact β = 0 (uniform) distribution, whose
log Z_0 = n log 2 (`uniform_log_partition`).

The dispatch is on the Python type, at trace time: the RBM branch calls exactly the functions the
samplers called before (results bit-identical, speed unchanged). Key first, then chains, then the
machine, as in every kernel.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from dvae_jax import rbm as rbm_lib
from dvae_jax.graphs import gibbs as graph_gibbs
from dvae_jax.graphs import machine as graph_lib
from dvae_jax.samplers import gibbs

Array = jax.Array
RBM = rbm_lib.RBM
BoltzmannMachine = graph_lib.BoltzmannMachine
Machine = RBM | BoltzmannMachine
GibbsState = gibbs.GibbsState


def is_graph(m: Machine) -> bool:
  """True for a graph `BoltzmannMachine`, False for an `RBM`; TypeError for anything else."""
  if isinstance(m, BoltzmannMachine):
    return True
  if isinstance(m, RBM):
    return False
  if isinstance(m, GibbsState):
    raise TypeError("sampler kernels take (key, state, m, ...): the state comes before the machine")
  raise TypeError(
    f"expected an rbm.RBM or a graphs.BoltzmannMachine, got {type(m).__module__}."
    f"{type(m).__qualname__}"
  )


def check(m: Machine) -> None:
  """Raises TypeError for a non-machine, ValueError for inconsistent parameter shapes."""
  if is_graph(m):
    graph_lib.check_machine(m)
  else:
    rbm_lib.check_rbm(m)


def dtype(m: Machine):
  """The parameters' dtype (that of the chains and energies)."""
  return m.b.dtype if is_graph(m) else m.w.dtype


def num_units(m: Machine) -> int:
  """n: the number of binary units (n1 + n2 for an RBM)."""
  return m.num_nodes if is_graph(m) else m.n1 + m.n2


def chain_sizes(m: Machine) -> tuple[int, int]:
  """(width of z1, width of z2): (n1, n2) for an RBM, (n, 0) for a graph machine."""
  return (m.num_nodes, 0) if is_graph(m) else (m.n1, m.n2)


def describe(m: Machine) -> str:
  """A short description for error messages."""
  if is_graph(m):
    return f"a graph machine with n={m.num_nodes} nodes (z1 [S, {m.num_nodes}], z2 [S, 0])"
  return f"an RBM with n1={m.n1}, n2={m.n2}"


def check_chains(chains: GibbsState, m: Machine, what: str = "chains") -> None:
  """Raises ValueError unless chains (z1, z2) are [S, ·] arrays of the widths `chain_sizes(m)`."""
  check(m)
  n1, n2 = chain_sizes(m)
  z1, z2 = chains
  if z1.ndim != 2 or z2.ndim != 2 or z1.shape[1] != n1 or z2.shape != (z1.shape[0], n2):
    raise ValueError(
      f"{what} hold z1 {tuple(z1.shape)}, z2 {tuple(z2.shape)}, which do not match {describe(m)}"
      f": expected z1 [S, {n1}], z2 [S, {n2}]"
    )


def uniform_log_partition(m: Machine) -> float:
  """log Z_0 = n log 2 of the all-zero machine (the β = 0 end of every annealing path)."""
  return num_units(m) * math.log(2.0)


def init_chains(key: Array, m: Machine, num_chains: int) -> GibbsState:
  """num_chains chains from the uniform distribution (exact at β = 0): GibbsState [S, ·]."""
  if not is_graph(m):
    return gibbs.init(key, m, num_chains)
  z = graph_gibbs.init(key, m, num_chains)
  return GibbsState(z, jnp.zeros((num_chains, 0), z.dtype))


def energy(m: Machine, chains: GibbsState) -> Array:
  """E(z) [S] at β = 1 of chains [S, ·] (machine first, as `rbm.energy`)."""
  if is_graph(m):
    return graph_lib.energy(m, chains.z1)
  return rbm_lib.energy(m, chains.z1, chains.z2)


def run(key: Array, chains: GibbsState, m: Machine, num_sweeps: int, beta=1.0) -> GibbsState:
  """num_sweeps Gibbs sweeps at inverse temperature β (`gibbs.run` / `graphs.gibbs.run`)."""
  if not is_graph(m):
    return gibbs.run(key, chains, m, num_sweeps, beta)
  if num_sweeps == 0:
    return chains
  return chains._replace(z1=graph_gibbs.run(key, chains.z1, m, num_sweeps, beta))


def run_with_energy(
  key: Array, chains: GibbsState, m: Machine, num_sweeps: int, beta=1.0
) -> tuple[GibbsState, Array]:
  """num_sweeps (≥ 1) sweeps at β, returning the final chains and their energies [S] at β = 1.

  The annealing samplers' move step; no input checks (their callers validate once).
  """
  if not is_graph(m):
    return gibbs.run_with_energy(key, chains, m, num_sweeps, beta)
  z, e = graph_gibbs.run_with_energy(key, chains.z1, m, num_sweeps, beta)
  return chains._replace(z1=z), e


def rbm_sample_moments(z1: Array, z2: Array) -> rbm_lib.Moments:
  """Means over the samples of (z1, z2, z1 z2ᵀ) for RBM chains z1 [S, n1], z2 [S, n2]."""
  return rbm_lib.Moments(jnp.mean(z1, 0), jnp.mean(z2, 0), (z1.T @ z2) / z1.shape[0])


def sample_moments(m: Machine, chains: GibbsState) -> rbm_lib.Moments:
  """Sample means of the sufficient statistics (the gradient of log Z's surrogate), as an
  `rbm.Moments`: for an RBM (E[z1] [n1], E[z2] [n2], E[z1 z2ᵀ] [n1, n2]); for a graph machine
  (E[z_i] [n], an empty [0], E[z_i z_j] per edge [E])."""
  z1, z2 = chains
  if not is_graph(m):
    return rbm_sample_moments(z1, z2)
  i, j = m.graph.edges[:, 0], m.graph.edges[:, 1]
  return rbm_lib.Moments(jnp.mean(z1, 0), jnp.mean(z2, 0), jnp.mean(z1[:, i] * z1[:, j], 0))


def exact_moments(m: Machine) -> rbm_lib.Moments:
  """Exact moments by enumeration (small machines), in the layout of `sample_moments`."""
  if not is_graph(m):
    return rbm_lib.exact_moments(m)
  exact = graph_lib.exact_moments(m)
  return rbm_lib.Moments(exact.z, jnp.zeros((0,), exact.z.dtype), exact.zz)


def exact_log_partition(m: Machine) -> Array:
  """Exact log Z by enumeration (small machines)."""
  return graph_lib.exact_log_partition(m) if is_graph(m) else rbm_lib.exact_log_partition(m)
