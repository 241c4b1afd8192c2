"""Tests of experiments/metrics.py: JSON rows, truncation on resume, TensorBoard files, progress."""

import io
import json

import numpy as np
import pytest

from experiments import metrics


def test_rows_are_plain_json_and_truncation_drops_later_rows(tmp_path):
  writer = metrics.MetricsWriter(tmp_path)
  for step in (1, 2, 3, 4):
    writer.write(step, {"loss": np.float32(step / 2), "terms/kl": np.array(1.5), "ok": True})
  writer.truncate_after(2)
  writer.write(3, {"loss": 9.0})
  writer.close()
  rows = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert rows[0] == {"step": 1, "loss": 0.5, "terms/kl": 1.5, "ok": True} and rows[2]["loss"] == 9.0
  assert all(
    isinstance(json.loads(line), dict)
    for line in (tmp_path / metrics.METRICS_FILE).read_text().splitlines()
  )
  events = list((tmp_path / metrics.TENSORBOARD_DIR).glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics.MetricsWriter(tmp_path / "w", enabled=False)
  writer.write(1, {"loss": 1.0})
  writer.truncate_after(0)
  writer.close()
  assert not (tmp_path / "w").exists()


def test_progress_prints_lines_when_not_a_terminal():
  stream = io.StringIO()
  progress = metrics.Progress(total=10, start=0, stream=stream)
  progress.update(3)  # no terminal: silent unless it is a log line
  progress.update(5, "loss 1.0", log_line=True)
  progress.message("done")
  lines = stream.getvalue().splitlines()
  assert len(lines) == 2 and lines[0].startswith("step 5/10 ( 50.0%)") and "ETA" in lines[0]
  assert lines[0].endswith("loss 1.0") and lines[1] == "done"


class _Tty(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_on_a_terminal():
  stream = _Tty()
  progress = metrics.Progress(total=4, start=0, stream=stream)
  progress.update(2)
  text = stream.getvalue()
  assert text.startswith("\r[############............] step 2/4") and "ETA" in text


def test_a_phase_prints_a_line_at_every_tenth_when_not_a_terminal():
  stream = io.StringIO()
  update = metrics.Progress(total=10, start=0, stream=stream).phase("validation", 1000)
  for done in range(100, 1001, 100):  # batches of 100: every batch ends a tenth
    update(done)
  lines = stream.getvalue().splitlines()
  assert len(lines) == 10 and lines[0].startswith("validation: example 100/1000 ( 10.0%)")
  assert lines[-1].startswith("validation: example 1000/1000 (100.0%)")
  stream = io.StringIO()
  update = metrics.Progress(total=10, start=0, stream=stream).phase("test", 1000)
  for done in range(30, 1030, 30):  # 34 batches, the last one short: one line per tenth crossed
    update(min(done, 1000))
  assert len(stream.getvalue().splitlines()) == 10


def test_a_phase_draws_its_own_bar_on_a_terminal():
  stream = _Tty()
  update = metrics.Progress(total=10, start=0, stream=stream).phase("test (5 samples)", 8)
  update(4)
  assert stream.getvalue().startswith("\r[############............] test (5 samples): example 4/8")


@pytest.mark.parametrize("tty", [False, True])
def test_a_timed_phase_reports_its_duration(tty):
  stream = _Tty() if tty else io.StringIO()
  progress = metrics.Progress(total=10, start=0, stream=stream)
  with progress.timed("validation: log Z (AIS)"):
    pass
  text = stream.getvalue()
  assert text.endswith(" s\033[K\n" if tty else " s\n") and text.count("\n") == 1
  assert "validation: log Z (AIS): 0.0 s" in text
  assert ("validation: log Z (AIS) ..." in text) == tty  # shown while it runs, on a terminal
  silent = io.StringIO()
  with metrics.Progress(total=10, start=0, stream=silent, enabled=False).timed("x"):
    pass
  assert silent.getvalue() == ""


def test_read_metrics_drops_an_incomplete_last_line(tmp_path):
  """A write cut off by a crash or a full disk leaves a partial last row: dropped, so that the
  resumed run can rewrite it; a damaged row elsewhere is an error."""
  path = tmp_path / metrics.METRICS_FILE
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
  assert metrics.read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]
  writer = metrics.MetricsWriter(tmp_path)
  writer.truncate_after(1)
  writer.write(2, {"loss": 1.5})
  writer.close()
  assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2]
  path.write_text('{"step": 1, "lo\n{"step": 2}\n')
  with pytest.raises(ValueError):
    metrics.read_metrics(tmp_path)
