"""Fresh samples of a trained model's prior and how Boltzmann they are: a new population-annealing
run, or the reads of any ``dimod.Sampler`` on the prior exported as a BQM (``graphs.dimod_io``),
with the moment-error diagnostic of those reads against fresh PA references
(``samplers.diagnostics``). The helpers of ``python -m experiments.sample`` (which holds the flags,
so that this module can be imported next to other absl programs).
"""

from __future__ import annotations

import math

# The dimod helpers of experiments.sample live in the library (``samplers.dimod_bridge``).
from dvae_jax.samplers.dimod_bridge import (  # noqa: F401
  DIMOD_SAMPLERS,
  DWAVE_EXTRA,
  DimodConfigError,
  DimodSampleError,
  dimod_machine,
  dimod_prior_samples,
  dimod_sample_kwargs,
  make_dimod_draw,
  make_dimod_sampler,
  parse_dimod_kwargs,
)

PA_GROUPS = 16  # PA's independent sub-populations (they give log Z its standard error)
# The diagnostic's numbers in the --npz / --json output besides the moment groups' ratios
# (diagnostics.MomentError's other fields).
DIAGNOSTIC_SCALARS = ("total", "relative_bias", "reference_log_z", "reference_log_z_stderr")


def whole_groups(replicas: int) -> int:
  """``replicas`` rounded up to a multiple of PA_GROUPS."""
  return PA_GROUPS * math.ceil(replicas / PA_GROUPS)


def prior_samples(key, prior, num: int, population: int, temperatures: int, sweeps: int):
  """``(z [num, latents] float32, message)``: fresh samples of ``prior`` (see the module doc)."""
  import jax
  import jax.numpy as jnp

  from dvae_jax import samplers

  k_anneal, k_pick = jax.random.split(key)
  if not prior.needs_sampler:  # the factorial prior: independent units
    z = jax.random.bernoulli(k_anneal, jax.nn.sigmoid(prior.logits), (num, prior.logits.shape[0]))
    return z.astype(jnp.float32), "factorial prior: exact independent draws"
  replicas = whole_groups(max(num, population))
  result = samplers.pa_log_partition(
    k_anneal, prior, num_replicas=replicas, num_temperatures=temperatures, num_sweeps=sweeps
  )
  pick = jax.random.choice(k_pick, replicas, (num,), replace=False)
  z = result.z[pick]
  message = (
    f"population annealing: {replicas} replicas, {temperatures} temperatures, {sweeps} sweep(s) "
    f"each; log Z = {float(result.log_z):.3f} ± {float(result.stderr):.3f}, "
    f"smallest ESS fraction {float(result.ess_min):.3f}; {num} replicas drawn"
  )
  return z.astype(jnp.float32), message


def dimod_moment_error(key, prior, reads, num_replicas: int, num_temperatures: int):
  """``samplers.diagnostics.population_moment_error`` of the reads [S, n] (node order) as a
  population of ``prior`` at β = 1, against two fresh PA runs of num_replicas (a multiple of
  16) × num_temperatures."""
  import jax.numpy as jnp

  from dvae_jax.samplers import diagnostics

  return diagnostics.population_moment_error(
    key,
    jnp.asarray(reads, prior.dtype),
    prior,
    num_replicas=num_replicas,
    num_temperatures=num_temperatures,
  )


def describe_moment_error(error, prior, num_reads: int, replicas: int, temperatures: int) -> str:
  """The diagnostic's lines for the terminal (replicas: of each reference, a multiple of 16)."""
  ratios = error.groups._asdict().items()
  groups = ", ".join(f"{name} {float(ratio):.2f}" for name, ratio in ratios)
  return (
    f"moment error of the {num_reads} reads against the trained prior (β = 1; two population-"
    f"annealing references of {replicas} replicas × {temperatures} temperatures), in units of the "
    f"noise of {num_reads} independent exact samples (≈ 1 if they are Boltzmann samples): "
    f"{groups}, total {float(error.total):.2f}\n"
    f"implied relative bias of the log-Z gradient from these reads: "
    f"{float(error.relative_bias):.4f} (0 within noise); reference log Z = "
    f"{float(error.reference_log_z):.3f} ± {float(error.reference_log_z_stderr):.3f}"
  )


def diagnostic_values(error) -> dict[str, float]:
  """The diagnostic's numbers by name: each moment group's ratio (an RBM: z1, z2, z1z2; a graph
  prior: unit, edge), then ``DIAGNOSTIC_SCALARS``."""
  values = {name: float(ratio) for name, ratio in error.groups._asdict().items()}
  return {**values, **{k: float(getattr(error, k)) for k in DIAGNOSTIC_SCALARS}}
