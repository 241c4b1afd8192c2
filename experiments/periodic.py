"""Periodic actions of the training loop (as clu's ``periodic_actions``): work done after some
steps (log, evaluate, write images, checkpoint, refresh the sampler's log Z), given to the loop as
a list instead of flags in its body. The loop runs the actions due after each dispatch of train
steps (``dispatches``: one step, or ``steps_per_dispatch`` fused), in list order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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


def dispatches(start: int, num_steps: int, steps_per_dispatch: int) -> Iterator[tuple[int, int]]:
  """``(first step, number of steps)`` of each dispatch of steps ``start .. num_steps - 1``.

  Dispatches end at the multiples of ``steps_per_dispatch`` (so at every step that a period
  divisible by it names, wherever the run resumed) and at ``num_steps``: after a resume at a step
  that is not such a multiple, or before an end that is not, one dispatch is shorter.
  """
  if steps_per_dispatch < 1:
    raise ValueError(f"steps_per_dispatch must be >= 1, got {steps_per_dispatch}")
  step = start
  while step < num_steps:
    end = min((step // steps_per_dispatch + 1) * steps_per_dispatch, num_steps)
    yield step, end - step
    step = end
