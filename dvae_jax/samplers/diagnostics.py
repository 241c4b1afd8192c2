"""Is the training sampler's population in equilibrium? Moment errors in units of sampling noise.

The gradient of log Z is the model expectation of the sufficient statistics s(z) (math.md §2; for
an RBM (z1, z2, z1 z2ᵀ), for a graph machine (z_i, z_i z_j per edge): the prior's
``sample_moments``, a NamedTuple of moment groups), and training estimates it by the mean s̄ over
the persistent population's S samples.
`moment_error` compares s̄ with two fresh, independent population-annealing runs (references A and
B) for the population's own parameters, and expresses the error in units of the noise that S
independent exact samples would show:

  ratio² = Σ_k [(s̄_k − r̄_k)² − ((r_A,k − r_B,k)/2)²] / Σ_k v_k / S,

with r̄ = (r_A + r_B)/2 and v_k = r̄_k (1 − r̄_k) the variance of the binary statistic k. The
subtracted term removes the references' own noise: for independent references of equal law,
E[((r_A − r_B)/2)²] = var(r̄), and if s̄ were S exact samples E[(s̄ − r̄)²] = v/S + var(r̄), so an
exact population reads E[ratio²] = 1 whatever the size of the references (and whatever the
correlations that resampling leaves inside a reference). A population that lags its parameters
reads 1 + ‖bias‖²/(Σ v/S). The sums pool the components of each moment group (the fields of the
prior's moments: z1, z2, z1z2 for an RBM; unit, edge for a graph machine), so units that are frozen
at 0 or 1 (v ≈ 0) neither inflate nor dilute the ratio. `ratio` is the square root
(clipped at 0). Limits: the references must be accurate (a bias they share is not seen), and the
statistic has sampling noise: its sd is ≈ √(2/n_eff) · (1 + S var(r̄)/v) for n_eff effectively
independent components (tested in tests/samplers/test_diagnostics.py).

The implied relative bias of the log-Z gradient is the noise-free part of the error relative to
the gradient itself,

  relative_bias = √max(Σ_k [(s̄_k − r̄_k)² − ((r_A,k − r_B,k)/2)² − v_k/S], 0) / ‖r̄‖,

over all components of the parameters: 0 within noise, 0.01 for a systematic error of 1% of
‖∇log Z‖.

In training the parameters are updated after the sampler's step, so the saved prior is one
optimiser step ahead of the population; one Adam step moved E[z1] by 2× the noise of 1000 samples on
the default run. Always diagnose against the sampler state's own `params` (`population_moment_error`
does).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dvae_jax.samplers import chains, population_annealing

Array = jax.Array
Machine = Any  # a prior (priors.base.Prior)
Moments = Any  # a prior's moments: a NamedTuple of arrays (``Prior.sample_moments``)

# Independent groups of each reference anneal (its log Z standard error); replicas must divide.
NUM_GROUPS = 16


class MomentError(NamedTuple):
  """Population moment errors in units of the noise of as many independent exact samples.

  Attributes:
    groups: the scalar ratio of each moment group (≈ 1 in equilibrium), as the prior's moments
      NamedTuple (an RBM's fields z1, z2, z1z2; a graph machine's unit, edge).
    total: scalar ratio pooled over all groups.
    relative_bias: scalar implied ‖bias of the log-Z gradient‖ / ‖∇ log Z‖ (0 within noise).
    reference_log_z: scalar log Z of the parameters: the mean of the two references' estimates.
    reference_log_z_stderr: scalar standard error of reference_log_z.
  """

  groups: Moments
  total: Array
  relative_bias: Array
  reference_log_z: Array
  reference_log_z_stderr: Array


def _group_terms(population: Moments, reference_a: Moments, reference_b: Moments, num: int):
  """Per moment group and pooled: (Σ (s̄ − r̄)² − Σ e², Σ v / S, Σ r̄²), e = (r_A − r_B)/2."""
  terms = []
  for pop, ref_a, ref_b in zip(population, reference_a, reference_b, strict=True):
    mean = 0.5 * (ref_a + ref_b)
    err2 = jnp.sum(jnp.square(pop - mean)) - jnp.sum(jnp.square(0.5 * (ref_a - ref_b)))
    terms.append((err2, jnp.sum(mean * (1.0 - mean)) / num, jnp.sum(jnp.square(mean))))
  pooled = tuple(sum(t[i] for t in terms) for i in range(3))
  return terms + [pooled]


def squared_ratios(
  population: Moments, num_samples: int, reference_a: Moments, reference_b: Moments
) -> tuple[Array, ...]:
  """Unclipped ratio² of each moment group, then pooled: unbiased for 1 on an exact population
  (each can be negative by chance; `moment_error` reports the clipped square roots). Arguments as
  there."""
  terms = _group_terms(population, reference_a, reference_b, num_samples)
  return tuple(err2 / noise2 for err2, noise2, _ in terms)


def moment_error(
  population: Moments,
  num_samples: int,
  reference_a: Moments,
  reference_b: Moments,
  reference_log_z: Array = jnp.nan,
  reference_log_z_stderr: Array = jnp.nan,
) -> MomentError:
  """The estimator of the module docstring from precomputed moments.

  Args:
    population: sample means of the population being diagnosed (the prior's `sample_moments`).
    num_samples: S, the number of samples behind `population` (the noise unit is that of S
      independent exact samples).
    reference_a, reference_b: sample means of two independent reference samplers of the same law
      (e.g. two fresh anneals), for the same parameters.
    reference_log_z, reference_log_z_stderr: passed through to the result.

  Returns:
    MomentError.
  """
  terms = _group_terms(population, reference_a, reference_b, num_samples)
  ratios = [jnp.sqrt(jnp.maximum(err2, 0.0) / noise2) for err2, noise2, _ in terms]
  err2, noise2, norm2 = terms[-1]
  return MomentError(
    groups=type(population)(*ratios[:-1]),
    total=ratios[-1],
    relative_bias=jnp.sqrt(jnp.maximum(err2 - noise2, 0.0) / norm2),
    reference_log_z=jnp.asarray(reference_log_z),
    reference_log_z_stderr=jnp.asarray(reference_log_z_stderr),
  )


@functools.partial(jax.jit, static_argnames=("num_replicas", "num_temperatures", "num_groups"))
def population_moment_error(
  key: Array,
  z: Array,
  m: Machine,
  num_replicas: int = 2048,
  num_temperatures: int = 1000,
  num_groups: int = NUM_GROUPS,
) -> MomentError:
  """Moment error of the population z [S, n] against two fresh anneals for the prior m.

  The references are two independent `population_annealing.pa_log_partition` runs (linear
  schedule, one sweep per temperature) of `num_replicas` replicas each; their log Z estimates are
  averaged into `reference_log_z` (a second, independent log Z of m besides the evaluation's AIS).
  Cost: 2 · num_replicas · num_temperatures block Gibbs chain-sweeps (defaults, also the runner's:
  4.1M, 4× the evaluation's AIS; 3.2 s of a 67 s evaluation of 1-layer-lin on the 2-core CPU).

  Args:
    key: PRNG key.
    z: the population, e.g. a `PersistentState`'s z.
    m: the parameters the population is meant to sample: the sampler state's `params`, not the
      optimiser's prior (which is one update ahead during training).
    num_replicas: replicas of each reference anneal (a multiple of num_groups).
    num_temperatures: temperatures of each reference anneal.
    num_groups: independent groups of each anneal (for its log Z standard error).

  Returns:
    MomentError.
  """
  chains.check_chains(z, m, "the population z")
  key_a, key_b = jax.random.split(key)
  anneal = functools.partial(
    population_annealing.pa_log_partition,
    m=m,
    num_replicas=num_replicas,
    num_temperatures=num_temperatures,
    num_groups=num_groups,
  )
  a, b = anneal(key_a), anneal(key_b)
  log_z = jnp.logaddexp(a.log_z, b.log_z) - jnp.log(2.0)
  stderr = 0.5 * jnp.sqrt(jnp.square(a.stderr) + jnp.square(b.stderr))
  return moment_error(
    m.sample_moments(z.astype(m.dtype)),
    z.shape[0],
    m.sample_moments(a.z),
    m.sample_moments(b.z),
    log_z,
    stderr,
  )


def state_moment_error(key: Array, state, **options) -> MomentError:
  """`population_moment_error` of a persistent sampler state (z and its own params)."""
  return population_moment_error(key, state.z, state.params, **options)
