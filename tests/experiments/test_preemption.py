"""Tests of experiments/preemption.py in this process (the second-signal abort, which ends its
process, and the command-line runs are in test_reliability.py)."""

import io
import os
import signal

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from experiments import preemption


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_requests_a_stop_and_handlers_are_restored(signum):
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  stream = io.StringIO()
  with preemption.stop_on_signals(stream=stream):
    assert not preemption.stop_requested()
    os.kill(os.getpid(), signum)
    assert preemption.stop_requested()  # before os.kill returned: the stop step is deterministic
    stopped = preemption.Preempted(7, "/w/checkpoints/7")
  name = signal.Signals(signum).name
  assert str(stopped) == (
    f"stopped by {name} after step 7; its checkpoint is in /w/checkpoints/7. Run the same command "
    "to resume (exit code 75)."
  )
  assert stream.getvalue() == (
    f"received {name}: finishing the current step, writing a checkpoint, then exiting; send it "
    "again to abort at once\n"
  )
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before
  assert not preemption.stop_requested()  # the flag belongs to the block


def test_debug_signal_hook_refuses_to_kill_an_unprotected_process():
  with pytest.raises(RuntimeError, match="needs stop_on_signals"):
    preemption.debug_signal(4, 4)


def test_debug_signal_hook_fires_at_its_step_only():
  with preemption.stop_on_signals(stream=io.StringIO()):
    preemption.debug_signal(3, 4)
    preemption.debug_signal(4, 0)  # 0: off
    assert not preemption.stop_requested()
    preemption.debug_signal(4, 4)
    assert preemption.stop_requested()


def test_multi_host_processes_agree_at_sync_steps_only(monkeypatch):
  """Processes must stop at the same step: the flags are gathered (a collective) at the steps where
  every process syncs, and any process's request stops them all."""
  gathered = []

  def allgather(flag):
    gathered.append(int(flag))
    return np.array([int(flag), 1])  # the other process received a signal

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
  assert not preemption.stop_requested(at_sync=False) and gathered == []
  assert preemption.stop_requested(at_sync=True) and gathered == [0]
