"""benchmarks/budget_trend.py: pairing by (struct, seed, budget), filters, the Markdown report."""

import json

from benchmarks import budget_trend


def _write(folder, config, struct, k, seed, steps, nll, *, sweeps=40, dataset="binarized_mnist"):
  (folder / "json").mkdir(parents=True, exist_ok=True)
  name = f"{config}__{struct}__k{k}__s{seed}"
  results = {
    "test_nll": nll,
    "config": {"num_steps": steps, "num_sweeps": sweeps, "dataset": dataset},
  }
  (folder / "json" / f"{name}.json").write_text(json.dumps({"run": name, "results": results}))


def test_differences_pair_seed_and_budget_and_skip_other_sampler_budgets(tmp_path):
  short, long, other = tmp_path / "2k", tmp_path / "50k", tmp_path / "sweeps4"
  for seed, (sharp, dvae) in enumerate([(100.0, 99.0), (101.0, 99.5)]):
    _write(short, "dvae_sharp", "1-layer-lin", 5, seed, 2000, sharp)
    _write(short, "dvae", "1-layer-lin", 5, seed, 2000, dvae)
  _write(short, "dvae", "1-layer-lin", 1, 0, 2000, 50.0)  # another K: ignored
  _write(long, "dvae_sharp", "1-layer-lin", 5, 0, 50000, 95.0)
  _write(long, "dvae", "1-layer-lin", 5, 0, 50000, 95.25)
  _write(long, "dvae", "1-layer-lin", 5, 1, 50000, 90.0)  # no reference for seed 1: unpaired
  _write(other, "dvae", "1-layer-lin", 5, 0, 50000, 0.0, sweeps=4)  # other sampler budget
  runs = budget_trend.load_runs([short, long, other], k=5, dataset="binarized_mnist", num_sweeps=40)
  diffs = budget_trend.paired_differences(runs, "dvae_sharp", ["dvae"])
  assert diffs == {
    ("dvae", "1-layer-lin", 2000): {0: -1.0, 1: -1.5},
    ("dvae", "1-layer-lin", 50000): {0: 0.25},
  }
  table = budget_trend.report(diffs, "dvae_sharp")
  assert "| dvae | 1-layer-lin | -1.25 ± 0.35 (2) | +0.25 (1) |" in table
  assert budget_trend.paired_differences(runs, "dvae_sharp", ["dvae_pp_power"]) == {}
