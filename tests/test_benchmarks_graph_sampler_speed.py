"""benchmarks/graph_sampler_speed.py: the peers' correctness check, and the check's power."""

import os
import subprocess

import jax
import numpy as np
import pytest

from benchmarks import graph_sampler_speed as bench
from dvae_jax.graphs import gibbs as graph_gibbs


def library_states(m, beta):
  z = graph_gibbs.init(jax.random.key(0), m, bench.CHECK_CHAINS)
  return graph_gibbs.run(jax.random.key(1), z, m, bench.CHECK_SWEEPS, beta)


def test_check_passes_the_library_and_fails_a_wrong_temperature_or_order():
  """The check the peers must pass accepts the library's sampler at β = 1 and rejects it at
  β = 0.8 (a sampler of the wrong distribution) and with its columns in colour order (a peer
  that returned its blocks concatenated), so a peer that passes samples p, not roughly p."""
  m = bench.check_machine()
  z = library_states(m, 1.0)
  assert bench.peer_check(m, *bench.moments(m, z)) < bench.CHECK_SIGMAS
  assert bench.peer_check(m, *bench.moments(m, library_states(m, 0.8))) > 2 * bench.CHECK_SIGMAS
  assert bench.peer_check(m, *bench.moments(m, z[:, m.graph.order])) > 2 * bench.CHECK_SIGMAS


def test_thrml_samples_the_machine():
  pytest.importorskip("thrml", reason="thrml is not installed (an optional benchmark peer)")
  m = bench.check_machine()
  draw = bench.thrml_sampler(m, bench.CHECK_CHAINS, bench.CHECK_SWEEPS)
  assert bench.peer_check(m, *bench.moments(m, draw(1))) < bench.CHECK_SIGMAS


@pytest.mark.parametrize("rule", ["Gibbs", "Metropolis"])
def test_dwave_samplers_sample_the_machine(rule):
  pytest.importorskip("dwave.samplers", reason="the [dwave] extra is not installed")
  m = bench.check_machine()
  draw = bench.dwave_sampler(m, bench.CHECK_CHAINS, bench.CHECK_SWEEPS, rule)
  assert bench.peer_check(m, *bench.moments(m, draw(1))) < bench.CHECK_SIGMAS


def torch_python():
  python = os.environ.get("DVAE_JAX_TORCH_PEERS_PYTHON", "")
  if not python:
    pytest.skip("DVAE_JAX_TORCH_PEERS_PYTHON (a venv with torch and dwave-pytorch-plugin) not set")
  probe = subprocess.run([python, "-c", "import dwave.plugins.torch"], capture_output=True)
  if probe.returncode:
    pytest.skip(f"{python} cannot import dwave.plugins.torch")
  return python


@pytest.mark.slow  # ≈ 60 s: the plugin at 20,000 chains, three samplers
def test_pytorch_plugin_samplers_sample_the_machine():
  python = torch_python()
  m = bench.check_machine()
  worker = bench.TorchWorker(python, m, bench.CHECK_CHAINS)
  try:
    samplers = worker.ask(op="samplers")["samplers"]
    assert "BipartiteGibbsSampler" in samplers  # the Chimera cell is bipartite
    for sampler in samplers:
      got = worker.ask(op="moments", sampler=sampler, num_sweeps=bench.CHECK_SWEEPS, seed=1)
      assert bench.peer_check(m, np.asarray(got["z"]), np.asarray(got["zz"])) < bench.CHECK_SIGMAS
  finally:
    worker.close()


def test_markdown_reports_library_over_the_fastest_variant_of_each_peer():
  rows = [
    {"graph": "G", "nodes": 8, "edges": 16, "colours": 2, "variant": v, "sweeps_per_second": r}
    for v, r in [("library", 100.0), ("thrml", 4.0), ("dwave-samplers Gibbs", 2.0)]
    + [("dwave-samplers Metropolis", 5.0)]
  ]
  for r in rows:
    r["seconds_per_sweep"] = 1 / r["sweeps_per_second"]
  meta = {
    "num_sweeps": {"library": 50, "thrml": 10, "torch": 5},
    "repeats": 5,
    "load_average": (1.0, 1.0, 1.0),
    "cpu_count": 2,
    "peer_checks_max_sigma": {"thrml": 1.0},
  }
  text = bench.markdown(rows, meta)
  assert "| G | thrml | thrml | 25.0× |" in text
  assert "| G | dwave-samplers | dwave-samplers Metropolis | 20.0× |" in text
