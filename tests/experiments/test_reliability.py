"""End-to-end tests of the reliability guarantees (README "Reliability"), through the command line.

Each fault is made deterministically: a divergence by a huge learning rate, a damaged file by
truncating it, a concurrent run by holding the lock in this process, a preemption by the runner's
``debug_signal_step`` hook (it sends itself SIGTERM after that step), an unwritable workdir by
permissions. Runs are tiny (the TINY budget of test_train.py).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
from test_train import (
  REPO,
  assert_rows_close,
  run_cli,
  run_two_processes,
  tiny_config,
)

from dvae_jax.data import batching
from experiments import checkpointing, metrics, preemption, train, workdir_lock


def error_paragraph(proc) -> str:
  """The one 'error: ...' paragraph of a refused run; no traceback anywhere."""
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


def test_divergence_stops_naming_step_term_and_value_and_keeps_last_good_checkpoint(
  data_dir, tmp_path
):
  # learning_rate=1e6: step 1 is sane (loss ≈ 250), step 2's loss is ≈ 9e8 nats.
  proc = run_cli(
    tmp_path, data_dir, num_steps=20, checkpoint_every=1, eval_every=10, learning_rate=1e6
  )
  message = error_paragraph(proc)
  assert "training diverged at step 2: loss = " in message
  assert "is outside ±10000 (guard_max_nats)" in message
  assert "the last good checkpoint (step 1) is kept" in message
  value = float(message.split("loss = ")[1].split()[0])
  assert abs(value) > 1e4
  assert "test NLL" not in proc.stdout and not (tmp_path / "results.json").exists()
  ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", 2)
  assert ckpt.all_steps() == [1]
  ckpt.close()
  rows = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in rows if "loss" in r] == [1]  # a training row (and log Z refreshes)
  assert max(r["step"] for r in rows) == 1  # nothing after the bad step


def test_truncated_data_file_is_one_paragraph_error(data_dir, tmp_path):
  bad = tmp_path / "data"
  bad.mkdir()
  original = (data_dir / "binarized_mnist.npz").read_bytes()
  (bad / "binarized_mnist.npz").write_bytes(original[: len(original) // 2])
  proc = run_cli(tmp_path / "w", bad)
  message = error_paragraph(proc)
  assert f"data file {bad / 'binarized_mnist.npz'} (binarized_mnist) is unusable" in message
  assert "cannot be read (BadZipFile" in message and "Loading stopped there" in message
  assert data_dir.joinpath("binarized_mnist.npz").is_file()
  assert "has md5 6a167d58bf86f02bdbe2f558ff907ce0" in message  # how to check a replacement


def _damage(checkpoint_dir: pathlib.Path) -> dict[pathlib.Path, bytes]:
  """Truncates every data file of a checkpoint to half (a disk error); returns the new contents."""
  damaged = {}
  for path in checkpoint_dir.rglob("*"):
    if path.is_file() and path.parent.name == "d":  # OCDBT data files
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
      damaged[path.relative_to(checkpoint_dir)] = path.read_bytes()
  assert damaged
  return damaged


class SimulatedCrash(Exception):
  pass


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(data_dir, tmp_path, monkeypatch):
  # Checkpoints every 2 steps and at the evaluations (3, 6): after step 4 they are 3 and 4.
  config = tiny_config("dvae_sharp", data_dir, num_steps=6, checkpoint_every=2, eval_every=3)
  straight = train.train_and_evaluate(config, tmp_path / "straight")
  workdir = tmp_path / "w"
  real_slab = batching.slab_indices

  def crashing_slab(seed, step, *args):
    if step == 4:  # steps 1..4 done
      raise SimulatedCrash
    return real_slab(seed, step, *args)

  monkeypatch.setattr(batching, "slab_indices", crashing_slab)
  with pytest.raises(SimulatedCrash):
    train.train_and_evaluate(config, workdir)
  monkeypatch.setattr(batching, "slab_indices", real_slab)
  damaged = _damage(workdir / "checkpoints" / "4")  # then a disk error hits the latest checkpoint

  proc = run_cli(workdir, data_dir, num_steps=6, checkpoint_every=2, eval_every=3)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  path4 = workdir / "checkpoints" / "4"
  assert f"checkpoint of step 4 ({path4}) could not be restored" in proc.stderr
  assert "resuming from step 3" in proc.stderr
  assert f"resuming {workdir} from step 3" in proc.stdout
  # The damaged checkpoint is kept, byte for byte, outside the folder orbax manages (the resumed
  # run saved a new step 4 into that folder).
  kept = workdir / "checkpoints_unrestorable" / "4"
  assert f"moved to {kept}" in proc.stderr
  for relative, content in damaged.items():
    assert (kept / relative).read_bytes() == content
  # The resumed run is the uninterrupted one.
  assert_rows_close(
    metrics.read_metrics(tmp_path / "straight"), metrics.read_metrics(workdir), rtol=1e-6
  )
  resumed = json.loads((workdir / "results.json").read_text())
  for key in ("test_nll", "val_nll", "best_step"):
    assert resumed[key] == pytest.approx(straight[key], rel=1e-6), key


def test_second_run_on_a_workdir_in_use_is_refused(data_dir, tmp_path):
  with workdir_lock.WorkdirLock(tmp_path) as lock:  # this process is the first run
    proc = run_cli(tmp_path, data_dir)
    held = json.loads(lock.path.read_text())
  message = error_paragraph(proc)
  assert f"workdir {tmp_path} is in use by PID {os.getpid()} on host {held['host']}" in message
  assert "one run per workdir" in message
  assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written; the lock released


# A 6-step run that checkpoints at 4 and evaluates at 3 and 6, trained once (finished_run) for the
# tests that stop and resume it (here and in test_pending_runs.py).
STOP_AT_5 = {"num_steps": 6, "checkpoint_every": 4, "eval_every": 3}


def test_sigterm_checkpoints_exits_75_and_the_same_command_resumes_exactly(
  data_dir, tmp_path, finished_run
):
  # Checkpoints at 4 (and evaluations at 3, 6): the stop after step 5 is off both schedules.
  overrides = STOP_AT_5
  straight_run = finished_run("dvae_sharp", **overrides)
  straight = straight_run.results
  workdir = tmp_path / "w"
  stopped = run_cli(workdir, data_dir, **overrides, debug_signal_step=5)
  assert stopped.returncode == preemption.EXIT_CODE == 75, stopped.stderr[-3000:]
  assert "received SIGTERM: finishing the current step, writing a checkpoint" in stopped.stderr
  assert f"stopped by SIGTERM after step 5; its checkpoint is in {workdir}" in stopped.stderr
  assert "Traceback" not in stopped.stderr and "test NLL" not in stopped.stdout
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", 2)
  assert ckpt.all_steps() == [4, 5]
  ckpt.close()
  assert max(r["step"] for r in metrics.read_metrics(workdir)) == 5

  resumed = run_cli(workdir, data_dir, **overrides, debug_signal_step=5)  # the same command
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming {workdir} from step 5" in resumed.stdout
  assert_rows_close(
    metrics.read_metrics(straight_run.workdir), metrics.read_metrics(workdir), rtol=1e-6
  )
  results = json.loads((workdir / "results.json").read_text())
  for key in ("test_nll", "test_neg_elbo", "val_nll", "best_step", "test_log_z"):
    assert results[key] == pytest.approx(straight[key], rel=1e-6), key


def _make_unwritable(path: pathlib.Path) -> None:
  if os.geteuid() != 0:
    path.chmod(0o555)
    return
  # root ignores permissions; the immutable attribute stops it (ext4/xfs/btrfs, CAP_LINUX_IMMUTABLE)
  proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
  if proc.returncode != 0:
    pytest.skip(f"as root, only chattr +i makes {path} unwritable, and it failed: {proc.stderr}")


def _make_writable(path: pathlib.Path) -> None:
  if os.geteuid() != 0:
    path.chmod(0o755)
  else:
    subprocess.run(["chattr", "-i", str(path)], check=True)


def test_unwritable_workdir_is_found_before_training(data_dir, tmp_path):
  workdir = tmp_path / "w"
  (workdir / "checkpoints" / "2").mkdir(parents=True)
  (workdir / "checkpoints" / "2" / "data").write_bytes(b"the last good checkpoint")
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
  _make_unwritable(workdir)
  try:
    proc = run_cli(workdir, data_dir)
  finally:
    _make_writable(workdir)
  message = error_paragraph(proc)
  assert f"workdir {workdir} cannot be written" in message
  assert "Nothing was started and nothing in it was changed" in message
  assert "step " not in proc.stdout  # no training, not even the model was built
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before
  assert (workdir / "checkpoints" / "2" / "data").read_bytes() == b"the last good checkpoint"


def test_a_workdir_that_cannot_be_created_is_found_before_training(data_dir, tmp_path):
  """Its parent is a file: the same error as an unwritable workdir (needs no chattr as root)."""
  (tmp_path / "file").write_text("")
  proc = run_cli(tmp_path / "file" / "w", data_dir)
  assert f"workdir {tmp_path / 'file' / 'w'} cannot be written" in error_paragraph(proc)


def test_failed_io_in_the_workdir_is_one_paragraph(data_dir, tmp_path):
  """A workdir file that cannot be used (here metrics.jsonl is a folder) stops the run with its
  path and the error, no traceback."""
  (tmp_path / metrics.METRICS_FILE).mkdir()
  message = error_paragraph(run_cli(tmp_path, data_dir))
  assert f"Is a directory: '{tmp_path / metrics.METRICS_FILE}'" in message
  assert "what was written before (checkpoints, metrics) is intact" in message


def test_second_signal_aborts_at_once(tmp_path):
  """The process signals itself twice: the first requests a stop, the second aborts (128 + 15)
  while the main thread is busy, instead of waiting for the (60 s) work to end."""
  script = (
    "import os, signal, time\n"
    "from experiments import preemption\n"
    "with preemption.stop_on_signals():\n"
    "  os.kill(os.getpid(), signal.SIGTERM)\n"
    "  assert preemption.stop_requested()\n"
    "  print('first handled', flush=True)\n"
    "  os.kill(os.getpid(), signal.SIGTERM)\n"
    "  time.sleep(60)\n"
    "print('not reached')\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=50
  )
  assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
  assert proc.stdout == "first handled\n"
  assert "received SIGTERM: finishing the current step" in proc.stderr
  assert "received SIGTERM again: aborting at once" in proc.stderr


@pytest.mark.slow
def test_multi_host_sigterm_stops_every_process_at_one_step_and_resumes(
  data_dir, tmp_path, finished_run
):
  """Two processes (2 CPU devices each) get SIGTERM after step 5: they agree on the stop step,
  checkpoint it together, exit 75, and the same commands resume to the one-process run."""
  overrides = STOP_AT_5
  one_run = finished_run("dvae_sharp", **overrides)
  one = one_run.results
  workdir = tmp_path / "two"
  stopped = run_two_processes(workdir, data_dir, tmp_path, **overrides, debug_signal_step=5)
  for code, _, err in stopped:
    assert code == preemption.EXIT_CODE, err[-3000:]
    assert "stopped by SIGTERM after step 5" in err
  assert checkpointing.Checkpointer(workdir / "checkpoints", 2).all_steps() == [4, 5]
  resumed = run_two_processes(workdir, data_dir, tmp_path, **overrides, debug_signal_step=5)
  for code, _, err in resumed:
    assert code == 0, err[-3000:]
  assert "resuming" in resumed[0][1]
  assert_rows_close(
    metrics.read_metrics(one_run.workdir), metrics.read_metrics(workdir), rtol=2e-5
  )
  two = json.loads((workdir / "results.json").read_text())
  assert two["test_nll"] == pytest.approx(one["test_nll"], rel=2e-5)
