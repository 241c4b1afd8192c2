"""benchmarks/train_speed.py's rows from stubbed timings: every derived column against a value
computed here by hand, so a wrong formula fails (the end-to-end test checks the orchestration)."""

import types

import pytest

from benchmarks import train_speed as bench


def test_rows_from_known_timings(monkeypatch):
  # Two budgets, 100 timed calls; the tracker refreshes every 50 calls, the training AIS every 100.
  configs = [
    types.SimpleNamespace(
      method="dvae_sharp",
      batch_size=100,
      num_prior_samples=1000,
      num_sweeps=sweeps,
      log_z_refresh_every=50,
      log_every=100,
    )
    for sweeps in (4, 1)
  ]
  budgets = iter(configs)
  fake_flags = types.SimpleNamespace(sweeps=["4", "1"], steps=100, repeats=1)
  monkeypatch.setattr(bench, "flags", types.SimpleNamespace(FLAGS=fake_flags))
  monkeypatch.setattr(
    bench, "_timed_budget", lambda struct, b: (None, None, print, print, next(budgets), 7.0)
  )
  # Median seconds per call of (step, sampler, tracker call, AIS call) for each budget.
  medians = [0.040, 0.030, 0.010, 0.005, 0.020, 0.010, 0.010, 0.005]
  monkeypatch.setattr(bench.timing, "interleaved_medians", lambda fns, steps, repeats: medians)
  rows = bench.measure("1-layer-lin")
  # Per step: the tracker's 100 calls × 10 ms = 1 s over 2 refreshes of 50 steps = 10 ms; the AIS'
  # 100 × 5 ms = 0.5 s once per 100 steps = 5 ms.
  expected = [
    {"step_ms": 40.0, "steps_per_second": 25.0, "sampler_ms": 30.0, "sampling_share": 0.75,
     "tracker_ms_per_step": 10.0, "with_tracker_steps_per_second": 20.0,
     "train_ais_ms_per_step": 5.0, "with_log_z_steps_per_second": 1e3 / 55,
     "paper_protocol_train_hours": 1e6 * 0.040 / 3600, "speedup": 1.0,
     "with_tracker_speedup": 1.0, "with_log_z_speedup": 1.0},
    {"step_ms": 20.0, "steps_per_second": 50.0, "sampler_ms": 10.0, "sampling_share": 0.5,
     "tracker_ms_per_step": 10.0, "with_tracker_steps_per_second": 1e3 / 30,
     "train_ais_ms_per_step": 5.0, "with_log_z_steps_per_second": 1e3 / 35,
     "paper_protocol_train_hours": 1e6 * 0.020 / 3600, "speedup": 2.0,
     "with_tracker_speedup": 50 / 30, "with_log_z_speedup": 55 / 35},
  ]  # fmt: skip
  assert [(r["num_sweeps"], r["compile_seconds"]) for r in rows] == [(4, 7.0), (1, 7.0)]
  for row, want in zip(rows, expected, strict=True):
    for key, value in want.items():
      assert row[key] == pytest.approx(value, rel=1e-12), key


def test_runner_overhead_rows_from_known_timings(monkeypatch, tmp_path):
  """benchmarks/runner_overhead.py's rows (ms/step, steps/s, ratio to the bare step) from stubbed
  timings, against values computed here; the steps per dispatch it records are those of the run
  it times (4 steps: S = 4 divides them and log_every = 100), not the config's (S = 10)."""
  import json

  from benchmarks import runner_overhead

  out = tmp_path / "overhead.json"
  fake_flags = types.SimpleNamespace(
    config="dvae_sharp", struct="1-layer-lin", k=1, num_sweeps=1, override=[], block=100,
    repeats=1, runner_steps=4, out=str(out),
  )  # fmt: skip
  monkeypatch.setattr(runner_overhead, "flags", types.SimpleNamespace(FLAGS=fake_flags))
  monkeypatch.setattr(
    runner_overhead, "host_variants", lambda config, block: (["step", "+batch", "+log Z"], [], 3.0)
  )
  monkeypatch.setattr(
    runner_overhead.timing, "interleaved_medians", lambda fns, block, r: [0.020, 0.025, 0.030]
  )
  monkeypatch.setattr(runner_overhead, "runner_seconds_per_step", lambda c, n, w: 0.040)
  runner_overhead.main([])
  rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
  expected = {  # (ms per step, steps per second, ÷ the bare step)
    "step": (20.0, 50.0, 1.0),
    "+batch": (25.0, 40.0, 1.25),
    "+log Z": (30.0, 1e3 / 30, 1.5),
    "runner": (40.0, 25.0, 2.0),
  }
  assert list(rows) == list(expected)
  for name, (ms, per_second, ratio) in expected.items():
    got = rows[name]
    assert (got["ms_per_step"], got["steps_per_second"], got["vs_step"]) == pytest.approx(
      (ms, per_second, ratio), rel=1e-12
    ), name
  assert json.loads(out.read_text())["steps_per_dispatch"] == 4
