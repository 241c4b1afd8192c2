"""benchmarks.log_z_tracker_check: the per-evaluation summary of a run's metrics rows."""

import json

import pytest

from benchmarks import log_z_tracker_check as check


def _rows():
  # Tracker values T and the training sampler's own increments over two refresh intervals, then
  # an evaluation: the untracked value is the start plus every own increment.
  start, own, tracker = 10.0, [-0.3, -0.2, -0.05], [10.5, 11.1]
  truth_at_eval = 11.4
  t_prev, rows, value = start, [], start
  for step, (inc, t) in enumerate(zip(own[:2], tracker, strict=True), start=1):
    value = t_prev + 0.5 + inc  # 0.5: the true change over each interval
    rows.append(
      {
        "step": 50 * step,
        "sampler/log_z_refresh_drift": value - t,
        "sampler/log_z_refresh_stderr": 0.1 * step,
      }
    )
    t_prev = t
  at_eval = t_prev + 0.3 + own[2]
  errors = {"val/sampler_z1_error": 1.1, "val/sampler_z2_error": 1.4, "val/sampler_z1z2_error": 0.9}
  rows.append({"step": 150, "val/sampler_log_z_drift": at_eval - truth_at_eval, **errors})
  untracked = start + 0.5 + 0.5 + 0.3 + sum(own) - truth_at_eval
  return rows, at_eval - truth_at_eval, untracked


def test_summary_recovers_the_untracked_error_and_the_largest_moment_error(tmp_path):
  rows, error, untracked = _rows()
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows[::-1]) + "\n")
  (tmp_path / "config.json").write_text(json.dumps({"log_z_tracker_sweeps": 200, "k": 1}))
  run = check.read_run(tmp_path)
  assert run["config"]["log_z_tracker_sweeps"] == 200 and run["config"]["num_sweeps"] is None
  (e,) = run["evaluations"]
  assert e["step"] == 150 and e["max_moment_error"] == 1.4 and e["tracker_stderr"] == 0.2
  assert e["log_z_error"] == pytest.approx(error)
  assert e["untracked_error"] == pytest.approx(untracked)
  assert "| 200 |" in check.markdown({"run": run})


def test_bad_folders_and_rows_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics.jsonl not found"):
    check.read_run(tmp_path)
  with pytest.raises(ValueError, match=r"step 5: an evaluation row without \['val/sampler_z1"):
    check.summarize_run([{"step": 5, "val/sampler_log_z_drift": 0.1}], {})


def test_training_ais_runs_get_their_logged_stderr_and_z(tmp_path):
  errors = {"val/sampler_z1_error": 1.0, "val/sampler_z2_error": 1.2, "val/sampler_z1z2_error": 0.8}
  rows = [
    {"step": 100, "terms/log_z_stderr": 0.02, "sampler/log_z_ais_drift": -0.3},
    {"step": 200, "terms/log_z_stderr": 0.03, "sampler/log_z_ais_drift": -0.2},
    {
      "step": 200,
      "val/sampler_log_z_drift": 0.02,
      "val/sampler_reference_log_z_stderr": 0.04,
      **errors,
    },
  ]
  config = {"num_sweeps": 10, "log_z_refresh_every": 0, "train_ais_num_chains": 512}
  run = check.summarize_run(rows, config)
  (e,) = run["evaluations"]
  assert e["logged_stderr"] == 0.03 and e["tracker_stderr"] is None
  assert e["z"] == pytest.approx(0.02 / 0.05)
  # The anchors removed −0.5 in all: without them the running value would read 0.5 lower.
  assert e["untracked_error"] == pytest.approx(0.02 - 0.5)
  table = check.markdown({"run": run})
  assert "| run | 10 | off |" in table and "| 0.030 | +0.40 |" in table
