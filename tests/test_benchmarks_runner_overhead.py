"""benchmarks/runner_overhead.py: the runner's host-side cost per step, split into its pieces."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import runner_overhead

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_make_config_applies_struct_k_sweeps_and_typed_overrides():
  c = runner_overhead.make_config(
    "dvae", "2-layer-nonlin", 5, 7, ["batch_size=20", "learning_rate=0.5", "log_every=3"]
  )
  assert (c.struct, c.k, c.num_sweeps) == ("2-layer-nonlin", 5, 7)
  assert c.batch_size == 20 and isinstance(c.batch_size, int)
  assert c.learning_rate == 0.5 and c.log_every == 3
  assert runner_overhead.make_config("dvae", "1-layer-lin", 1, None, []).num_sweeps is None
  with pytest.raises(ValueError, match="unknown config key 'no_such_key'"):
    runner_overhead.make_config("dvae", "1-layer-lin", 1, None, ["no_such_key=1"])


def test_block_must_hold_whole_log_and_tracker_periods(data_dir, monkeypatch):
  monkeypatch.setenv("DVAE_JAX_DATA_DIR", str(data_dir))
  c = runner_overhead.make_config("dvae_sharp", "1-layer-lin", 1, 1, ["num_prior_samples=16"])
  with pytest.raises(ValueError, match="multiple of log_every=100"):
    runner_overhead.host_variants(c, 75)
  c = runner_overhead.make_config(
    "dvae_sharp", "1-layer-lin", 1, 1, ["num_prior_samples=16", "log_z_refresh_every=30"]
  )
  with pytest.raises(ValueError, match="multiple of log_z_refresh_every=30"):
    runner_overhead.host_variants(c, 100)


# Slow (a subprocess that compiles every variant and runs the runner); the variants' checks above
# run in the default suite.
@pytest.mark.slow
def test_runner_overhead_end_to_end(data_dir, tmp_path):
  out = tmp_path / "overhead.json"
  cmd = [
    sys.executable, "-m", "benchmarks.runner_overhead", "--block=50", "--repeats=1",
    "--runner_steps=300", "--k=1", "--num_sweeps=1", "--override=num_prior_samples=16",
    "--override=log_z_tracker_replicas=16", "--override=log_z_tracker_sweeps=2",
    "--override=log_every=50", "--override=log_z_refresh_every=25",
    "--override=train_ais_num_chains=16", "--override=train_ais_num_temperatures=10",
    f"--out={out}",
  ]  # fmt: skip
  env = {
    **os.environ,
    "DVAE_JAX_DATA_DIR": str(data_dir),
  }
  subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env, capture_output=True, timeout=900)
  record = json.loads(out.read_text())
  assert (record["num_sweeps"], record["num_prior_samples"], record["k"]) == (1, 16, 1)
  rows = {r["variant"]: r for r in record["rows"]}
  assert list(rows) == ["step", "+batch", "+log Z", "runner"]
  # The columns' formulas are checked from known timings in test_benchmarks_train_speed_rows.py;
  # the timings themselves vary from run to run, so here only that each was measured.
  assert min(r["ms_per_step"] for r in rows.values()) > 0
