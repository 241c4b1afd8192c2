"""Training with a dimod sampler's reads as the prior's samples (config.sampler='dimod',
samplers.external): end to end, repeatable, and the refusals. Needs the [dwave] extra."""

import json
import pathlib

import numpy as np
import pytest
from test_train import TIMING_KEYS, tiny_config

from dvae_jax.priors import rbm
from dvae_jax.samplers import dimod_bridge
from experiments import config_lib, metrics, train
from experiments import experiment as experiment_lib

pytest.importorskip("dwave.samplers", reason="sampler='dimod' needs the [dwave] extra")

# Simulated annealing, seeded by the runner from the step's key: 16 reads of 10 sweeps per step.
SA = dict(sampler="dimod", dimod_sampler="simulated_annealing", dimod_kwargs="num_sweeps=10")


def assert_reads_look_exact(rows, config, group_sizes: dict[str, int]) -> None:
  """At every evaluation the held reads' moment error of each unit group reads as S exact samples.

  ``samplers.diagnostics``: ratio² has expectation 1 for exact samples and, for n independent
  components, variance ≈ (2/n)[(1 + ρ)² + ρ²] with ρ = S var(r̄)/v = S/(2R) for two references of R
  replicas (S reads). On a machine near zero (4 small steps) the units are nearly independent and
  the anneals nearly exact, so ratio² < 1 + 5 sd; reads of another law (a stale or wrong machine,
  unseeded or constant reads) give 1 + ‖bias‖²/(Σ v/S), e.g. ≈ 16 for all-zero reads.
  """
  s, r = config.num_prior_samples, config.sampler_diagnostic_replicas
  rho = s / (2 * r)
  evaluations = [row for row in rows if "val/sampler_error" in row]
  assert [row["step"] for row in evaluations] == [2, 4]
  for row in evaluations:
    for group, n in group_sizes.items():
      sd = np.sqrt(2 / n * ((1 + rho) ** 2 + rho**2))
      assert row[f"val/sampler_{group}_error"] ** 2 < 1 + 5 * sd, (group, row, sd)


def test_training_on_dimod_reads_runs_and_repeats_bit_for_bit(data_dir, tmp_path):
  runs = []
  # Annealed to β = 1 (README's table): at its default β range simulated annealing ends far past
  # β = 1, towards ground states, and its reads are not the prior's law once the weights move.
  anneal = "beta_range=(0.01,1.0),num_sweeps=20"
  for name in ("a", "b"):
    config = tiny_config("dvae_sharp", data_dir, **dict(SA, dimod_kwargs=anneal))
    results = train.train_and_evaluate(config, tmp_path / name)
    rows = [
      {k: v for k, v in row.items() if k not in TIMING_KEYS}
      for row in metrics.read_metrics(tmp_path / name)
    ]
    runs.append((results, rows))
  (results, rows), (_, rows_again) = runs
  assert rows == rows_again  # the sampler's seed comes from the step's key
  saved = json.loads((tmp_path / "a" / "config.json").read_text())
  assert (saved["sampler"], saved["dimod_sampler"]) == ("dimod", "simulated_annealing")
  # The held reads are judged like any population, at every evaluation, and are the prior's.
  assert_reads_look_exact(rows, config, {"z1": 100, "z2": 100})
  assert "max_error" in results["sampler_diagnostic"]
  # The IW bound is never above the single-sample bound on the same draws (no reference NLL).
  assert results["test_nll"] <= results["test_neg_elbo"] + 1e-3


# Slow: the default suite trains on a dimod sampler's reads with an RBM (above) and judges a graph
# prior's unit and edge moment groups in tests/samplers/test_graph_priors.py.
@pytest.mark.slow
def test_a_chimera_prior_trains_on_annealed_reads(data_dir, tmp_path):
  pytest.importorskip("dwave_networkx", reason="the Chimera prior needs the [dwave] extra")
  anneal = "beta_range=(0.01,1.0),num_sweeps=20"  # anneals to β = 1 (README's table)
  config = tiny_config("dvae_sharp", data_dir, prior="chimera", **dict(SA, dimod_kwargs=anneal))
  results = train.train_and_evaluate(config, tmp_path / "run")
  assert results["test_nll"] <= results["test_neg_elbo"] + 1e-3  # (no reference NLL exists)
  # A graph prior's moment groups: the diagnostic judges units and edges; the annealed reads of
  # the 200 units read as exact samples (the edges' products are not independent components).
  rows = metrics.read_metrics(tmp_path / "run")
  assert all("val/sampler_edge_error" in row for row in rows if "val/sampler_error" in row)
  assert_reads_look_exact(rows, config, {"unit": 200})


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(sampler="dimod"), "sampler='dimod' needs dimod_sampler"),
    (dict(dimod_sampler="tabu"), "dimod_sampler 'tabu' is given but sampler is 'pa'"),
    (dict(dimod_kwargs="num_reads=4"), "dimod_kwargs 'num_reads=4' is given but sampler is 'pa'"),
  ],
)
def test_dimod_keys_must_go_together(data_dir, overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.resolve_config(tiny_config("dvae_sharp", data_dir, **overrides))


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(SA, dimod_kwargs="sweeps=3"), "SimulatedAnnealingSampler takes no sweeps"),
    (dict(SA, dimod_sampler="annealer"), "unknown --dimod_sampler='annealer'"),
    (dict(SA, dimod_sampler="no_such_module:S"), "cannot import 'no_such_module'"),
  ],
)
def test_a_bad_dimod_sampler_is_refused_before_training(data_dir, overrides, message):
  with pytest.raises(config_lib.ConfigError, match=f"sampler='dimod': .*{message}"):
    experiment_lib.build(tiny_config("dvae_sharp", data_dir, **overrides))


def test_the_zero_machine_is_drawn_uniformly_without_the_sampler(monkeypatch):
  # DropVariableSampler's reads are refused whenever it is called: here it must not be.
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parent))
  prior = rbm.init_rbm(30, 20)
  draw = dimod_bridge.make_dimod_draw("dimod_test_samplers:DropVariableSampler", "", 4000, prior)
  zero = rbm.RBM(*(np.asarray(x) for x in prior))
  reads = draw(7, zero)
  assert reads.shape == (4000, 50) and reads.dtype == np.uint8
  np.testing.assert_array_equal(reads, draw(7, zero))
  # Uniform: each unit's mean within 5 SE (0.5 / sqrt(4000)) of 1/2.
  assert np.max(np.abs(reads.mean(0) - 0.5)) < 5 * 0.5 / np.sqrt(4000)
  nonzero = zero._replace(b1=zero.b1 + 0.1)
  with pytest.raises(dimod_bridge.DimodSampleError, match="other variables"):
    draw(7, nonzero)
