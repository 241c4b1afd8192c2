"""benchmarks/train_speed.py with several sweep budgets: one row per budget, ratios to the first."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import timing

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


# Slow (a subprocess that compiles two budgets' steps and the tracker); the rows' formulas are
# tested from known timings in the default suite (test_benchmarks_train_speed_rows.py).
@pytest.mark.slow
def test_sweep_budgets_are_timed_together_with_the_tracker_refresh(data_dir, tmp_path):
  out = tmp_path / "speed.json"
  cmd = [
    sys.executable, "-m", "benchmarks.train_speed", "--structs=1-layer-lin", "--sweeps=4,1",
    "--steps=2", "--repeats=1", "--noisolate", "--log_z_refresh_every=50", f"--out={out}",
  ]  # fmt: skip
  env = {
    **os.environ,
    "DVAE_JAX_DATA_DIR": str(data_dir),
  }
  subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env, capture_output=True, timeout=900)
  rows = json.loads(out.read_text())["rows"]
  assert [(r["struct"], r["num_sweeps"]) for r in rows] == [("1-layer-lin", 4), ("1-layer-lin", 1)]
  # The derived columns' formulas are checked from known timings in
  # test_benchmarks_train_speed_rows.py; here, that each timing was measured (timings themselves
  # vary from run to run, so only their sign can be checked).
  for r in rows:
    # The tracker's refresh is timed, not estimated: one refresh per repeat of 2 calls here.
    assert r["tracker_ms_per_step"] > 0
    # So is the training log Z's AIS (once per log_every = 100 steps: one per repeat here).
    assert r["train_ais_ms_per_step"] > 0


def test_amortised_seconds_per_step_spreads_each_refresh_over_its_period():
  # 100 calls every 50 → 2 refreshes: 100 calls × 1 ms = 100 ms = 2 × 50 ms, i.e. 1 ms per step.
  assert timing.amortised_seconds_per_step(1e-3, 100, 50) == pytest.approx(1e-3)
  # 2 calls, one refresh (at call 0): 2 ms per refresh over its 50-step period.
  assert timing.amortised_seconds_per_step(1e-3, 2, 50) == pytest.approx(2e-3 / 50)
  # 120 calls every 50 → 3 refreshes (calls 0, 50, 100).
  assert timing.amortised_seconds_per_step(1e-3, 120, 50) == pytest.approx(0.12 / 3 / 50)
