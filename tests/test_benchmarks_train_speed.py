"""benchmarks/train_speed.py with several sweep budgets: one row per budget, ratios to the first."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_sweep_budgets_are_timed_together_with_the_tracker_estimate(data_dir, tmp_path):
  out = tmp_path / "speed.json"
  cmd = [
    sys.executable, "-m", "benchmarks.train_speed", "--structs=1-layer-lin", "--sweeps=4,1",
    "--steps=2", "--repeats=1", "--noisolate", f"--out={out}",
  ]  # fmt: skip
  env = {
    **os.environ,
    "DVAE_JAX_DATA_DIR": str(data_dir),
    "JAX_COMPILATION_CACHE_DIR": str(REPO_ROOT / ".jax_cache"),
  }
  subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env, capture_output=True, timeout=900)
  rows = json.loads(out.read_text())["rows"]
  assert [(r["struct"], r["num_sweeps"]) for r in rows] == [("1-layer-lin", 4), ("1-layer-lin", 1)]
  assert rows[0]["speedup"] == 1.0 and rows[0]["with_tracker_speedup"] == 1.0
  for r in rows:
    assert r["speedup"] == pytest.approx(r["steps_per_second"] / rows[0]["steps_per_second"])
    # The tracker's estimate: (200 + 12) sweeps × 512 replicas per 50 steps, at the measured cost
    # of one replica-sweep of the training sampler (1000 replicas × num_sweeps per step).
    replica_sweep_ms = r["sampler_ms"] / (r["num_sweeps"] * 1000)
    assert r["tracker_ms_per_step_estimate"] == pytest.approx(replica_sweep_ms * 212 * 512 / 50)
    assert r["with_tracker_steps_per_second"] == pytest.approx(
      1e3 / (r["step_ms"] + r["tracker_ms_per_step_estimate"])
    )
