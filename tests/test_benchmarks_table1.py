"""Tests of the Table 1 report of benchmarks/table1.py (aggregation over seeds, Markdown table)."""

import statistics

from benchmarks import table1


def _result(nll, steps=2000):
  return {"test_nll": nll, "config": {"num_steps": steps}}


def test_report_aggregates_seeds_per_cell(tmp_path):
  rows = [
    (("dvae_sharp", "1-layer-lin", 1, 0), _result(90.0)),
    (("dvae_sharp", "1-layer-lin", 1, 1), _result(92.0)),
    (("dvae_sharp", "1-layer-lin", 5, 0), _result(88.5)),
    (("dvae", "1-layer-lin", 1, 0), None),  # a failed run: shown as missing, not as a number
  ]
  table = table1.write_report(tmp_path, rows)
  assert (tmp_path / "table1.md").read_text() == table
  first = table.split("Paired differences")[0]
  lines = {line.split(" | ")[0]: line for line in first.splitlines() if line.startswith("| dvae")}
  spread = statistics.stdev([90.0, 92.0])
  assert lines["| dvae_sharp"] == (
    f"| dvae_sharp | 1-layer-lin | 91.00 ± {spread:.2f} | 88.50 | 2000 | 2 |"
  )
  assert lines["| dvae"] == "| dvae | 1-layer-lin | — | — | — | 0 |"


def test_report_pairs_differences_by_seed(tmp_path):
  rows = [
    (("dvae_sharp", "1-layer-lin", 5, 0), _result(90.0)),
    (("dvae_sharp", "1-layer-lin", 5, 1), _result(95.0)),
    (("dvae", "1-layer-lin", 5, 0), _result(91.0)),
    (("dvae", "1-layer-lin", 5, 1), _result(96.5)),
    (("dvae", "1-layer-lin", 5, 2), _result(80.0)),  # no dvae_sharp run of seed 2: not paired
  ]
  table = table1.write_report(tmp_path, rows)
  paired = table.split("Paired differences")[1]
  spread = statistics.stdev([1.0, 1.5])
  assert f"| dvae | 1-layer-lin | +1.25 ± {spread:.2f} | 2 |" in paired.splitlines()
  assert "| dvae_sharp |" not in paired


def test_run_names_are_unique_per_cell():
  names = {
    table1.run_name(c, s, k, seed)
    for c in ("a", "b")
    for s in ("x",)
    for k in (1, 5)
    for seed in (0, 1)
  }
  assert len(names) == 8


def test_presets_name_known_configs_structs_and_datasets():
  from dvae_jax import models
  from experiments import config_lib

  for preset, (configs, structs, ks) in table1.PRESETS.items():
    for config in configs:
      config_lib.load_config(config)  # raises for an unknown name
    assert set(structs) <= set(models.STRUCTS) and set(ks) <= {1, 5, 25}
    expected = {"omniglot": "omniglot", "caltech": "caltech101_silhouettes"}.get(
      preset.split("_")[-1], "binarized_mnist"
    )
    assert table1._dataset(preset) == expected, preset
