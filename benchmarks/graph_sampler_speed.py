r"""Chromatic Gibbs sweeps/s on quantum-annealer graphs next to the sweep's roofs and peers.

  python -m benchmarks.graph_sampler_speed            # ≈ 3 minutes on 2 loaded CPU cores
  python -m benchmarks.graph_sampler_speed --quick    # fewer sweeps and repeats, for a smoke run

For 1000 chains (float32) on Chimera C(16,16,4), Pegasus P(6) and Zephyr Z(4,4) (random couplings
N(0, 1), biases N(0, 0.5)) it times, per sweep:
  * `library`: ``dvae_jax.graphs.gibbs.run`` (chromatic block Gibbs, one Bernoulli draw per unit);
  * `fields roof`: the same sweep with the draw replaced by 1[h > 0] (``gibbs.run_fields_only``):
    the field computation alone (neighbour gathers, or the dense block for dense colours), no RNG;
  * `dense matmul roof`: per colour c, z @ W[:, c] with the graph's couplings in a dense symmetric
    [n, n] matrix and a threshold (what a dense-matmul sampler would cost on the same graph);
  * `dwave-samplers Gibbs` (if installed): ``SimulatedAnnealingSampler`` at constant β = 1 with
    ``proposal_acceptance_criteria='Gibbs'`` (single-spin heat bath, C++), 1000 reads, and the
    same with Metropolis; one of its sweeps is n single-spin updates per read (BQM conversion and
    the sample set's construction included, as a user would call it).
All variants of one graph are timed in alternation (``timing.interleaved_medians``), so that they
see the same load on a shared machine.
And, for the dense special case, K_{100,100} (an RBM as a graph machine, ``graphs.from_rbm``) next
to ``samplers.gibbs.run`` on the same RBM.
Writes benchmarks/results/graph_sampler_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import timing
from dvae_jax import rbm
from dvae_jax.graphs import gibbs as graph_gibbs
from dvae_jax.graphs import machine
from dvae_jax.samplers import gibbs as rbm_gibbs

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
NUM_CHAINS = 1000


def random_machine(g, seed=0):
  rng = np.random.default_rng(seed)
  return machine.BoltzmannMachine(
    jnp.asarray(rng.normal(0, 0.5, g.num_nodes), jnp.float32),
    jnp.asarray(rng.normal(0, 1.0, g.num_edges), jnp.float32),
    g,
  )


def dense_matmul_roof(m, z, num_sweeps):
  """Per colour a [S, n] × [n, n_c] product of a dense symmetric W and a threshold."""
  g = m.graph
  e = g.edges
  w = jnp.zeros((g.num_nodes, g.num_nodes), m.w.dtype).at[e[:, 0], e[:, 1]].set(m.w)
  w = w + w.T
  classes = [g.colour_class(c) for c in range(g.num_colours)]
  blocks = [w[:, idx] for idx in classes]

  def body(z, _):
    for idx, block in zip(classes, blocks, strict=True):
      z = z.at[:, idx].set((m.b[idx] + z @ block > 0).astype(z.dtype))
    return z, None

  return lax.scan(body, z, None, length=num_sweeps)[0]


def library_variants(m, num_sweeps):
  """name → a call (of a repeat index) that runs num_sweeps sweeps of that variant, compiled."""
  z = graph_gibbs.init(jax.random.key(0), m, NUM_CHAINS)
  lib = jax.jit(graph_gibbs.run, static_argnums=3)
  roof = jax.jit(graph_gibbs.run_fields_only, static_argnums=2)
  dense = jax.jit(dense_matmul_roof, static_argnums=2)
  return {
    "library": lambda i: lib(jax.random.key(i), z, m, num_sweeps),
    "fields roof": lambda i: roof(z, m, num_sweeps),
    "dense matmul roof": lambda i: dense(m, z, num_sweeps),
  }


def dwave_variants(m, num_sweeps):
  """The dwave-samplers peers as calls like ``library_variants``' (none if not installed)."""
  try:
    from dwave.samplers import SimulatedAnnealingSampler
  except ImportError:
    return {}
  from dvae_jax.graphs import dimod_io

  bqm = dimod_io.to_bqm(m, "BINARY", 1.0)
  sampler = SimulatedAnnealingSampler()

  def call(rule):
    return lambda i: (
      sampler.sample(
        bqm,
        num_reads=NUM_CHAINS,
        beta_schedule_type="custom",
        beta_schedule=np.ones(num_sweeps),
        proposal_acceptance_criteria=rule,
        seed=i,
      ).record.energy
    )

  return {f"dwave-samplers {rule}": call(rule) for rule in ("Gibbs", "Metropolis")}


def time_variants(variants, num_sweeps, repeats):
  """Seconds per sweep of each variant: medians of calls timed in alternation (same load)."""
  for fn in variants.values():
    jax.block_until_ready(fn(0))  # compile + warm up
  seconds = timing.interleaved_medians(list(variants.values()), 1, repeats)
  return {name: t / num_sweeps for name, t in zip(variants, seconds, strict=True)}


def graphs():
  from dvae_jax.graphs import topologies

  return {
    "Chimera C(16,16,4)": topologies.chimera(16, 16, 4),
    "Pegasus P(6)": topologies.pegasus(6),
    "Zephyr Z(4,4)": topologies.zephyr(4, 4),
  }


def rbm_case(num_sweeps):
  rng = np.random.default_rng(0)
  r = rbm.RBM(
    jnp.asarray(rng.normal(0, 0.5, 100), jnp.float32),
    jnp.asarray(rng.normal(0, 0.5, 100), jnp.float32),
    jnp.asarray(rng.normal(0, 0.1, (100, 100)), jnp.float32),
  )
  m = machine.from_rbm(r)
  variants = library_variants(m, num_sweeps)
  state = rbm_gibbs.init(jax.random.key(0), r, NUM_CHAINS)
  run = jax.jit(rbm_gibbs.run, static_argnums=3)
  variants["samplers.gibbs.run (RBM)"] = lambda i: run(jax.random.key(i), r, state, num_sweeps)
  return m, variants


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  num_sweeps, repeats = (10, 2) if args.quick else (50, 5)
  rows = []

  def add(name, m, times):
    for variant, seconds in times.items():
      rows.append(
        {
          "graph": name,
          "nodes": m.graph.num_nodes,
          "edges": m.graph.num_edges,
          "colours": m.graph.num_colours,
          "variant": variant,
          "seconds_per_sweep": seconds,
          "sweeps_per_second": 1.0 / seconds,
        }
      )
      print(f"{name:22s} {variant:28s} {1.0 / seconds:10.1f} sweeps/s", flush=True)

  for name, g in graphs().items():
    m = random_machine(g)
    variants = {**library_variants(m, num_sweeps), **dwave_variants(m, num_sweeps)}
    add(name, m, time_variants(variants, num_sweeps, repeats))
  m, variants = rbm_case(num_sweeps)
  add("K(100,100) (RBM)", m, time_variants(variants, num_sweeps, repeats))

  meta = {
    "num_chains": NUM_CHAINS,
    "num_sweeps": num_sweeps,
    "repeats": repeats,
    "dtype": "float32",
    "jax": jax.__version__,
    "platform": platform.platform(),
    "cpu_count": os.cpu_count(),
    "load_average": os.getloadavg(),
    "note": "shared CPU under load from other jobs; numbers are indicative",
  }
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / "graph_sampler_speed.json").write_text(
    json.dumps({"meta": meta, "rows": rows}, indent=1)
  )
  lines = [
    f"1000 chains, float32, median of {repeats} interleaved runs of {num_sweeps} sweeps; load "
    "average "
    f"{meta['load_average'][0]:.1f} on {meta['cpu_count']} CPUs (shared machine).",
    "",
    "| graph | n | edges | colours | variant | sweeps/s | speed ÷ library |",
    "|---|---:|---:|---:|---|---:|---:|",
  ]
  for r in rows:
    lib = next(x for x in rows if x["graph"] == r["graph"] and x["variant"] == "library")
    lines.append(
      f"| {r['graph']} | {r['nodes']} | {r['edges']} | {r['colours']} | {r['variant']} | "
      f"{r['sweeps_per_second']:.1f} | {lib['seconds_per_sweep'] / r['seconds_per_sweep']:.2f}× |"
    )
  (RESULTS / "graph_sampler_speed.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
