"""Tests of experiments/workdir_lock.py: one run per workdir, stale locks, multi-host, free space.

Other holders are real processes: a child that holds the lock until told to stop, a child that is
alive but holds no flock, a child that has ended. Nothing depends on timing."""

import collections
import json
import os
import socket
import subprocess
import sys

import jax
import pytest
from test_train import REPO, tiny_config

from experiments import train, workdir_lock

HOLDER = (
  "import sys\n"
  "from experiments import workdir_lock\n"
  "with workdir_lock.WorkdirLock(sys.argv[1]):\n"
  "  print('locked', flush=True)\n"
  "  sys.stdin.read()\n"  # holds the lock until its stdin closes
)


@pytest.fixture
def holder(tmp_path):
  """A child process holding the lock of ``tmp_path``."""
  proc = subprocess.Popen(
    [sys.executable, "-c", HOLDER, str(tmp_path)],
    cwd=REPO,
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert proc.stdout.readline() == "locked\n"
  yield proc
  proc.stdin.close()
  proc.wait(timeout=60)


def _write_lock(workdir, pid, pid_start):
  record = {"host": socket.gethostname(), "pid": pid, "pid_start": pid_start, "started": 0.0}
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(record))


def test_lock_held_by_another_process_is_refused_until_it_ends(tmp_path, holder):
  with pytest.raises(workdir_lock.WorkdirBusyError) as info:
    workdir_lock.WorkdirLock(tmp_path).acquire()
  message = str(info.value)
  assert (
    f"workdir {tmp_path} is in use by PID {holder.pid} on host {socket.gethostname()}" in message
  )
  assert "command " in message and "-c" in message and "one run per workdir" in message
  holder.stdin.close()
  assert holder.wait(timeout=60) == 0
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()  # released: the file is removed
  with workdir_lock.WorkdirLock(tmp_path) as lock:
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
  assert not lock.path.exists()


def test_stale_lock_of_an_ended_process_is_taken_over(tmp_path):
  ended = subprocess.run(
    [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
  )
  _write_lock(tmp_path, int(ended.stdout), pid_start=None)  # its flock ended with it
  with workdir_lock.WorkdirLock(tmp_path) as lock:
    record = json.loads(lock.path.read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()


def test_lock_file_naming_a_live_process_is_refused_and_a_reused_pid_is_not(tmp_path):
  """Without any flock (a file system that lacks it, a file written by hand) the recorded PID
  decides; its recorded start time tells the holder from a later process with the same PID."""
  live = subprocess.Popen(
    [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
  )
  try:
    start = workdir_lock._process_start_time(live.pid)
    assert start is not None
    _write_lock(tmp_path, live.pid, start)
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f"in use by PID {live.pid}"):
      workdir_lock.WorkdirLock(tmp_path).acquire()
    _write_lock(tmp_path, live.pid, str(int(start) - 1))  # the PID of an earlier process
    with workdir_lock.WorkdirLock(tmp_path) as lock:
      assert json.loads(lock.path.read_text())["pid"] == os.getpid()
  finally:
    live.stdin.close()
    live.wait(timeout=60)


def test_multi_host_only_process_0_locks_and_the_others_share_its_outcome(
  tmp_path, holder, monkeypatch
):
  broadcasts = []
  outcome = collections.deque()

  def broadcast(value):
    broadcasts.append(int(value))
    return outcome.popleft() if outcome else int(value)

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(workdir_lock, "_broadcast", broadcast)
  free = tmp_path / "free"
  # Process 1 never touches the lock file: it waits for process 0's outcome.
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  outcome.append(0)
  with workdir_lock.WorkdirLock(free):
    assert not (free / workdir_lock.LOCK_FILE).exists()
  outcome.append(1)
  with pytest.raises(workdir_lock.WorkdirBusyError, match="process 0 could not lock"):
    workdir_lock.WorkdirLock(tmp_path).__enter__()
  # Process 0 takes the lock, or broadcasts its failure before raising it.
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  with workdir_lock.WorkdirLock(free) as lock:
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f"in use by PID {holder.pid}"):
    workdir_lock.WorkdirLock(tmp_path).__enter__()
  assert broadcasts == [0, 0, 0, 1]  # what each process itself broadcast


def test_too_little_free_space_is_found_before_training(data_dir, tmp_path, monkeypatch):
  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(workdir_lock.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 10**6))
  with pytest.raises(workdir_lock.WorkdirError) as info:
    train.train_and_evaluate(tiny_config("dvae", data_dir), tmp_path)
  message = str(info.value)
  assert f"workdir {tmp_path} has 1.0 MiB free; this run needs about" in message
  assert "4 checkpoints of" in message and "Nothing was started" in message
  assert list(tmp_path.iterdir()) == []  # not even config.json; the lock file is gone
