"""Training with a Boltzmann prior on a quantum-annealer graph (--config.prior=chimera|...):
the command line end to end (test NLL with an AIS log Z), every method family, resume, evaluate."""

import json
import math
import pathlib

import jax
import numpy as np
import pytest
from test_evaluate import run_module
from test_train import SimulatedCrash, cli_overrides, tiny_config

from dvae_jax import priors
from dvae_jax.graphs import topologies
from experiments import metrics, restore, train

pytest.importorskip("dwave_networkx", reason="the [dwave] extra is not installed")

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_chimera_dvae_sharp_from_the_command_line(data_dir, tmp_path):
  """The issue's acceptance run, tiny: DVAE# with a Chimera C(5, 5, 4) prior on the 200 latents of
  1-layer-lin reports a test NLL with an AIS log Z; `evaluate` restores the machine and agrees."""
  workdir = tmp_path / "chimera"
  proc = run_module(
    "experiments.run",
    "--config=dvae_sharp",
    f"--workdir={workdir}",
    f"--data_dir={data_dir}",
    "--config.prior=chimera",
    *cli_overrides(ais_num_chains=16),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test NLL" in proc.stdout
  results = json.loads((workdir / "results.json").read_text())
  config = json.loads((workdir / "config.json").read_text())
  assert (config["prior"], config["topology"]) == ("chimera", "5,5,4")
  assert math.isfinite(results["test_nll"]) and math.isfinite(results["test_log_z"])
  # AIS of a 200-unit machine near zero: log Z ≈ 200 log 2 after 4 small steps.
  assert abs(results["test_log_z"] - 200 * math.log(2)) < 5.0
  assert results["test_log_z_stderr"] > 0
  rows = metrics.read_metrics(workdir)
  assert any("sampler/log_z" in r for r in rows)

  run = restore.restore(workdir, "best")
  prior = run.state.params["prior"]
  assert isinstance(prior, priors.BoltzmannMachine)
  assert prior.graph == topologies.latent_graph("chimera", 200, "5,5,4")
  assert prior.w.shape == (560,) and bool(np.any(np.asarray(prior.w) != 0))  # it trained

  proc = run_module("experiments.evaluate", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((workdir / "eval_test_4.json").read_text())
  assert abs(record["log_z"] - results["test_log_z"]) < 5 * np.hypot(
    record["log_z_stderr"], results["test_log_z_stderr"]
  )


@pytest.mark.parametrize(
  "name, prior, topology, sizes",
  [
    ("dvae", "zephyr", "", "3,4"),  # non-bipartite (5 colours): the DVAE KL over edges
    ("dvae_pp_power", "pegasus", "", "4"),
    ("dvae_sharp_gi", "chimera", "6", "6,6,4"),  # the first 200 of C(6, 6, 4)'s 288 qubits
    ("gumbolt", "zephyr", "3,4", "3,4"),
  ],
)
def test_every_family_trains_on_a_graph_prior(data_dir, tmp_path, name, prior, topology, sizes):
  config = tiny_config(name, data_dir, prior=prior, topology=topology, num_steps=2)
  results = train.train_and_evaluate(config, tmp_path)
  assert math.isfinite(results["test_nll"]) and math.isfinite(results["test_log_z"])
  assert results["config"]["topology"] == sizes
  rows = metrics.read_metrics(tmp_path)
  finite = [k for r in rows for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)]
  assert not finite, f"non-finite metrics: {sorted(set(finite))}"


def test_graph_prior_run_resumes_exactly(data_dir, tmp_path, monkeypatch):
  """Crashed after step 3 (last checkpoint at 2) and resumed, a Pegasus-prior run (non-bipartite,
  4 colours) ends exactly where the uninterrupted one does: the machine, the persistent population
  and its log Z are checkpointed and restored."""
  config = tiny_config("dvae_sharp", data_dir, prior="pegasus")
  straight = train.train_and_evaluate(config, tmp_path / "straight")
  real_slab = train.batching.slab_indices

  def crashing_slab(seed, step, *args):
    if step == 3:
      raise SimulatedCrash
    return real_slab(seed, step, *args)

  monkeypatch.setattr(train.batching, "slab_indices", crashing_slab)
  with pytest.raises(SimulatedCrash):
    train.train_and_evaluate(config, tmp_path / "resumed")
  monkeypatch.setattr(train.batching, "slab_indices", real_slab)
  resumed = train.train_and_evaluate(config, tmp_path / "resumed")
  for key in ("test_nll", "val_nll", "test_log_z"):
    assert resumed[key] == pytest.approx(straight[key], rel=1e-6), key
  jax.tree.map(
    np.testing.assert_array_equal,
    restore.restore(tmp_path / "straight", "latest").state.params["prior"],
    restore.restore(tmp_path / "resumed", "latest").state.params["prior"],
  )
