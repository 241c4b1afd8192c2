"""benchmarks/throughput.py: the rows' formulas from known timings, the size checks, and the
orchestration end to end with tiny sizes (the timings themselves vary from run to run)."""

import json
import os
import pathlib
import subprocess
import sys
import types

import pytest

from benchmarks import throughput

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_sizes_must_divide_block_runner_steps_and_log_every():
  throughput.check_sizes([1, 10, 100], block=200, runner_steps=2000, log_every=100)
  with pytest.raises(ValueError, match="steps per dispatch 30 must be >= 1 and divide --block=200"):
    throughput.check_sizes([1, 30], block=200, runner_steps=3000, log_every=300)
  with pytest.raises(ValueError, match="divide --runner_steps=250"):
    throughput.check_sizes([100], block=200, runner_steps=250, log_every=100)
  with pytest.raises(ValueError, match="divide log_every=50"):
    throughput.check_sizes([100], block=200, runner_steps=2000, log_every=50)


def test_rows_from_known_timings():
  rows = throughput.rows_from_seconds(
    ["step", "fused 10", "runner 10"], [0.020, 0.016, 0.025], [3.0, 5.0, None]
  )
  expected = [  # (ms per step, steps per second, ÷ the step)
    ("step", 20.0, 50.0, 1.0),
    ("fused 10", 16.0, 62.5, 0.8),
    ("runner 10", 25.0, 40.0, 1.25),
  ]
  for row, (name, ms, rate, ratio) in zip(rows, expected, strict=True):
    assert row["variant"] == name and row["seeds"] == 1
    assert row["ms_per_step"] == pytest.approx(ms, rel=1e-12)
    assert row["steps_per_second"] == pytest.approx(rate, rel=1e-12)
    assert row["run_steps_per_second"] == pytest.approx(rate, rel=1e-12)  # one run
    assert row["vs_step"] == pytest.approx(ratio, rel=1e-12)
  assert [r["first_block_seconds"] for r in rows] == [3.0, 5.0, None]
  table = throughput.markdown(
    [{"struct": "1-layer-lin", "k": 1, "num_prior_samples": 1000, "num_sweeps": 10, "rows": rows}],
    "cpu:cpu",
  )
  assert "| 1-layer-lin | 1 | 1000 × 10 | fused 10 | 16.00 | 62.5 | 62.5 | 0.80 |" in table
  # N runs at once: run-steps/s = N / seconds per (program or each process's) step.
  (row,) = throughput.rows_from_seconds(["runner 1 × 4 seeds"], [0.040], [None], [4])
  assert row["seeds"] == 4 and row["steps_per_second"] == pytest.approx(25.0, rel=1e-12)
  assert row["run_steps_per_second"] == pytest.approx(100.0, rel=1e-12)


def test_measure_times_each_size_and_runs_the_runner_with_it(monkeypatch):
  """measure(): the step and the fused programs timed together, then one run per size with that
  steps_per_dispatch (stubbed), in that order."""
  fake = types.SimpleNamespace(
    config="dvae_sharp", k=1, protocol="cpu", override=[], sizes=["1", "10"], block=200,
    repeats=1, runner_steps=2000, num_seeds=["1", "2"], processes=["2"],
  )  # fmt: skip
  monkeypatch.setattr(
    throughput,
    "device_variants",
    lambda c, sizes, block: (["step", "fused 1", "fused 10"], [], [1, 2, 3]),
  )
  monkeypatch.setattr(throughput.timing, "interleaved_medians", lambda fns, n, r: [4.0, 4.4, 3.0])
  runs = []

  def runner(config, num_steps, workdir):
    runs.append((config.steps_per_dispatch, config.seeds, num_steps))
    return (0.030 if config.steps_per_dispatch == 1 else 0.024) * (1.5 if config.seeds else 1)

  def processes(config, n, num_steps, tmp):
    runs.append(("processes", n, num_steps))
    return [0.050, 0.075]  # each process's seconds per step while they ran together

  monkeypatch.setattr(throughput.runner_overhead, "runner_seconds_per_step", runner)
  monkeypatch.setattr(throughput, "processes_seconds", processes)
  record = throughput.measure("1-layer-lin", fake)
  assert runs == [
    (1, None, 2000), (10, None, 2000), (1, "0,1", 2000), (10, "0,1", 2000), ("processes", 2, 2000)
  ]  # fmt: skip
  assert (record["num_prior_samples"], record["num_sweeps"]) == (1000, 10)  # the cpu protocol
  got = {r["variant"]: (r["ms_per_step"], r["run_steps_per_second"]) for r in record["rows"]}
  want = {
    "step": (20.0, 50.0),
    "fused 1": (22.0, 1 / 0.022),
    "fused 10": (15.0, 1 / 0.015),
    "runner 1": (30.0, 1 / 0.030),
    "runner 10": (24.0, 1 / 0.024),
    "runner 1 × 2 seeds": (45.0, 2 / 0.045),
    "runner 10 × 2 seeds": (36.0, 2 / 0.036),
    "2 processes": (60.0, 1 / 0.050 + 1 / 0.075),  # 20 + 13.3 run-steps/s together
  }
  assert list(got) == list(want)
  for name, (ms, rate) in want.items():
    assert got[name] == (pytest.approx(ms, rel=1e-12), pytest.approx(rate, rel=1e-12)), name


# Slow (a subprocess that compiles every variant); the report's arithmetic is tested above.
@pytest.mark.slow
def test_throughput_end_to_end(data_dir, tmp_path):
  cmd = [
    sys.executable, "-m", "benchmarks.throughput", "--sizes=1,2", "--block=4", "--repeats=1",
    "--runner_steps=8", "--override=num_prior_samples=16", "--override=num_sweeps=1",
    "--override=batch_size=8", "--override=log_every=2", "--override=train_ais_num_chains=8",
    "--override=train_ais_num_temperatures=10", f"--out_dir={tmp_path}", "--num_seeds=1,2",
  ]  # fmt: skip
  env = {
    **os.environ,
    "DVAE_JAX_DATA_DIR": str(data_dir),
  }
  subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env, capture_output=True, timeout=900)
  record = json.loads((tmp_path / "throughput_cpu.json").read_text())
  (rec,) = record["records"]
  assert (rec["struct"], rec["num_sweeps"], rec["num_prior_samples"]) == ("1-layer-lin", 1, 16)
  rows = {r["variant"]: r for r in rec["rows"]}
  assert list(rows) == [
    "step", "fused 1", "fused 2", "runner 1", "runner 2", "runner 1 × 2 seeds",
    "runner 2 × 2 seeds",
  ]  # fmt: skip
  assert rows["runner 2 × 2 seeds"]["run_steps_per_second"] == pytest.approx(
    2 * rows["runner 2 × 2 seeds"]["steps_per_second"], rel=1e-12
  )
  assert min(r["ms_per_step"] for r in rows.values()) > 0
  assert "| runner 2 |" in (tmp_path / "throughput_cpu.md").read_text()
