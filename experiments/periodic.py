"""Periodic actions of the training loop (as clu's ``periodic_actions``): work done after some
steps (log, evaluate, write images, checkpoint, refresh the sampler's log Z), given to the loop as
a list instead of flags in its body. The loop runs the actions due after each step, in list order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple


class PeriodicAction(NamedTuple):
  """``run(step)`` after every training step ``step`` that one of ``every`` divides (a period of 0
  never does) and, when ``at_end``, after the last step.

  Attributes:
    name: what it does (for messages and tests).
    every: the periods, in steps.
    run: the work; ``step`` is the number of steps done.
    on_host: it needs the state on the host: the loop first waits for the steps in flight and
      checks them (``guards.check_pending``). Actions that only enqueue device work do not.
    at_end: also after the last step.
  """

  name: str
  every: Sequence[int]
  run: Callable[[int], None]
  on_host: bool = True
  at_end: bool = True

  def due(self, step: int, last: bool) -> bool:
    """Whether the action runs after ``step`` steps (``last``: the run's last step)."""
    return (self.at_end and last) or any(p > 0 and step % p == 0 for p in self.every)


def due(actions: Sequence[PeriodicAction], step: int, last: bool) -> list[PeriodicAction]:
  """The actions due after ``step`` steps, in order."""
  return [action for action in actions if action.due(step, last)]
