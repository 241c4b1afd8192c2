"""benchmarks/gpu_check.py: the GPU command, run unchanged on the CPU with a tiny budget."""

import json
import os
import pathlib
import subprocess
import sys

from benchmarks import gpu_check

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_comparison_steps_fit_the_budget_at_the_slowest_struct():
  # 4 runs (2 configs × 2 structs) share 400 s; half of each share trains at 30 steps/s.
  rates = {"1-layer-lin": 50.0, "1-layer-nonlin": 30.0}
  options = dict(
    configs=["dvae", "dvae_sharp"], structs=list(rates), train_fraction=0.5, min_steps=200
  )
  assert gpu_check.comparison_steps(rates, 400.0, **options) == 1500  # 0.5 · 100 s · 30 = 1500
  assert gpu_check.comparison_steps(rates, 100.0, **options) == 300  # 375: multiple of 100
  assert gpu_check.comparison_steps(rates, 1.0, **options) == 200  # never below min_steps
  # Two seeds per run: counted as twice the runs.
  assert gpu_check.comparison_steps(rates, 400.0, **options, num_seeds=2) == 500


def test_gpu_check_runs_end_to_end_on_cpu(data_dir, tmp_path):
  out = tmp_path / "gpu"
  cmd = [
    sys.executable, "-m", "benchmarks.gpu_check", "--budget_s=1", f"--out={out}",
    "--structs=1-layer-lin", "--compare_structs=1-layer-lin", "--speed_steps=2", "--seeds=0,1",
    "--speed_repeats=1", "--min_steps=10", "--eval_num_examples=20", "--eval_iw_samples=4",
    "--override=val_iw_samples=4", "--override=ais_num_chains=16",
    "--override=ais_num_temperatures=10", "--override=num_prior_samples=64",
    "--override=log_z_tracker_replicas=16", "--override=log_every=5", "--overhead_block=50",
    "--override=train_ais_num_chains=16", "--override=train_ais_num_temperatures=10",
    "--overhead_repeats=1", "--overhead_runner_steps=20",
    # The default diagnostic (2 PA references of 2048 replicas x 1000 temperatures at each of the 5
    # evaluations) was 80% of this test's time; its sizes are not what the test checks.
    "--override=sampler_diagnostic_replicas=16", "--override=sampler_diagnostic_temperatures=10",
  ]  # fmt: skip
  env = {
    **os.environ,
    "DVAE_JAX_DATA_DIR": str(data_dir),
    "JAX_COMPILATION_CACHE_DIR": str(REPO_ROOT / ".jax_cache"),
  }
  subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env, capture_output=True, timeout=900)
  summary = json.loads((out / "gpu_check.json").read_text())
  assert summary["comparison_steps"] == 10 and summary["budget_s"] == 1
  assert set(summary["steps_per_second"]) == {"1-layer-lin"}
  assert set(summary["comparison_wall_s"]) == {"1-layer-lin"}
  assert set(summary["runner_overhead"]) == {"step", "+batch", "+log Z", "runner"}
  assert min(summary["runner_overhead"].values()) > 0
  runner = summary["runner_steps_per_second"]["1-layer-lin"]
  assert set(runner) == {"dvae", "dvae_sharp"} and min(runner.values()) > 0
  speed = json.loads((out / "train_speed.json").read_text())
  assert speed["rows"][0]["num_sweeps"] == 40 and speed["rows"][0]["steps_per_second"] > 0
  for config in ("dvae", "dvae_sharp"):  # seeds 0 and 1 of each config trained in one program
    for seed in (0, 1):
      name = f"{config}__1-layer-lin__k5__s{seed}"
      run = json.loads((out / "table1" / "json" / f"{name}.json").read_text())
      assert run["results"]["config"]["num_steps"] == 10 and run["results"]["test_nll"] > 0
      assert run["results"]["config"]["seed"] == seed
      assert (out / "table1" / "runs" / name / "results.json").is_file()
    assert (out / "table1" / "programs" / f"{config}__1-layer-lin__k5" / "seed_1").is_symlink()
  assert "| dvae | 1-layer-lin |" in (out / "table1" / "table1.md").read_text()
