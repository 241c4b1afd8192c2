r"""Chromatic Gibbs sweeps/s on quantum-annealer graphs next to the sweep's roofs and peers.

  python -m benchmarks.graph_sampler_speed   # ≈ 6 min on 2 loaded CPU cores (11 with the plugin)
  python -m benchmarks.graph_sampler_speed --quick    # fewer sweeps and repeats, for a smoke run
  python -m benchmarks.graph_sampler_speed --torch-python=/path/to/venv/bin/python   # + the plugin

For 1000 chains (float32) on Chimera C(16,16,4), Pegasus P(6) and Zephyr Z(4,4) (random couplings
N(0, 1), biases N(0, 0.5)) it times, per sweep:
  * `library`: ``dvae_jax.graphs.gibbs.run`` (chromatic block Gibbs, one Bernoulli draw per unit);
  * `fields roof`: the same sweep with the draw replaced by 1[h > 0] (``gibbs.run_fields_only``):
    the field computation alone (neighbour gathers, or the dense block for dense colours), no RNG;
  * `dense matmul roof`: per colour c, z @ W[:, c] with the graph's couplings in a dense symmetric
    [n, n] matrix and a threshold (what a dense-matmul sampler would cost on the same graph);
and the peers that are installed (each skipped with a printed reason when it is not):
  * `dwave-samplers Gibbs` / `Metropolis`: ``SimulatedAnnealingSampler`` at constant β = 1 with
    ``proposal_acceptance_criteria`` 'Gibbs' (single-spin heat bath, C++) or 'Metropolis', 1000
    reads; one of its sweeps is n single-spin updates per read (BQM conversion and the sample
    set's construction included, as a user would call it);
  * `thrml`: Extropic's thrml (``IsingEBM``, ``IsingSamplingProgram`` with the library's colour
    classes as its free blocks, ``sample_states`` with ``n_warmup`` = the sweeps, batched over the
    chains with ``jax.vmap`` as its examples do), jitted, in this process;
  * `dwave-pytorch-plugin …`: the D-Wave PyTorch plugin's ``BlockSampler`` (Gibbs, Metropolis)
    and, on bipartite graphs, ``BipartiteGibbsSampler``, constant β = 1 schedule, persistent
    chains; they need torch, which is not installed next to JAX, so they run in
    ``benchmarks/torch_peer_worker.py`` under ``--torch-python`` (a venv with torch and the
    plugin), one subprocess per graph, driven over a pipe.
A peer's sweep is one update of every unit. Before any peer is timed it must sample the right
distribution: 20,000 chains, 200 sweeps on a Chimera cell K_{4,4} with strong couplings
(w ~ N(0, 1.5²); its sides interleaved, so colour order ≠ node order), every E[z_i] and
E[z_i z_j] within 5 standard errors of exact enumeration (``peer_check``); a peer that fails is
reported and not timed.
All variants of one graph are timed in alternation (``timing.interleaved_medians``), so that they
see the same load on a shared machine; slow peers run fewer sweeps per timed call.
And, for the dense special case, K_{100,100} (an RBM as a graph machine, ``rbm.graph_machine``) next
to ``samplers.gibbs.run`` on the same RBM.
Writes benchmarks/results/graph_sampler_speed.{json,md}; the md ends with library ÷ fastest peer.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import tempfile
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import timing
from dvae_jax import priors
from dvae_jax.graphs import dimod_io, machine
from dvae_jax.graphs import gibbs as graph_gibbs
from dvae_jax.priors import rbm
from dvae_jax.samplers import gibbs as rbm_gibbs

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
NUM_CHAINS = 1000
CHECK_CHAINS, CHECK_SWEEPS, CHECK_SIGMAS = 20_000, 200, 5.0


class Variant(NamedTuple):
  """A timed call: ``call(i)`` runs ``sweeps`` sweeps of 1000 chains (i: a repeat index)."""

  call: Callable[[int], object]
  sweeps: int


def random_machine(g, seed=0):
  rng = np.random.default_rng(seed)
  return priors.BoltzmannMachine(
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
  """name → Variant of the library's sweep and its roofs, compiled on first call."""
  z = graph_gibbs.init(jax.random.key(0), m, NUM_CHAINS)
  lib = jax.jit(graph_gibbs.run, static_argnums=3)
  roof = jax.jit(graph_gibbs.run_fields_only, static_argnums=2)
  dense = jax.jit(dense_matmul_roof, static_argnums=2)
  return {
    "library": Variant(lambda i: lib(jax.random.key(i), z, m, num_sweeps), num_sweeps),
    "fields roof": Variant(lambda i: roof(z, m, num_sweeps), num_sweeps),
    "dense matmul roof": Variant(lambda i: dense(m, z, num_sweeps), num_sweeps),
  }


# --- peers: each gives final 0/1 states (for the check) and Variants (for the timing) ---------


def check_machine():
  """A Chimera cell K_{4,4} with strong couplings, its sides interleaved (even / odd nodes) so that
  colour order is not node order: a peer returning its blocks in colour order would fail."""
  g = machine.Graph.from_edges(8, [(2 * i, 2 * j + 1) for i in range(4) for j in range(4)])
  rng = np.random.default_rng(3)
  return priors.BoltzmannMachine(
    jnp.asarray(rng.normal(0, 0.5, g.num_nodes), jnp.float32),
    jnp.asarray(rng.normal(0, 1.5, g.num_edges), jnp.float32),
    g,
  )


def moments(m, z):
  """(E[z_i] [n], E[z_i z_j] [E]) over the rows of 0/1 states z [S, n]."""
  z = np.asarray(z, np.float64)
  e = m.graph.edges
  return z.mean(0), (z[:, e[:, 0]] * z[:, e[:, 1]]).mean(0)


def peer_check(m, z_mean, zz_mean, num_chains=CHECK_CHAINS):
  """Largest |estimate − exact| / standard error over all E[z_i] and E[z_i z_j] (exact by
  enumeration in float64). With ≤ 24 statistics, > 5 happens by chance with probability < 1e-5."""
  with jax.enable_x64(True):
    m64 = priors.BoltzmannMachine(
      jnp.asarray(m.b, jnp.float64), jnp.asarray(m.w, jnp.float64), m.graph
    )
    exact = machine.exact_moments(m64)
  worst = 0.0
  for est, ref in ((z_mean, exact.unit), (zz_mean, exact.edge)):
    ref = np.asarray(ref)
    se = np.sqrt(np.maximum(ref * (1 - ref), 1e-4) / num_chains)
    worst = max(worst, float(np.max(np.abs(np.asarray(est) - ref) / se)))
  return worst


def thrml_sampler(m, num_chains, num_sweeps):
  """thrml's block Gibbs on m (β = 1; dimod's SPIN coefficients, sign-flipped to thrml's
  E = −(Σ b s + Σ J s s)), from one uniform start: a call seed → [S, n] bool final states in m's
  node order (the observed block lists the nodes in that order)."""
  import thrml
  from thrml.models import IsingEBM, IsingSamplingProgram

  g = m.graph
  linear, quadratic, _ = dimod_io.bqm_coefficients(m, "SPIN", 1.0)
  nodes = [thrml.SpinNode() for _ in range(g.num_nodes)]
  model = IsingEBM(
    nodes,
    [(nodes[i], nodes[j]) for i, j in g.edges],
    jnp.asarray(-linear, jnp.float32),
    jnp.asarray(-quadratic, jnp.float32),
    jnp.array(1.0),
  )
  blocks = [thrml.Block([nodes[k] for k in g.colour_class(c)]) for c in range(g.num_colours)]
  program = IsingSamplingProgram(model, blocks, clamped_blocks=[])
  schedule = thrml.SamplingSchedule(n_warmup=num_sweeps, n_samples=1, steps_per_sample=1)

  def one_chain(key, init):
    return thrml.sample_states(key, program, schedule, init, [], [thrml.Block(nodes)])[0][0]

  final_states = jax.jit(
    lambda key, init: jax.vmap(one_chain)(jax.random.split(key, num_chains), init)
  )
  # Uniform start, drawn once (outside the timed call, as the library's ``init``).
  init = [
    jax.random.bernoulli(k, 0.5, (num_chains, len(b)))
    for k, b in zip(jax.random.split(jax.random.key(0), len(blocks)), blocks, strict=True)
  ]
  return lambda seed: final_states(jax.random.key(seed), init)


def thrml_peer(m, num_sweeps, check):
  """{'thrml': Variant} after its check, or {} with a printed reason."""
  try:
    import thrml  # noqa: F401
  except ImportError:
    print("thrml: not installed (pip install thrml), skipped", flush=True)
    return {}
  if not check("thrml", lambda c: moments(c, thrml_sampler(c, CHECK_CHAINS, CHECK_SWEEPS)(1))):
    return {}
  return {"thrml": Variant(thrml_sampler(m, NUM_CHAINS, num_sweeps), num_sweeps)}


def dwave_sampler(m, num_chains, num_sweeps, rule):
  """dwave-samplers' SA at constant β = 1: a call seed → [S, n] 0/1 final states."""
  from dwave.samplers import SimulatedAnnealingSampler

  bqm = dimod_io.to_bqm(m, "BINARY", 1.0)
  sampler = SimulatedAnnealingSampler()

  def call(seed):
    sampleset = sampler.sample(
      bqm,
      num_reads=num_chains,
      beta_schedule_type="custom",
      beta_schedule=np.ones(num_sweeps),
      proposal_acceptance_criteria=rule,
      seed=seed,
    )
    return dimod_io.samples_to_array(sampleset, m.graph)

  return call


def dwave_peers(m, num_sweeps, check):
  """The dwave-samplers peers as Variants after their checks (none if not installed)."""
  try:
    import dwave.samplers  # noqa: F401
  except ImportError:
    print("dwave-samplers: not installed (pip install 'dvae_jax[dwave]'), skipped", flush=True)
    return {}
  out = {}
  for rule in ("Gibbs", "Metropolis"):
    name = f"dwave-samplers {rule}"
    draw = lambda c, rule=rule: moments(c, dwave_sampler(c, CHECK_CHAINS, CHECK_SWEEPS, rule)(1))
    if check(name, draw):
      out[name] = Variant(dwave_sampler(m, NUM_CHAINS, num_sweeps, rule), num_sweeps)
  return out


class TorchWorker:
  """A ``torch_peer_worker.py`` subprocess (another interpreter) for one machine and chain count."""

  def __init__(self, python, m, num_chains):
    self._tmp = tempfile.TemporaryDirectory()
    problem = pathlib.Path(self._tmp.name) / "problem.npz"
    linear, quadratic, _ = dimod_io.bqm_coefficients(m, "SPIN", 1.0)
    g = m.graph
    np.savez(
      problem,
      linear=linear,
      quadratic=quadratic,
      edges=g.edges,
      colours=g.colours,
      num_chains=num_chains,
    )
    worker = pathlib.Path(__file__).resolve().parent / "torch_peer_worker.py"
    self._proc = subprocess.Popen(
      [python, str(worker), str(problem)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

  def ask(self, **cmd):
    self._proc.stdin.write(json.dumps(cmd) + "\n")
    self._proc.stdin.flush()
    line = self._proc.stdout.readline()
    if not line:
      raise RuntimeError(f"torch_peer_worker exited with code {self._proc.wait()}")
    return json.loads(line)

  def close(self):
    self._proc.stdin.close()
    self._proc.wait(timeout=60)
    self._tmp.cleanup()


def torch_peers(python, m, num_sweeps, check, workers):
  """The D-Wave PyTorch plugin's samplers as Variants after their checks (the worker is appended
  to ``workers`` for closing); none, with a printed reason, if ``python`` cannot import them."""
  if not python:
    print("dwave-pytorch-plugin: no --torch-python given, skipped", flush=True)
    return {}
  probe = subprocess.run(
    [python, "-c", "import torch, dwave.plugins.torch"], capture_output=True, text=True
  )
  if probe.returncode:
    reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else probe.returncode
    print(f"dwave-pytorch-plugin: {python} cannot import it ({reason}), skipped", flush=True)
    return {}
  checker = TorchWorker(python, check_machine(), CHECK_CHAINS)
  workers.append(checker)
  timed = TorchWorker(python, m, NUM_CHAINS)
  workers.append(timed)
  out = {}
  for sampler in timed.ask(op="samplers")["samplers"]:
    name = f"dwave-pytorch-plugin {sampler}"

    def draw(_, sampler=sampler):
      got = checker.ask(op="moments", sampler=sampler, num_sweeps=CHECK_SWEEPS, seed=1)
      return np.asarray(got["z"]), np.asarray(got["zz"])

    if check(name, draw):
      run = lambda i, sampler=sampler: timed.ask(op="run", sampler=sampler, num_sweeps=num_sweeps)
      out[name] = Variant(run, num_sweeps)
  return out


def time_variants(variants, repeats):
  """Seconds per sweep of each Variant: medians of calls timed in alternation (same load)."""
  for v in variants.values():
    jax.block_until_ready(v.call(0))  # compile + warm up
  calls = [v.call for v in variants.values()]
  seconds = timing.interleaved_medians(calls, 1, repeats)
  return {name: t / v.sweeps for (name, v), t in zip(variants.items(), seconds, strict=True)}


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
  m = rbm.graph_machine(r)
  variants = library_variants(m, num_sweeps)
  state = rbm_gibbs.init(jax.random.key(0), r, NUM_CHAINS)
  run = jax.jit(rbm_gibbs.run, static_argnums=3)
  variants["samplers.gibbs.run (RBM)"] = Variant(
    lambda i: run(jax.random.key(i), state, r, num_sweeps), num_sweeps
  )
  return m, variants


PEER_PREFIXES = ("thrml", "dwave-pytorch-plugin", "dwave-samplers")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument(
    "--torch-python",
    default=os.environ.get("DVAE_JAX_TORCH_PEERS_PYTHON", ""),
    help="python of a venv with torch and dwave-pytorch-plugin (default: "
    "$DVAE_JAX_TORCH_PEERS_PYTHON; empty: skip the plugin)",
  )
  args = parser.parse_args()
  num_sweeps, repeats = (10, 2) if args.quick else (50, 5)
  # Slow peers run fewer sweeps per timed call (≈ 0.5–3 s a call at their speed).
  thrml_sweeps, torch_sweeps = (2, 1) if args.quick else (10, 5)
  rows, checks = [], {}

  def check(name, draw):
    """Runs a peer's check once (cached by name); True when it passes."""
    if name not in checks:
      c = check_machine()
      checks[name] = peer_check(c, *draw(c))
      verdict = "ok" if checks[name] <= CHECK_SIGMAS else "FAILED: not timed"
      print(f"check {name}: max |dev| / SE = {checks[name]:.2f} ({verdict})", flush=True)
    return checks[name] <= CHECK_SIGMAS

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
      print(f"{name:22s} {variant:44s} {1.0 / seconds:10.2f} sweeps/s", flush=True)

  workers = []
  try:
    for name, g in graphs().items():
      m = random_machine(g)
      variants = {
        **library_variants(m, num_sweeps),
        **dwave_peers(m, num_sweeps, check),
        **thrml_peer(m, thrml_sweeps, check),
        **torch_peers(args.torch_python, m, torch_sweeps, check, workers),
      }
      add(name, m, time_variants(variants, repeats))
      while workers:
        workers.pop().close()
  finally:
    for w in workers:
      w.close()
  m, variants = rbm_case(num_sweeps)
  add("K(100,100) (RBM)", m, time_variants(variants, repeats))

  meta = {
    "num_chains": NUM_CHAINS,
    "num_sweeps": {"library": num_sweeps, "thrml": thrml_sweeps, "torch": torch_sweeps},
    "repeats": repeats,
    "dtype": "float32",
    "jax": jax.__version__,
    "peer_checks_max_sigma": checks,
    "platform": platform.platform(),
    "cpu_count": os.cpu_count(),
    "load_average": os.getloadavg(),
    "note": "shared CPU under load from other jobs; numbers are indicative",
  }
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / "graph_sampler_speed.json").write_text(
    json.dumps({"meta": meta, "rows": rows}, indent=1)
  )
  (RESULTS / "graph_sampler_speed.md").write_text(markdown(rows, meta))
  print(markdown(rows, meta))


def markdown(rows, meta):
  sweeps = meta["num_sweeps"]
  lines = [
    f"1000 chains, float32, median of {meta['repeats']} interleaved calls of {sweeps['library']} "
    f"sweeps (thrml {sweeps['thrml']}, the PyTorch plugin {sweeps['torch']}); load average "
    f"{meta['load_average'][0]:.1f} on {meta['cpu_count']} CPUs (shared machine). Peers checked "
    f"first (moments on a Chimera cell within {CHECK_SIGMAS:g} SE of enumeration): "
    + ", ".join(f"{k} {v:.1f} SE" for k, v in meta["peer_checks_max_sigma"].items())
    + ".",
    "",
    "| graph | n | edges | colours | variant | sweeps/s | speed ÷ library |",
    "|---|---:|---:|---:|---|---:|---:|",
  ]
  for r in rows:
    lib = next(x for x in rows if x["graph"] == r["graph"] and x["variant"] == "library")
    lines.append(
      f"| {r['graph']} | {r['nodes']} | {r['edges']} | {r['colours']} | {r['variant']} | "
      f"{r['sweeps_per_second']:.2f} | {lib['seconds_per_sweep'] / r['seconds_per_sweep']:.3f}× |"
    )
  lines += ["", "Library ÷ the fastest of each peer family (a target of ≥ 50×):", ""]
  lines += ["| graph | peer | its fastest variant | library ÷ peer |", "|---|---|---|---:|"]
  for graph in dict.fromkeys(r["graph"] for r in rows):
    lib = next(x for x in rows if x["graph"] == graph and x["variant"] == "library")
    for prefix in PEER_PREFIXES:
      peers = [x for x in rows if x["graph"] == graph and x["variant"].startswith(prefix)]
      if peers:
        best = max(peers, key=lambda x: x["sweeps_per_second"])
        ratio = lib["sweeps_per_second"] / best["sweeps_per_second"]
        lines.append(f"| {graph} | {prefix} | {best['variant']} | {ratio:.1f}× |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
