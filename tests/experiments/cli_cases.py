"""Many runs of a command line in one process (refusals, repeated draws).

``run_cases(module, cases)`` starts one Python process that imports ``module`` (an absl command:
experiments.run, .evaluate, .sample) once and runs its entry point (``run()``, else
``absl.app.run(main)``) for each case's arguments as ``sys.argv``, with the flags reset to their
defaults in between, recording each case's exit status and what it wrote to stdout and stderr, as
``python -m module *args`` would have (files it writes are written). A case that ends in an
exception other than ``SystemExit`` is recorded with its traceback in stderr, so the tests' "no
traceback" check still fails on it. Each command keeps at least one test that runs it as a
real process (``test_evaluate.run_module``): the interpreter's own exit path is checked there.
"""

import json
import os
import pathlib
import subprocess
import sys
from typing import NamedTuple

REPO = pathlib.Path(__file__).resolve().parents[2]

_DRIVER = r"""
import contextlib, importlib, io, json, sys, traceback
from absl import app, flags

module_name, cases = sys.argv[1], json.loads(sys.stdin.read())
module = importlib.import_module(module_name)
# What `python -m module` runs: the module's run() where it has one (experiments.run rewrites
# sys.argv first), else absl's app.run(main).
entry = getattr(module, "run", None) or (lambda: app.run(module.main))
results = []
for args in cases:
  flags.FLAGS.unparse_flags()
  sys.argv = [module_name, *args]
  err, out = io.StringIO(), io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
    try:
      entry()
      code = 0
    except SystemExit as exit:
      code = exit.code
    except BaseException:
      traceback.print_exc()
      code = 1
  if isinstance(code, str):  # sys.exit(message): the interpreter prints it and exits with 1
    err.write(code + "\n")
    code = 1
  results.append({"returncode": code or 0, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


class Result(NamedTuple):
  returncode: int
  stdout: str
  stderr: str


def run_cases(module: str, cases: list[list[str]], env: dict | None = None) -> list[Result]:
  """One process running ``module``'s command once per entry of ``cases`` (argument lists);
  returns each case's ``Result`` in order."""
  env = {**os.environ, **(env or {})}
  proc = subprocess.run(
    [sys.executable, "-c", _DRIVER, module],
    input=json.dumps(cases),
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [Result(**r) for r in json.loads(proc.stdout.splitlines()[-1])]


def run_table(
  module: str, table: list[tuple[list[str], str]], *common: str, env: dict | None = None
) -> dict[tuple[str, ...], Result]:
  """``run_cases`` of every ``(args, message)`` row of a refusal table, each run with ``common``
  arguments first; returns {tuple(args): Result}."""
  results = run_cases(module, [[*common, *args] for args, _ in table], env=env)
  return {tuple(args): r for (args, _), r in zip(table, results, strict=True)}
