"""benchmarks/ablations.py: variant names from the configs, pairing by seed, the Markdown report."""

import json

from benchmarks import ablations


def _write(folder, method, seed, nll, results=None, **config):
  (folder / "json").mkdir(parents=True, exist_ok=True)
  c = {
    "method": method,
    "dataset": "binarized_mnist",
    "struct": "1-layer-lin",
    "k": 5,
    "seed": seed,
    "num_steps": 6000,
    "beta": {"dvae_sharp": 40.0, "dvae": 5.0, "dvae_sharp_exp": 12.0}[method],  # §6 table
    "prior": "rbm",
    "num_sweeps": 40,
    "adam_eps_mode": "optax",
    **config,
  }
  name = f"{method}__1-layer-lin__k5__s{seed}"
  record = {"run": name, "results": {"test_nll": nll, "config": c, **(results or {})}}
  (folder / "json" / f"{name}.json").write_text(json.dumps(record))


def test_variants_are_named_by_their_departures_and_paired_by_seed(tmp_path):
  ref, beta, tf1, other = (tmp_path / d for d in ("ref", "beta20", "tf1", "exp"))
  for seed, nll in enumerate([99.0, 100.0]):
    _write(ref, "dvae_sharp", seed, nll)
    _write(beta, "dvae_sharp", seed, nll - 0.5 - seed, beta=20.0)
  _write(tf1, "dvae_sharp", 0, 98.75, adam_eps_mode="tf1")
  _write(other, "dvae_sharp_exp", 1, 101.0)
  _write(other, "dvae", 0, 97.0, beta=10.0, num_steps=2000)  # another budget: no reference
  rows = ablations.summarise(ablations.load_runs([ref, beta, tf1, other]), "dvae_sharp")
  by_name = {r["variant"]: r for r in rows}
  assert set(by_name) == {
    "dvae_sharp",
    "dvae_sharp β=20",
    "dvae_sharp adam_eps_mode=tf1",
    "dvae_sharp_exp",
    "dvae β=10",
  }
  assert by_name["dvae_sharp β=20"]["diff"] == {0: -0.5, 1: -1.5}
  assert by_name["dvae_sharp adam_eps_mode=tf1"]["diff"] == {0: -0.25}
  assert by_name["dvae_sharp_exp"]["diff"] == {1: 1.0}
  assert by_name["dvae β=10"]["diff"] == {}
  assert by_name["dvae_sharp β=20"]["diff_base"] == {
    0: -0.5,
    1: -1.5,
  }  # its method is the reference
  _write(other, "dvae", 1, 96.0, num_steps=2000)
  rows = ablations.summarise(ablations.load_runs([ref, beta, tf1, other]), "dvae_sharp")
  by_name = {r["variant"]: r for r in rows}
  assert by_name["dvae β=10"]["diff_base"] == {}  # seed 0 has no plain dvae at 2000 steps
  assert by_name["dvae"]["diff_base"] == {}
  table = ablations.report(rows, "dvae_sharp")
  assert (
    "| dvae_sharp β=20 | 1-layer-lin | 5 | 6000 | 20 | 98.50 ± 0.00 (2) | -1.00 ± 0.71 (2) |"
    in (table)
  )
  assert "| dvae β=10 | 1-layer-lin | 5 | 2000 | 10 | 97.00 (1) | — | — | — | — |" in table


def test_population_variants_carry_their_diagnostic_and_speed(tmp_path):
  ref, small = tmp_path / "ref", tmp_path / "small"
  for seed in (0, 1):
    diag = {"max_error": 1.1 + seed, "log_z_drift": []}
    _write(ref, "dvae_sharp", seed, 99.0 + seed, num_sweeps=10, results={"train_seconds": 300.0})
    _write(
      small,
      "dvae_sharp",
      seed,
      99.25 + seed,
      num_sweeps=10,
      num_prior_samples=250,
      rao_blackwell="symmetric",
      results={"train_seconds": 100.0 + 100.0 * seed, "sampler_diagnostic": diag},
    )
  reference = "dvae_sharp num_sweeps=10"
  rows = ablations.summarise(ablations.load_runs([ref, small]), reference)
  row = next(r for r in rows if r["variant"] != reference)
  assert row["variant"] == "dvae_sharp num_sweeps=10 num_prior_samples=250 rao_blackwell=symmetric"
  assert row["diff"] == {0: 0.25, 1: 0.25} and row["speed"] == {0: 60.0, 1: 30.0}
  table = ablations.report(rows, reference)
  # Largest diagnostic over the seeds; mean steps/s; none recorded for the reference.
  assert "| +0.25 ± 0.00 (2) | — | 2.10 | 45.0 |" in table
  reference_row = "| 1-layer-lin | 5 | 6000 | 40 | 99.50 ± 0.71 (2) | 0 | — | — | 20.0 |"
  assert f"| {reference} {reference_row}" in table
