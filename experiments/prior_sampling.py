"""Fresh samples of a trained model's prior and how Boltzmann they are: a new population-annealing
run, or the reads of any ``dimod.Sampler`` on the prior exported as a BQM (``graphs.dimod_io``),
with the moment-error diagnostic of those reads against fresh PA references
(``samplers.diagnostics``). The helpers of ``python -m experiments.sample`` (which holds the flags,
so that this module can be imported next to other absl programs).
"""

from __future__ import annotations

import ast
import importlib
import math
import time

from experiments import restore

PA_GROUPS = 16  # PA's independent sub-populations (they give log Z its standard error)
# --dimod_sampler names: (module, attribute). Anything else is given as module.path:Name.
DIMOD_SAMPLERS = {
  "simulated_annealing": ("dwave.samplers", "SimulatedAnnealingSampler"),
  "tabu": ("dwave.samplers", "TabuSampler"),
  "steepest_descent": ("dwave.samplers", "SteepestDescentSampler"),
  "random": ("dimod", "RandomSampler"),
}
DWAVE_EXTRA = "pip install 'dvae_jax[dwave]' (from a checkout: pip install '.[dwave]')"
# The diagnostic's numbers in the --npz / --json output besides the moment groups' ratios
# (diagnostics.MomentError's other fields).
DIAGNOSTIC_SCALARS = ("total", "relative_bias", "reference_log_z", "reference_log_z_stderr")


class DimodSampleError(ValueError):
  """The dimod sampler's answer cannot be used as samples of the prior (the message says why)."""


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


def make_dimod_sampler(spec: str):
  """The ``dimod.Sampler`` named by ``spec``: a key of ``DIMOD_SAMPLERS`` or ``module.path:Name``
  (a Sampler class, constructed without arguments, or instance). UsageError naming the problem:
  dimod / dwave-samplers missing (and the extra that installs them), an unknown name, a module that
  does not import, an object that is not a dimod.Sampler."""
  if spec in DIMOD_SAMPLERS:
    module_name, name = DIMOD_SAMPLERS[spec]
  elif ":" in spec:
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
      raise restore.UsageError(f"invalid --dimod_sampler={spec!r}: expected module.path:Name")
  else:
    raise restore.UsageError(
      f"unknown --dimod_sampler={spec!r}: one of {', '.join(DIMOD_SAMPLERS)}, or module.path:Name "
      "of an importable dimod.Sampler class or instance"
    )
  try:
    import dimod
  except ImportError:
    raise restore.UsageError(
      f"--dimod_sampler needs dimod, which is not installed: {DWAVE_EXTRA}"
    ) from None
  try:
    module = importlib.import_module(module_name)
  except ImportError as err:
    if spec in DIMOD_SAMPLERS:
      raise restore.UsageError(
        f"--dimod_sampler={spec} needs {module_name}, which is not installed ({err}): {DWAVE_EXTRA}"
      ) from None
    raise restore.UsageError(
      f"invalid --dimod_sampler={spec!r}: cannot import {module_name!r} ({err})"
    ) from None
  if not hasattr(module, name):
    raise restore.UsageError(f"invalid --dimod_sampler={spec!r}: {module_name} has no {name!r}")
  sampler = getattr(module, name)
  if isinstance(sampler, type) and issubclass(sampler, dimod.Sampler):
    try:
      sampler = sampler()
    except Exception as err:  # the user's constructor: say which one failed and why
      raise restore.UsageError(
        f"--dimod_sampler={spec}: {name}() failed: {type(err).__name__}: {err}"
      ) from err
  if not isinstance(sampler, dimod.Sampler):
    raise restore.UsageError(
      f"invalid --dimod_sampler={spec!r}: {module_name}.{name} is not a dimod.Sampler class or "
      f"instance (got {type(sampler).__module__}.{type(sampler).__qualname__})"
    )
  return sampler


def parse_dimod_kwargs(text: str | None) -> dict:
  """``{key: value}`` from ``key=value,...``: values are Python literals (strings otherwise);
  commas inside brackets belong to the value (``beta_range=(0.1,1.0)``)."""
  if not text:
    return {}
  items, depth, start = [], 0, 0
  for k, char in enumerate(text):
    depth += (char in "([{") - (char in ")]}")
    if char == "," and depth == 0:
      items.append(text[start:k])
      start = k + 1
  items.append(text[start:])
  if depth:
    raise restore.UsageError(f"invalid --dimod_kwargs={text!r}: unbalanced brackets")
  kwargs = {}
  for item in items:
    key, equals, value = (part.strip() for part in item.partition("="))
    if not equals or not key.isidentifier():
      raise restore.UsageError(
        f"invalid --dimod_kwargs item {item.strip()!r}: expected key=value[,key=value...]"
      )
    if key in kwargs:
      raise restore.UsageError(f"invalid --dimod_kwargs: {key!r} is given twice")
    try:
      kwargs[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      kwargs[key] = value
  return kwargs


def dimod_machine(prior):
  """The prior as a graph machine for ``dimod_io`` (``Prior.graph_machine``: an RBM's nodes are
  (z1; z2)); UsageError for a prior without a sampler (the factorial prior)."""
  if not prior.needs_sampler:
    raise restore.UsageError(
      "--dimod_sampler: the run's prior is factorial (independent units, no couplings), so there "
      "is nothing to sample with dimod; without --dimod_sampler it is sampled exactly"
    )
  return prior.graph_machine()


def dimod_sample_kwargs(sampler, kwargs: dict, num: int, seed: int) -> dict:
  """``kwargs`` checked against ``sampler.parameters``, with ``num_reads`` = num and ``seed`` =
  seed added where the sampler takes them and they are not given."""
  unknown = sorted(set(kwargs) - set(sampler.parameters))
  if unknown:
    raise restore.UsageError(
      f"invalid --dimod_kwargs: {type(sampler).__name__} takes no {', '.join(unknown)} "
      f"(its parameters: {', '.join(sorted(sampler.parameters)) or 'none'})"
    )
  defaults = {"num_reads": num, "seed": seed}
  return {**{k: v for k, v in defaults.items() if k in sampler.parameters}, **kwargs}


def dimod_prior_samples(sampler, m, num: int, beta: float, vartype: str, kwargs: dict):
  """``(reads [S, n] uint8 in m's node order, seconds)``: ``sampler.sample(to_bqm(m, vartype,
  beta), **kwargs)``, every read (expanded by ``num_occurrences``), and the sampler's wall time.
  DimodSampleError when the sampler fails, returns other variables than the BQM's, or fewer than
  ``num`` reads."""
  import numpy as np

  from dvae_jax.graphs import dimod_io

  bqm = dimod_io.to_bqm(m, vartype, beta)
  name = type(sampler).__name__
  start = time.perf_counter()
  try:
    sampleset = sampler.sample(bqm, **kwargs)
  except Exception as err:  # any sampler's own error (bad argument value, a QPU's refusal)
    raise DimodSampleError(f"{name}.sample failed: {type(err).__name__}: {err}") from err
  seconds = time.perf_counter() - start
  got, expected = set(sampleset.variables), set(bqm.variables)
  if got != expected:
    missing, extra = sorted(expected - got, key=str), sorted(got - expected, key=str)
    raise DimodSampleError(
      f"{name} returned samples of other variables than the prior's BQM's {len(expected)}: "
      f"missing {len(missing)} {missing[:5]}, extra {len(extra)} {extra[:5]}"
    )
  reads = dimod_io.samples_to_array(sampleset, m.graph)
  if not np.isin(reads, (0, 1)).all():
    raise DimodSampleError(f"{name} returned values that are not {sampleset.vartype.name} states")
  if reads.shape[0] < num:
    raise DimodSampleError(
      f"{name} returned {reads.shape[0]} reads, fewer than --num={num}; ask for more, e.g. "
      f"--dimod_kwargs=num_reads={num}"
    )
  return reads.astype(np.uint8), seconds


def make_dimod_draw(spec: str, kwargs_text: str, num: int, prior):
  """``draw(seed, m) -> reads [num, n]`` for ``samplers.external``: the dimod sampler named by
  ``spec`` on m's BINARY BQM at β = 1 (``bqm.energy = E``), with ``kwargs_text``'s keyword
  arguments, ``num_reads`` = num and ``seed`` = seed where it takes them and they are not given.
  ``prior`` (the run's initial prior) fixes the graph an RBM is sampled on, built here because
  ``draw`` runs inside a host callback, where JAX must not be called. The all-zero machine (the
  start of training) is not sent: its law is uniform, drawn exactly from ``seed`` (an annealer
  given an all-zero BQM has no energy scale; simulated annealing warns and picks one). The sampler
  and the keyword names are checked now (UsageError)."""
  import numpy as np

  from dvae_jax import priors

  sampler = make_dimod_sampler(spec)
  kwargs = parse_dimod_kwargs(kwargs_text)
  dimod_sample_kwargs(sampler, kwargs, num, 0)  # unknown keywords fail before training starts
  graph = dimod_machine(prior).graph

  def draw(seed: int, m):
    if isinstance(m, priors.RBM):
      m = priors.BoltzmannMachine(np.concatenate([m.b1, m.b2]), np.reshape(m.w, -1), graph)
    if not (np.any(m.b) or np.any(m.w)):
      return np.random.default_rng(seed).integers(0, 2, (num, m.num_nodes), dtype=np.uint8)
    call = dimod_sample_kwargs(sampler, kwargs, num, seed)
    return dimod_prior_samples(sampler, m, num, 1.0, "BINARY", call)[0]

  return draw


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
