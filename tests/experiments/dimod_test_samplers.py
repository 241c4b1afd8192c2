"""dimod samplers of known law for the --dimod_sampler tests of experiments.sample (given to it as
``dimod_test_samplers:Name``; the tests put this folder on PYTHONPATH). Needs dimod."""

import dimod
import numpy as np

MAX_COMPONENT = 16  # variables of the largest connected component that ExactSampler enumerates


def components(bqm) -> list[list]:
  """The connected components of the BQM's nonzero interactions (lists of variables; a variable
  whose interactions are all zero is its own component: a zero coupling does not change the law)."""
  parent = {v: v for v in bqm.variables}

  def root(v):
    while parent[v] != v:
      parent[v] = parent[parent[v]]
      v = parent[v]
    return v

  for (u, v), bias in bqm.quadratic.items():
    if bias != 0:
      parent[root(u)] = root(v)
  groups = {}
  for v in bqm.variables:
    groups.setdefault(root(v), []).append(v)
  return list(groups.values())


def component_energies(binary, group):
  """(states [2^k, k] 0/1, energies [2^k]) of the k variables of one component of a BINARY BQM."""
  k = len(group)
  if k > MAX_COMPONENT:
    raise ValueError(f"a connected component of {k} > {MAX_COMPONENT} variables")
  states = (np.arange(2**k)[:, None] >> np.arange(k)) & 1
  energy = states @ np.array([binary.linear[v] for v in group])
  for a in range(k):
    for b in range(a + 1, k):
      if (group[a], group[b]) in binary.quadratic:
        energy = energy + binary.quadratic[group[a], group[b]] * states[:, a] * states[:, b]
  return states, energy


def log_partition(bqm) -> float:
  """log Σ_x exp(−bqm.energy(x)) by enumeration of the components (float64)."""
  binary = bqm.change_vartype("BINARY", inplace=False)
  total = -binary.offset
  for group in components(binary):
    _, energy = component_energies(binary, group)
    total += np.logaddexp.reduce(-energy)
  return float(total)


class ExactSampler(dimod.Sampler):
  """Independent exact draws from p(x) ∝ exp(−bqm.energy(x)) (a Boltzmann sampler at unit
  temperature), by enumerating each connected component (at most MAX_COMPONENT variables) of the
  BINARY form of the BQM; returned as BINARY samples. ``record=PATH`` writes the BQM it was given
  there (``bqm.to_file()``) so a test can read the energies the sampler saw."""

  parameters = {"num_reads": [], "seed": [], "record": []}
  properties = {}

  def sample(self, bqm, num_reads=10, seed=0, record=None):
    if record is not None:
      with open(record, "wb") as f:
        f.write(bqm.to_file().read())
    binary = bqm.change_vartype("BINARY", inplace=False)
    rng = np.random.default_rng(seed)
    labels = list(binary.variables)
    column = {v: k for k, v in enumerate(labels)}
    out = np.zeros((num_reads, len(labels)), np.int8)
    for group in components(binary):
      states, energy = component_energies(binary, group)
      p = np.exp(-(energy - energy.min()))
      draw = rng.choice(len(states), size=num_reads, p=p / p.sum())
      out[:, [column[v] for v in group]] = states[draw]
    return dimod.SampleSet.from_samples_bqm((out, labels), binary)


class DropVariableSampler(dimod.Sampler):
  """Uniform reads of all the BQM's variables but its last (a sampler that answered another
  problem)."""

  parameters = {"num_reads": []}
  properties = {}

  def sample(self, bqm, num_reads=10):
    labels = list(bqm.variables)[:-1]
    states = np.random.default_rng(0).integers(0, 2, (num_reads, len(labels)))
    return dimod.SampleSet.from_samples((states, labels), "BINARY", energy=np.zeros(num_reads))


EXACT_SAMPLER = ExactSampler()  # an instance: --dimod_sampler=module:NAME takes either
NOT_A_SAMPLER = object()
