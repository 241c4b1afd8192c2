"""The error type and start of the command-line programs that read a finished run
(``experiments.evaluate``, ``experiments.sample``): a value they cannot use is a
:class:`UsageError`, printed as one line, never a traceback."""

from __future__ import annotations


class UsageError(ValueError):
  """A command-line value that ``experiments.evaluate`` / ``experiments.sample`` cannot use."""


def check_minimum(flag, minimum: int) -> None:
  """Refuses an integer flag below ``minimum`` (None means the run's default and passes)."""
  if flag.value is not None and flag.value < minimum:
    raise UsageError(f"invalid --{flag.name}={flag.value}: must be an integer >= {minimum}")


def start_command(argv, workdir: str | None) -> None:
  """Common start of the two commands: no stray arguments, a --workdir, quiet orbax."""
  from absl import app, flags, logging

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not workdir:
    raise app.UsageError("--workdir is required: the folder of a run of experiments.run")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # orbax warns that a read-only folder is read-only
