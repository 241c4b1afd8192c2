"""benchmarks.pending_runs: a run stopped on one machine, packed, unpacked elsewhere and resumed
ends exactly where the uninterrupted run ends."""

import json
import shutil
import tarfile

import pytest
from test_reliability import STOP_AT_5, run_cli
from test_train import assert_rows_close

from benchmarks import pending_runs
from experiments import metrics, preemption


def test_packed_run_resumes_elsewhere_exactly(data_dir, tmp_path, finished_run):
  # Checkpoints at 4 and 5 (the stop), evaluation at 3 and 6: the best-validation checkpoint
  # (step 3) and the newest one must both travel for the final test evaluation to match.
  overrides = STOP_AT_5
  straight_run = finished_run("dvae_sharp", **overrides)  # shared with test_reliability.py
  straight = straight_run.results
  here = tmp_path / "here" / "runs"
  stopped = run_cli(here / "r", data_dir, **overrides, debug_signal_step=5)
  assert stopped.returncode == preemption.EXIT_CODE, stopped.stderr[-3000:]
  (here / "finished").mkdir()  # a finished run gets no archive; a stale one is removed
  (here / "finished" / "results.json").write_text("{}")
  archives = tmp_path / "archives"
  archives.mkdir()
  (archives / "finished.tar.gz").write_bytes(b"stale")

  manifest = pending_runs.pack(here, archives)

  assert manifest == {"r": {"step": 5, "archive": "r.tar.gz"}}
  assert sorted(p.name for p in archives.iterdir()) == [pending_runs.MANIFEST, "r.tar.gz"]
  with tarfile.open(archives / "r.tar.gz") as tar:
    names = tar.getnames()
  assert {"r/config.json", "r/metrics.jsonl", "r/checkpoints/5", "r/checkpoints_best"} <= set(names)
  assert not any(n.startswith("r/checkpoints/4") for n in names)  # only the newest one travels

  shutil.rmtree(tmp_path / "here")  # the first machine is gone
  elsewhere = tmp_path / "elsewhere" / "runs"
  assert pending_runs.unpack(archives, elsewhere) == ["r"]
  resumed = run_cli(elsewhere / "r", data_dir, **overrides, debug_signal_step=5)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming {elsewhere / 'r'} from step 5" in resumed.stdout
  assert_rows_close(
    metrics.read_metrics(straight_run.workdir), metrics.read_metrics(elsewhere / "r"), rtol=1e-6
  )
  results = json.loads((elsewhere / "r" / "results.json").read_text())
  for key in ("test_nll", "val_nll", "best_step", "test_log_z"):
    assert results[key] == pytest.approx(straight[key], rel=1e-6), key

  # A run folder holding a newer checkpoint than its archive is not overwritten.
  assert pending_runs.unpack(archives, elsewhere) == []


def test_unpack_refuses_an_archive_with_foreign_paths(tmp_path):
  archives = tmp_path / "archives"
  archives.mkdir()
  outside = tmp_path / "evil.txt"
  outside.write_text("x")
  with tarfile.open(archives / "r.tar.gz", "w:gz") as tar:
    tar.add(outside, arcname="other/evil.txt")
  with pytest.raises(ValueError, match="unexpected member 'other/evil.txt'"):
    pending_runs.unpack(archives, tmp_path / "runs")
  assert not (tmp_path / "runs" / "other").exists()
