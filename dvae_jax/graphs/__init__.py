"""Sparse graphs (quantum-annealer topologies) for Boltzmann machines, their chromatic Gibbs sweep
and D-Wave (dimod) interop. The machine itself, a prior, is ``dvae_jax.priors.graph``.
``topologies`` and ``dimod_io`` need the optional ``[dwave]`` extra."""

from dvae_jax.graphs.machine import (
  Graph,
  Moments,
  coupling_matrix,
  energy,
  exact_log_partition,
  exact_moments,
  local_fields,
)

__all__ = [
  "Graph",
  "Moments",
  "coupling_matrix",
  "energy",
  "exact_log_partition",
  "exact_moments",
  "local_fields",
]
