"""dimod samplers (simulated annealing, tabu, a QPU, any ``dimod.Sampler``) as samplers of a
Boltzmann prior: the prior is exported as a BQM (``graphs.dimod_io``) and the sampler's reads are
its samples. :func:`prior_sampler` makes one the draw of a training-time ``external`` sampler;
:func:`dimod_prior_samples` draws reads once (``python -m experiments.sample --dimod_sampler``).

Sampler names (``DIMOD_SAMPLERS``, or ``module.path:Name``) and keyword text (``key=value,...``)
come from the user; whatever cannot be used raises :class:`DimodConfigError` naming the problem,
before anything is sampled. dimod and dwave-samplers are optional (the ``dwave`` extra), imported
only when a sampler is made.
"""

from __future__ import annotations

import ast
import importlib
import time

import numpy as np

from dvae_jax import priors
from dvae_jax.graphs import dimod_io
from dvae_jax.samplers import external
from dvae_jax.samplers.persistent import PriorSampler

# Names of dimod samplers: (module, attribute). Anything else is given as module.path:Name.
DIMOD_SAMPLERS = {
  "simulated_annealing": ("dwave.samplers", "SimulatedAnnealingSampler"),
  "tabu": ("dwave.samplers", "TabuSampler"),
  "steepest_descent": ("dwave.samplers", "SteepestDescentSampler"),
  "random": ("dimod", "RandomSampler"),
}
DWAVE_EXTRA = "pip install 'dvae_jax[dwave]' (from a checkout: pip install '.[dwave]')"


class DimodConfigError(ValueError):
  """A dimod sampler or its keyword arguments cannot be used (the message names the problem)."""


class DimodSampleError(ValueError):
  """The dimod sampler's answer cannot be used as samples of the prior (the message says why)."""


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
      raise DimodConfigError(f"invalid --dimod_sampler={spec!r}: expected module.path:Name")
  else:
    raise DimodConfigError(
      f"unknown --dimod_sampler={spec!r}: one of {', '.join(DIMOD_SAMPLERS)}, or module.path:Name "
      "of an importable dimod.Sampler class or instance"
    )
  try:
    import dimod
  except ImportError:
    raise DimodConfigError(
      f"--dimod_sampler needs dimod, which is not installed: {DWAVE_EXTRA}"
    ) from None
  try:
    module = importlib.import_module(module_name)
  except ImportError as err:
    if spec in DIMOD_SAMPLERS:
      raise DimodConfigError(
        f"--dimod_sampler={spec} needs {module_name}, which is not installed ({err}): {DWAVE_EXTRA}"
      ) from None
    raise DimodConfigError(
      f"invalid --dimod_sampler={spec!r}: cannot import {module_name!r} ({err})"
    ) from None
  if not hasattr(module, name):
    raise DimodConfigError(f"invalid --dimod_sampler={spec!r}: {module_name} has no {name!r}")
  sampler = getattr(module, name)
  if isinstance(sampler, type) and issubclass(sampler, dimod.Sampler):
    try:
      sampler = sampler()
    except Exception as err:  # the user's constructor: say which one failed and why
      raise DimodConfigError(
        f"--dimod_sampler={spec}: {name}() failed: {type(err).__name__}: {err}"
      ) from err
  if not isinstance(sampler, dimod.Sampler):
    raise DimodConfigError(
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
    raise DimodConfigError(f"invalid --dimod_kwargs={text!r}: unbalanced brackets")
  kwargs = {}
  for item in items:
    key, equals, value = (part.strip() for part in item.partition("="))
    if not equals or not key.isidentifier():
      raise DimodConfigError(
        f"invalid --dimod_kwargs item {item.strip()!r}: expected key=value[,key=value...]"
      )
    if key in kwargs:
      raise DimodConfigError(f"invalid --dimod_kwargs: {key!r} is given twice")
    try:
      kwargs[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      kwargs[key] = value
  return kwargs


def dimod_machine(prior):
  """The prior as a graph machine for ``dimod_io`` (``Prior.graph_machine``: an RBM's nodes are
  (z1; z2)); DimodConfigError for a prior without a sampler (the factorial prior)."""
  if not prior.needs_sampler:
    raise DimodConfigError(
      "--dimod_sampler: the run's prior is factorial (independent units, no couplings), so there "
      "is nothing to sample with dimod; without --dimod_sampler it is sampled exactly"
    )
  return prior.graph_machine()


def dimod_sample_kwargs(sampler, kwargs: dict, num: int, seed: int) -> dict:
  """``kwargs`` checked against ``sampler.parameters``, with ``num_reads`` = num and ``seed`` =
  seed added where the sampler takes them and they are not given."""
  unknown = sorted(set(kwargs) - set(sampler.parameters))
  if unknown:
    raise DimodConfigError(
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


def prior_sampler(spec: str, kwargs_text: str, num_samples: int, prior) -> PriorSampler:
  """``samplers.external`` sampler of ``num_samples`` states drawing through the dimod sampler
  named by ``spec`` with ``kwargs_text``'s keyword arguments (:func:`make_dimod_draw`; the
  sampler and the keyword names are checked now: DimodConfigError). One device only: the host
  callback draws the whole population."""
  return external.prior_sampler(num_samples, make_dimod_draw(spec, kwargs_text, num_samples, prior))
