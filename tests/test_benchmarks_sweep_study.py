"""Tests of the report of benchmarks/sweep_study.py (paired differences, diagnostic maxima)."""

from benchmarks import sweep_study


def _record(nll, sweeps, max_error=None, drifts=(), seconds=100.0):
  results = {
    "test_nll": nll,
    "train_seconds": seconds,
    "config": {"num_sweeps": sweeps, "num_steps": 6000},
  }
  if max_error is not None:
    results["sampler_diagnostic"] = {"max_error": max_error, "log_z_drift": list(drifts)}
  return {"run": "x", "results": results, "learning_curve": {}}


def test_summary_pairs_seeds_with_the_reference_budget():
  cell = ("dvae", "1-layer-lin", 5)
  by_budget = {
    40: {(*cell, 0): _record(100.0, 40), (*cell, 1): _record(101.0, 40)},
    4: {
      (*cell, 0): _record(100.5, 4, 1.1, (-0.2, 0.3), seconds=50.0),
      (*cell, 1): _record(101.1, 4, 1.3, (0.1,), seconds=50.0),
      (*cell, 2): _record(99.0, 4, 0.9, seconds=50.0),  # no reference run for seed 2: not paired
    },
  }
  rows = sweep_study.summarize(by_budget, reference=40)
  four = next(r for r in rows if r["num_sweeps"] == 4)
  assert four["seeds"] == [0, 1, 2]
  assert [round(d, 6) for d in four["paired_difference"]] == [0.5, 0.1]
  assert four["max_sampler_error"] == 1.3 and four["max_eval_log_z_drift"] == 0.3
  assert four["steps_per_second"] == 120.0
  forty = next(r for r in rows if r["num_sweeps"] == 40)
  assert forty["paired_difference"] == [0.0, 0.0] and forty["max_sampler_error"] is None
  text = sweep_study.report(rows, 40)
  assert (
    "| dvae | 1-layer-lin | 5 | 4 | 100.20 ± 1.08 | +0.30 ± 0.28 (2) | 1.30 | 0.30 | 120.0 |"
    in (text)
  )
  assert "| dvae | 1-layer-lin | 5 | 40 | 100.50 ± 0.71 | +0.00 ± 0.00 (2) | — | — | 60.0 |" in text
