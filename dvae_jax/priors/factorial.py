"""The factorial Bernoulli prior: independent units, p(z_i = 1) = σ(logits_i) (math.md §2, §4).

A baseline without couplings. Its log-partition is analytic, log Z = Σ_i softplus(l_i), so it
needs no sampler (``needs_sampler`` is False) and ignores every ``log_z`` argument; its relaxed
marginals are exact per unit. The Gibbs sweep is one block (all units) and draws exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dvae_jax import smoothing as smoothing_lib
from dvae_jax.graphs import machine as machine_lib
from dvae_jax.priors import base
from dvae_jax.priors import graph as graph_lib
from dvae_jax.samplers import gibbs as gibbs_lib

Array = jax.Array


class Moments(NamedTuple):
  """E[z] [n]: the gradient of log Z with respect to the logits."""

  unit: Array


class FactorialBernoulli(NamedTuple):
  """Independent Bernoulli prior over the latent vector: p(z_i = 1) = σ(logits_i).

  Attributes:
    logits: [n] natural parameters; 0 is the uniform prior.
  """

  logits: Array

  @property
  def num_units(self) -> int:
    return self.logits.shape[-1]

  @property
  def dtype(self):
    return self.logits.dtype

  @property
  def needs_sampler(self) -> bool:
    return False

  def check(self) -> None:
    if self.logits.ndim != 1:
      raise ValueError(f"FactorialBernoulli expects logits [n], got shape {self.logits.shape}")

  # ---- the discrete model
  def energy(self, z: Array) -> Array:
    """E(z) = −l·z: [..., n] → [...]."""
    base.check_width(self, z, "z")
    return -(z @ self.logits)

  def log_prob(self, z: Array, log_z: Array | None = None) -> Array:
    """Σ_i log Bernoulli(z_i; σ(l_i)): [..., n] → [...] (``log_z`` is ignored)."""
    base.check_width(self, z, "z")
    return jnp.sum(base.bernoulli_log_prob(z, self.logits), axis=-1)

  def training_log_partition(self, z: Array | None = None, log_z: Array | None = None) -> Array:
    """log Z = Σ_i softplus(l_i), analytic (no samples needed)."""
    return jnp.sum(jax.nn.softplus(self.logits))

  def rao_blackwellize(self, z: Array, mode: str) -> Array:
    return base.rao_blackwell_none_only(z, mode, "a factorial prior")

  def exact_log_partition(self) -> Array:
    return self.training_log_partition()

  def exact_moments(self) -> Moments:
    return Moments(jax.nn.sigmoid(self.logits))

  def sample_moments(self, z: Array) -> Moments:
    return Moments(jnp.mean(z, 0))

  # ---- sampling: one block, an exact draw per sweep
  def colour_classes(self) -> tuple[np.ndarray, ...]:
    return (np.arange(self.num_units, dtype=np.int32),)

  def init_chains(self, key: Array, num_chains: int) -> Array:
    if num_chains < 1:
      raise ValueError(f"num_chains must be >= 1, got {num_chains}")
    bits = gibbs_lib.random_bits(key, (num_chains, self.num_units))
    return (bits >> 31).astype(self.dtype)

  def run(self, key: Array, z: Array, num_sweeps: int, beta=1.0) -> Array:
    base.check_chains(self, z)
    gibbs_lib.check_beta(beta)
    if num_sweeps < 0:
      raise ValueError(f"num_sweeps must be >= 0, got {num_sweeps}")
    if num_sweeps == 0:
      return z
    # Independent units: the last sweep's draw is the result, whatever came before.
    key = jax.random.split(key, num_sweeps)[-1]
    logits = jnp.broadcast_to(beta * self.logits, z.shape)
    return gibbs_lib.bernoulli_logits(key, logits).astype(z.dtype)

  def run_with_energy(self, key: Array, z: Array, num_sweeps: int, beta=1.0):
    z = self.run(key, z, num_sweeps, beta)
    return z, self.energy(z)

  # ---- relaxations
  def mean_field_log_partition(self, a: Array, num_iterations: int = 1) -> Array:
    """Exact here: log Σ_z exp(l·z + a·z) = Σ_i softplus(l_i + a_i)."""
    base.check_num_iterations(num_iterations)
    return jnp.sum(jax.nn.softplus(self.logits + a), -1)

  def field_log_partition_exact(self, a: Array) -> Array:
    return jnp.sum(jax.nn.softplus(self.logits + a), -1)

  def relaxed_log_prob(
    self,
    smoothing,
    zeta: Array,
    log_z: Array | None = None,
    num_iterations: int = base.MEAN_FIELD_ITERATIONS,
    exact: bool = False,
  ) -> Array:
    """Exact per unit: log p(ζ_i) = log((1 − p_i) r(ζ_i|0) + p_i r(ζ_i|1)); ``log_z`` ignored."""
    base.check_width(self, zeta, "zeta")
    return jnp.sum(smoothing_lib.mixture_log_prob_logits(smoothing, zeta, self.logits), axis=-1)

  def gaussian_integral_lambda(self, beta: float) -> Array:
    """λ = max(0 + GI_EIGEN_MARGIN, β): no couplings."""
    return jnp.maximum(jnp.zeros((), self.dtype) + base.GI_EIGEN_MARGIN, beta)

  def gaussian_integral_log_prob(
    self, zeta: Array, beta: float, log_z: Array | None = None
  ) -> Array:
    """The per-unit mixture (1 − p_i) N(ζ_i; 0, 1/λ) + p_i N(ζ_i; 1, 1/λ) (math.md §4, W = 0 in
    ``rbm.RBM.gaussian_integral_log_prob``'s derivation); ``log_z`` ignored."""
    base.check_width(self, zeta, "zeta")
    lam = self.gaussian_integral_lambda(beta)
    n = zeta.shape[-1]
    log_norm = -0.5 * n * jnp.log(2.0 * math.pi / lam)
    a = self.logits
    log_z_fact = jnp.sum(jax.nn.softplus(a))
    field = lam * zeta + a - 0.5 * lam
    return (
      log_norm - 0.5 * lam * jnp.sum(zeta**2, -1) + jnp.sum(jax.nn.softplus(field), -1) - log_z_fact
    )

  def expected_neg_energy(self, mu: Array, num_groups: int, across: base.Across) -> Array:
    """l·μ (no couplings: ``across`` is not called)."""
    return mu @ self.logits

  def coupling_sum_of_squares(self) -> Array:
    return jnp.zeros((), self.dtype)

  def graph_machine(self):
    """The prior as a machine on the graph without edges."""
    n = self.num_units
    return graph_lib.BoltzmannMachine(
      self.logits, jnp.zeros((0,), self.dtype), machine_lib.Graph(n, np.zeros((0, 2), np.int64))
    )


def init_factorial(num_units: int, dtype=jnp.float32) -> FactorialBernoulli:
  """The uniform prior (all logits 0)."""
  if num_units < 1:
    raise ValueError(f"a factorial prior needs num_units >= 1, got {num_units}")
  return FactorialBernoulli(jnp.zeros((num_units,), dtype))
