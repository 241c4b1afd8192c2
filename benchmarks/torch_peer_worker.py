r"""The D-Wave PyTorch plugin's samplers as a peer of ``benchmarks.graph_sampler_speed``.

  PEERS_PYTHON benchmarks/torch_peer_worker.py PROBLEM.npz

Runs in an interpreter that has torch and ``dwave-pytorch-plugin`` (their own venv: torch is not
installed next to JAX; ``graph_sampler_speed --torch-python``), so it imports nothing from
dvae_jax. PROBLEM.npz holds an Ising model in dimod's SPIN convention
(``dimod_io.bqm_coefficients``: energy
Σ h_i s_i + Σ_e J_e s_i s_j, target p ∝ exp(−energy)): ``linear`` [n], ``quadratic`` [E],
``edges`` [E, 2], ``colours`` [n] (the same proper colouring as the library's sweep) and
``num_chains``. The plugin's samplers, as its docs use them (a ``GraphRestrictedBoltzmannMachine``
with these biases, a sampler with a constant β = 1 schedule of ``num_sweeps`` steps, persistent
chains from uniform spins):
  * ``BlockSampler`` Gibbs and Metropolis (one colour class per block; a step updates every colour);
  * ``BipartiteGibbsSampler`` (bipartite graphs only: colour 1 are the GRBM's hidden nodes).
One step of each updates every unit once, so a step is a sweep.

Commands, one JSON object per line on stdin, answered by one JSON line on stdout:
  {"op": "samplers"}                             → {"samplers": [names]}
  {"op": "moments", "sampler": NAME, "num_sweeps": T, "seed": k}
      → {"z": [n], "zz": [E]}: 0/1 means over the chains of a fresh sampler after T sweeps;
  {"op": "run", "sampler": NAME, "num_sweeps": T} → {"seconds": t}: T more sweeps of a persistent
      sampler (built on first use, not timed), ``sample()`` wall time.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from dwave.plugins.torch.models import GraphRestrictedBoltzmannMachine
from dwave.plugins.torch.samplers import BlockSampler
from dwave.plugins.torch.samplers.bipartite_sampler import BipartiteGibbsSampler


def load(path):
  data = np.load(path)
  return {k: data[k] for k in data.files}


def sampler_names(problem):
  names = ["BlockSampler Gibbs", "BlockSampler Metropolis"]
  if problem["colours"].max() == 1:
    names.append("BipartiteGibbsSampler")
  return names


def make_sampler(problem, name, num_chains, num_sweeps, seed):
  n = len(problem["linear"])
  edges = [tuple(int(v) for v in e) for e in problem["edges"]]
  colours = problem["colours"]
  hidden = [k for k in range(n) if colours[k] == 1] if name == "BipartiteGibbsSampler" else None
  grbm = GraphRestrictedBoltzmannMachine(
    list(range(n)),
    edges,
    hidden_nodes=hidden,
    linear={k: float(problem["linear"][k]) for k in range(n)},
    quadratic={e: float(q) for e, q in zip(edges, problem["quadratic"], strict=True)},
  )
  schedule = [1.0] * num_sweeps
  if name == "BipartiteGibbsSampler":
    return BipartiteGibbsSampler(grbm, num_chains, schedule, seed=seed)
  rule = name.split()[-1]
  return BlockSampler(
    grbm,
    lambda v: int(colours[v]),
    num_chains,
    schedule,
    proposal_acceptance_criteria=rule,
    seed=seed,
  )


def main():
  problem = load(sys.argv[1])
  num_chains = int(problem["num_chains"])
  persistent = {}
  e = problem["edges"]
  for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "samplers":
      out = {"samplers": sampler_names(problem)}
    elif cmd["op"] == "moments":
      s = make_sampler(problem, cmd["sampler"], num_chains, cmd["num_sweeps"], cmd["seed"])
      z = ((s.sample() + 1) / 2).double().numpy()
      out = {"z": z.mean(0).tolist(), "zz": (z[:, e[:, 0]] * z[:, e[:, 1]]).mean(0).tolist()}
    elif cmd["op"] == "run":
      key = (cmd["sampler"], cmd["num_sweeps"])
      if key not in persistent:
        persistent[key] = make_sampler(problem, cmd["sampler"], num_chains, cmd["num_sweeps"], 0)
      t0 = time.perf_counter()
      persistent[key].sample()
      out = {"seconds": time.perf_counter() - t0}
    else:
      out = {"error": f"unknown op {cmd['op']!r}"}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
  torch.set_grad_enabled(False)
  main()
