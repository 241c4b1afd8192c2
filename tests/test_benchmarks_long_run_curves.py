"""benchmarks/long_run_curves.py: pairing and the last-record-wins rule on hand-written logs."""

import json

import pytest

from benchmarks import long_run_curves


def _write(run_dir, records):
  run_dir.mkdir(parents=True)
  (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_pairs_runs_by_struct_k_seed_and_the_last_record_of_a_step_wins(tmp_path):
  _write(tmp_path / "dvae_sharp__1-layer-lin__k5__s0", [
    {"step": 100, "loss": 1.0},
    {"step": 200, "val/nll": 110.0, "val/sampler_error": 0.5},
    {"step": 400, "val/nll": 105.0},
  ])
  # A resumed run: step 200 logged twice (before the kill and after the restore).
  _write(tmp_path / "dvae__1-layer-lin__k5__s0", [
    {"step": 200, "val/nll": 999.0},
    {"step": 200, "val/nll": 111.5, "val/sampler_error": 0.25},
    {"step": 300, "loss": 2.0},
  ])
  # Another seed with no reference: reported as a run, never paired.
  _write(tmp_path / "dvae__1-layer-lin__k5__s1", [{"step": 200, "val/nll": 1.0}])
  runs = long_run_curves.load(tmp_path)
  assert runs[("dvae", "1-layer-lin", 5, 0)]["last_step"] == 300
  rows = long_run_curves.pair(runs, "dvae_sharp")
  assert rows == [{
    "config": "dvae", "struct": "1-layer-lin", "k": 5, "seed": 0, "step": 200,
    "nll": 111.5, "reference_nll": 110.0, "difference": 1.5,
    "sampler_error": 0.25, "reference_sampler_error": 0.5,
  }]
  table = long_run_curves.report(rows, runs, "dvae_sharp")
  assert "| dvae | 1-layer-lin | 5 | 0 | 200 | 111.50 | 110.00 | +1.50 | 0.250 / 0.500 |" in table
  assert "dvae_sharp 1-layer-lin K=5 seed 0: step 400" in table


def test_a_folder_that_is_not_a_run_folder_is_named(tmp_path):
  _write(tmp_path / "not_a_run", [{"step": 1}])
  with pytest.raises(ValueError, match="not_a_run"):
    long_run_curves.load(tmp_path)
