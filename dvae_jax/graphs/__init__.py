"""Boltzmann machines on sparse graphs (quantum-annealer topologies), their chromatic Gibbs sampler
and D-Wave (dimod) interop. ``topologies`` and ``dimod_io`` need the optional ``[dwave]`` extra."""

from dvae_jax.graphs.machine import (
  BoltzmannMachine,
  Graph,
  Moments,
  coupling_matrix,
  energy,
  exact_log_partition,
  exact_moments,
  from_rbm,
  init_machine,
  local_fields,
)

__all__ = [
  "BoltzmannMachine",
  "Graph",
  "Moments",
  "coupling_matrix",
  "energy",
  "exact_log_partition",
  "exact_moments",
  "from_rbm",
  "init_machine",
  "local_fields",
]
