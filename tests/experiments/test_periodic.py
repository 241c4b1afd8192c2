"""Tests of experiments/periodic.py: when the training loop's periodic actions are due."""

from experiments import periodic


def test_actions_are_due_at_their_periods_and_at_the_end():
  ran = []
  log = periodic.PeriodicAction("log", (10,), ran.append)
  checkpoint = periodic.PeriodicAction("checkpoint", (15, 10), ran.append)
  never = periodic.PeriodicAction("off", (0,), ran.append, at_end=False)
  steps = range(1, 36)
  assert [s for s in steps if log.due(s, s == 35)] == [10, 20, 30, 35]
  assert [s for s in steps if checkpoint.due(s, s == 35)] == [10, 15, 20, 30, 35]
  assert not any(never.due(s, s == 35) for s in steps)
  assert periodic.due([log, never, checkpoint], 30, False) == [log, checkpoint]  # list order
  assert periodic.due([checkpoint, log], 35, True) == [checkpoint, log]
  assert log.on_host and not ran
