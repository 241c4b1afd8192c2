"""Priors over the binary latents and their relaxed marginals (math.md §2–§4).

``base.Prior`` is the contract (energy and log-probability of z [..., n], the training log Z
surrogate, exact log Z and moments for small ones, the block Gibbs sweep with its colouring, the
mean-field log Z_ζ and the Gaussian-integral pieces of DVAE#, the primitives of the discrete KL,
``needs_sampler``); one module per kind implements it:

- ``rbm.RBM(b1, b2, w)``: the bipartite Boltzmann machine over z = [z1, z2] (z1 the first half of
  the latent vector, ``models.StructSpec.n1/n2``), with its two-sided block Gibbs sweep;
- ``factorial.FactorialBernoulli(logits)``: independent units, p(z_i = 1) = σ(logits_i); analytic
  log Z, no sampler;
- ``graph.BoltzmannMachine(b, w, graph)``: a Boltzmann machine on any graph (``dvae_jax.graphs``),
  with its chromatic sweep; ``rbm.graph_machine`` is the RBM on K_{n1,n2}.

Objectives, samplers and evaluation call the contract and never ask which kind they have. Adding a
kind is one module with one class (tests/priors/test_new_kind.py registers a dense Boltzmann
machine).
"""

from __future__ import annotations

from dvae_jax.priors import base, factorial, graph, rbm
from dvae_jax.priors.base import (
  GI_EIGEN_MARGIN,
  MEAN_FIELD_ITERATIONS,
  RAO_BLACKWELL_MODES,
  Prior,
  bernoulli_entropy,
  bernoulli_kl,
  bernoulli_log_prob,
)
from dvae_jax.priors.factorial import FactorialBernoulli
from dvae_jax.priors.graph import BoltzmannMachine
from dvae_jax.priors.rbm import RBM

# init_prior's kinds: the all-zero prior on a latent vector of a struct's size.
_INITIALISERS = {
  "rbm": lambda spec: rbm.init_rbm(spec.n1, spec.n2),
  "factorial": lambda spec: factorial.init_factorial(spec.num_latent),
}
KINDS = tuple(_INITIALISERS)


def init_prior(kind: str, struct_spec) -> Prior:
  """All-zero prior for a struct (math.md §2: the RBM starts at 0).

  Args:
    kind: ``'rbm'`` (sides ``struct_spec.n1``, ``struct_spec.n2``) or ``'factorial'``.
    struct_spec: a ``models.StructSpec`` (anything with ``n1``, ``n2``, ``num_latent``).
  """
  if kind not in _INITIALISERS:
    raise ValueError(f"unknown prior kind {kind!r}; valid kinds: 'rbm', 'factorial'")
  return _INITIALISERS[kind](struct_spec)


__all__ = [
  "GI_EIGEN_MARGIN",
  "KINDS",
  "MEAN_FIELD_ITERATIONS",
  "RAO_BLACKWELL_MODES",
  "RBM",
  "BoltzmannMachine",
  "FactorialBernoulli",
  "Prior",
  "base",
  "bernoulli_entropy",
  "bernoulli_kl",
  "bernoulli_log_prob",
  "factorial",
  "graph",
  "init_prior",
  "rbm",
]
