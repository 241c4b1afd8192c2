r"""A resumable campaign of long runs: the paper's 1M-step DVAE / DVAE# pairs, advanced for a wall
budget on each machine it gets and carried to the next as archives, until they finish.

The programs: ``--configs`` (dvae, dvae_sharp) × ``--structs`` (1-layer-lin, 1-layer-nonlin), K = 5,
the paper's protocol (``--protocol=paper``: 1M steps, its learning-rate and KL warm-up schedules,
validation on the whole split every 20k steps, test with 4,000 importance samples at the
best-validation checkpoint, PA 1000 × 40 sweeps), each training its seeds (``--seeds``, 0–3) in one
program through ``benchmarks.table1``: ``WORK/programs/<config>__<struct>__k5/seed_N`` link to the
run folders ``WORK/runs/<config>__<struct>__k5__s<N>``.

  # in place: the campaign folder benchmarks/results/gpu_campaign (created by the first one)
  python -m benchmarks.gpu_campaign --budget_s=480
  # on a machine that hands back only an output folder: continue the committed campaign (a new one
  # if that folder does not exist yet), write what changed into FOLDER; then, where the
  # repository is, merge FOLDER into the committed campaign and commit it
  python -m benchmarks.gpu_campaign --budget_s=480 \
      --resume_from=benchmarks/results/gpu_campaign --out=FOLDER
  python -m benchmarks.gpu_campaign merge FOLDER benchmarks/results/gpu_campaign

(``python -m benchmarks.gpu_check --campaign`` runs the same.) Each invocation normally ends
within ``--budget_s``; a stop that waits for an evaluation in progress can add up to
``--stop_grace_s`` less ``--reserve_s``. It:

1. restores the campaign from ``--resume_from`` (default ``--out``): its ``campaign.json`` and the
   archives that lists, unpacked into the work folder ``--work`` (not committed);
2. chooses the programs to advance: the unfinished ones, fewest steps first, as many as fit the
   output limits ``--max_out_files`` and ``--max_out_mib`` beside the summary (each program writes
   one archive per seed, or when it finishes one JSON record per seed; an archive's size is
   estimated from the program's last one, ``--first_pack_mib`` before it has one);
3. runs them one after another, each for an equal share of the budget left (``--budget_s``, less
   ``--reserve_s`` for the last stop and the packing; a program that ends early leaves its time to
   the next): at the end of its share the program is sent SIGTERM, finishes its dispatch,
   checkpoints every seed and exits (``experiments.preemption``, exit code 75). If it has not
   ended ``--stop_grace_s`` later (a stop waits for an evaluation in progress), a second SIGTERM
   aborts it, which keeps its last periodic checkpoint. SIGTERM or SIGINT to the campaign stops the
   running program the same way and skips the rest;
4. packs each program it advanced into ``--out`` (``pending_runs.pack_program``: per seed the
   newest and the best-validation checkpoints, config.json and metrics.jsonl, and the seed's link;
   unpacked they resume all seeds together, bit for bit), or, for a program that finished, copies
   its seeds' records (``benchmarks.table1``'s ``json/<run>.json``: results and learning curve) to
   ``--out/json/``;
5. writes ``--out/campaign.json`` (after each program, so an outer stop loses only the program
   running): the settings; per program its step, ``num_steps``, archives (step, bytes), the wall
   and training steps accumulated over invocations, its latest rates and, once finished, each
   run's test NLL; per invocation the device, the code's commit, the budget and each program's
   steps, share, wall time and rates:

   ``steps_per_second``: the program's steps per second while training (the median of the runner's
   logged ``steps_per_second`` over the invocation's steps, its first block, with the compilation,
   left out; evaluations and checkpoints are not in it); ``run_steps_per_second``: that × the
   seeds (all runs' training steps per second); ``gross_run_steps_per_second``: the seeds × the
   steps advanced over the program's whole wall time (start-up, compilation, evaluations, stop).

``--out`` equal to ``--resume_from`` (the default) updates the campaign in place: the archives of
finished programs are removed. Otherwise ``--out`` holds only what the invocation changed (its
summary, the archives it rewrote, the new records), small enough for the output limits; ``merge``
copies it over the committed campaign, removes archives the new summary no longer lists, and
refuses (changing nothing) if an archive the summary lists would be missing or if the output
does not continue that campaign (its invocations do not begin with the campaign's). A program whose
archives miss one its summary lists, or hold different steps (the set written together did not all
arrive), is left out with an error in the summary's ``refused`` (the others go on).

The output limits' defaults (8 files, 60 MiB) fit one program per invocation: a 1-layer-lin
program of 4 seeds packs to ≈ 19 MiB at its start and ≈ 25 MiB near 1M steps (per seed ≈ 3.7 MB
newest and ≈ 1.2 MB best checkpoint, which hardly compress, and metrics of ≈ 1.5 MB compressed at
1M steps), a 1-layer-nonlin one to ≈ 28–34 MiB (5.5 MB newest checkpoints). Where more may be
written, ``--max_out_files=0 --max_out_mib=0`` advances every program.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

from absl import app, flags

from benchmarks import pending_runs

REPO = pathlib.Path(__file__).resolve().parent.parent
SUMMARY = "campaign.json"
MIB = 2**20
# Settings that name the campaign's runs: an invocation with others would train other runs.
IDENTITY = ("configs", "structs", "k", "seeds", "protocol", "num_steps")
# The flags an invocation of the campaign from benchmarks.gpu_check passes on (gpu_check has its own
# budget_s, out, configs, seeds and override; its compare_structs are the structs).
CAMPAIGN_FLAGS = (
  "resume_from",
  "work",
  "k",
  "protocol",
  "num_steps",
  "steps_per_dispatch",
  "max_out_files",
  "max_out_mib",
  "first_pack_mib",
  "reserve_s",
  "stop_grace_s",
  "min_share_s",
)
_PROBE = "import jax; d = jax.devices(); print(f'{d[0].platform}:{d[0].device_kind} x {len(d)}')"


class CampaignError(Exception):
  """The campaign folder, an output to merge or the settings do not allow what was asked."""


def define_flags(shared: bool = True) -> None:
  """The campaign's flags; ``shared=False`` leaves out those benchmarks.gpu_check defines itself."""
  if shared:
    flags.DEFINE_float(
      "budget_s",
      480.0,
      "Wall-clock budget of the invocation (seconds), stops and packing included.",
    )
    flags.DEFINE_string(
      "out",
      str(REPO / "benchmarks" / "results" / "gpu_campaign"),
      "Output folder: campaign.json, the archives of unfinished runs, json/ of finished ones.",
    )
    flags.DEFINE_list("configs", ["dvae", "dvae_sharp"], "Configs (one program per struct each).")
    flags.DEFINE_list("structs", ["1-layer-lin", "1-layer-nonlin"], "Structs.")
    flags.DEFINE_list("seeds", ["0", "1", "2", "3"], "Seeds, trained together in each program.")
    flags.DEFINE_multi_string("override", [], "Extra KEY=VALUE for every program's config.")
  flags.DEFINE_string(
    "resume_from",
    None,
    "Campaign folder to continue (its campaign.json and archives); default: --out.",
  )
  flags.DEFINE_string(
    "work", str(REPO / "runs" / "gpu_campaign"), "Working folder of the runs (not committed)."
  )
  flags.DEFINE_integer("k", 5, "Importance samples K of the training objective.")
  flags.DEFINE_enum("protocol", "paper", ["cpu", "paper"], "Budget protocol of the runner.")
  flags.DEFINE_integer("num_steps", None, "Training steps (default: the protocol's).")
  flags.DEFINE_integer(
    "steps_per_dispatch",
    100,
    "Fused training steps per dispatch (the same run for any value; must divide log_every, "
    "eval_every and checkpoint_every).",
  )
  flags.DEFINE_integer("max_out_files", 8, "Most files written into --out (0: no limit).")
  flags.DEFINE_float("max_out_mib", 60.0, "Most MiB written into --out (0: no limit).")
  flags.DEFINE_float(
    "first_pack_mib", 40.0, "Assumed MiB of a program's archives before it has been packed once."
  )
  flags.DEFINE_float("reserve_s", 20.0, "Seconds of the budget kept for the last stop and packing.")
  flags.DEFINE_float(
    "stop_grace_s", 180.0, "Seconds a stopped program may take before it is aborted."
  )
  flags.DEFINE_float("min_share_s", 60.0, "Fewest seconds worth starting a program for.")


def forwarded_args(f) -> list[str]:
  """The command-line flags of ``CAMPAIGN_FLAGS`` as set in ``f`` (absl FLAGS), for a subprocess."""
  return [f"--{name}={f[name].value}" for name in CAMPAIGN_FLAGS if f[name].value is not None]


class Program(NamedTuple):
  """One program of the campaign: a config and struct, its seeds trained together."""

  config: str
  struct: str
  k: int
  seeds: tuple[int, ...]

  @property
  def name(self) -> str:  # benchmarks.table1.program_dir's folder name
    return f"{self.config}__{self.struct}__k{self.k}"

  @property
  def runs(self) -> list[str]:  # benchmarks.table1.run_name of each seed
    return [f"{self.name}__s{seed}" for seed in self.seeds]


# ------------------------------------------------------------------------------------------------
# Pure helpers: the plan of an invocation, the rates.


def select_programs(
  pending: list[tuple[str, int, float | None]],
  *,
  max_files: int,
  max_bytes: float,
  files_each: int,
  unknown_bytes: float,
) -> list[str]:
  """The programs to advance, fewest steps first (ties in the given order), as many as fit.

  Args:
    pending: ``(name, step, bytes of its last archives or None)`` of every unfinished program.
    max_files, max_bytes: the output's limits (0: none); the summary takes one file.
    files_each: files a program writes: one archive per seed, or one record per seed when it
      finishes.
    unknown_bytes: the size assumed for a program without archives yet.

  A program's archives are estimated at its last ones' size plus 10% and 1 MiB (its metrics grow).
  """
  order = sorted(range(len(pending)), key=lambda i: (pending[i][1], i))
  files, size, chosen = 1, 0.0, []
  for i in order:
    name, _, known = pending[i]
    need = unknown_bytes if known is None else 1.1 * known + MIB
    if max_files and files + files_each > max_files:
      break  # every program needs as many files
    if max_bytes and size + need > max_bytes:
      continue  # a smaller one may still fit
    chosen.append(name)
    files, size = files + files_each, size + need
  return chosen


def share_seconds(seconds_left: float, programs_left: int) -> float:
  """An equal share of the time left among the programs still to run (the time a program leaves
  unused goes to those after it: the shares are recomputed before each)."""
  return max(0.0, seconds_left) / max(1, programs_left)


def steady_rate(rows: list[dict], from_step: int, to_step: int) -> float | None:
  """The median of the runner's logged ``steps_per_second`` over steps ``from_step`` (excluded)
  to ``to_step``, its first block after a start (the compilation's) left out when there are others;
  None without any."""
  rates = [
    row["steps_per_second"]
    for row in rows
    if "steps_per_second" in row and from_step < row["step"] <= to_step
  ]
  if not rates:
    return None
  return statistics.median(rates[1:] or rates)


# ------------------------------------------------------------------------------------------------
# The campaign folder.


def _write_json(path: pathlib.Path, record: dict) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
  os.replace(tmp, path)


def load_summary(folder: pathlib.Path, settings: dict) -> dict:
  """The campaign summary of ``folder`` (a new one if it has none), checked against ``settings``.

  Raises:
    CampaignError: it is the summary of a campaign of other runs (``IDENTITY`` differs).
  """
  path = folder / SUMMARY
  if not path.exists():
    return {"settings": settings, "programs": {}, "invocations": []}
  summary = json.loads(path.read_text())
  theirs = summary["settings"]
  for key in IDENTITY:
    same = (
      sorted(theirs[key]) == sorted(settings[key])
      if isinstance(settings[key], list)
      else theirs[key] == settings[key]
    )
    if not same:
      raise CampaignError(
        f"{path} is a campaign with {key}={theirs[key]}, not {settings[key]}: continue it with its "
        "settings, or choose another --out (and --resume_from)"
      )
  return summary


def program_state(summary: dict, program: Program) -> dict:
  """The summary's record of ``program`` (created at step 0)."""
  return summary["programs"].setdefault(
    program.name,
    {
      "config": program.config,
      "struct": program.struct,
      "k": program.k,
      "seeds": list(program.seeds),
      "runs": program.runs,
      "step": 0,
      "num_steps": None,
      "finished": False,
      "archives": {},
      "wall_s": 0.0,
      "steps_trained": 0,
      "invocations": 0,
      "steps_per_second": None,
      "run_steps_per_second": None,
    },
  )


def program_step(work: pathlib.Path, program: Program) -> int:
  """The step from which the program resumes in ``work``: the newest checkpoint all its seeds hold
  (0 if one has none)."""
  steps = [pending_runs.latest_step(work / "runs" / run) for run in program.runs]
  return 0 if None in steps else min(steps)


def check_archives(program: Program, state: dict, resume: pathlib.Path) -> int:
  """The step of the program's archives listed in ``state`` (in ``resume``); ``state``'s step when
  it lists none.

  Raises:
    CampaignError: an archive is missing, or the archives hold different steps.
  """
  names = list(state["archives"])
  missing = [n for n in names if not (resume / f"{n}.tar.gz").is_file()]
  if missing:
    raise CampaignError(
      f"{resume} lacks the archives {', '.join(missing)} that its {SUMMARY} lists for "
      f"{program.name}: an invocation's output was not merged into it (python -m "
      "benchmarks.gpu_campaign merge OUTPUT CAMPAIGN), or it was replaced by one"
    )
  steps = {n: pending_runs.archive_step(resume / f"{n}.tar.gz") for n in names}
  if len(set(steps.values())) > 1:
    found = ", ".join(f"{n}: {s}" for n, s in steps.items())
    raise CampaignError(
      f"the archives of {program.name} in {resume} hold different steps ({found}): they were not "
      "written together, and its seeds resume only together; restore the set one invocation wrote"
    )
  return next(iter(steps.values())) if steps else state["step"]


def refusal_record(err: CampaignError, resume: pathlib.Path) -> str:
  """The error of a refused program as campaign.json keeps it: the campaign folder is named as
  such, not by its path on the machine that ran the invocation (the file is committed)."""
  return str(err).replace(str(resume), "the campaign folder")


def restore(program: Program, state: dict, resume: pathlib.Path, work: pathlib.Path) -> int:
  """Unpacks the program's archives listed in ``state`` from ``resume`` into ``work`` (a run folder
  already holding a checkpoint as new is kept) and returns the step it resumes from.

  Raises:
    CampaignError: as ``check_archives``.
  """
  check_archives(program, state, resume)
  for name in state["archives"]:
    pending_runs.unpack_archive(resume / f"{name}.tar.gz", work)
  step = program_step(work, program)
  if state["archives"] and step != state["step"]:
    print(f"note: {program.name} resumes from step {step} ({SUMMARY} says {state['step']})")
  return step


def merge(src: pathlib.Path, dest: pathlib.Path) -> list[str]:
  """Copies an invocation's output ``src`` over the campaign folder ``dest``: its summary, the
  archives it wrote and its JSON records; then removes the archives of ``dest`` that the new
  summary does not list (finished programs', replaced ones'). Returns the files copied.

  Raises:
    CampaignError: an archive the new summary lists would be missing (or of another size) in
      ``dest`` afterwards; nothing is changed then.
  """
  if src.resolve() == dest.resolve():
    return []
  summary = json.loads((src / SUMMARY).read_text())
  if (dest / SUMMARY).exists():
    before = json.loads((dest / SUMMARY).read_text())["invocations"]
    if summary["invocations"][: len(before)] != before:
      raise CampaignError(
        f"{src} does not continue the campaign of {dest} (its invocations do not begin with "
        f"those of {dest / SUMMARY}): it was not resumed from it; nothing was changed"
      )
  listed = {
    f"{name}.tar.gz": meta["bytes"]
    for state in summary["programs"].values()
    for name, meta in state["archives"].items()
  }
  bad = []
  for name, size in listed.items():
    found = src / name if (src / name).is_file() else dest / name
    if not found.is_file() or found.stat().st_size != size:
      bad.append(name)
  if bad:
    raise CampaignError(
      f"the summary of {src} lists archives found neither there nor in {dest} with their sizes: "
      f"{', '.join(bad)}; nothing was changed"
    )
  copied = []
  dest.mkdir(parents=True, exist_ok=True)
  for path in [*sorted(src.glob("*.tar.gz")), *sorted(src.glob("json/*.json"))]:
    target = dest / path.relative_to(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target.with_name(target.name + ".tmp"))
    os.replace(target.with_name(target.name + ".tmp"), target)
    copied.append(str(path.relative_to(src)))
  for path in dest.glob("*.tar.gz"):
    if path.name not in listed:
      path.unlink()
  _write_json(dest / SUMMARY, summary)
  return copied + [SUMMARY]


# ------------------------------------------------------------------------------------------------
# Running a program for its share.


class StopRequest:
  """Set by SIGTERM / SIGINT while installed: the running program is stopped and no other starts."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._note)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _note(self, signum, frame):
    del frame
    if not self.requested:
      print(f"received {signal.Signals(signum).name}: stopping the running program", flush=True)
    self.requested = True


def _parent_pid(pid: int) -> int | None:
  try:
    return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
  except (OSError, ValueError, IndexError):
    return None


def _trainer_pid(lock: pathlib.Path, parent: int) -> int | None:
  """The PID of the training process holding the program's ``lock`` (``experiments.workdir_lock``
  names its holder), if it is ``parent``'s child (where /proc tells; elsewhere if it runs)."""
  try:
    pid = json.loads(lock.read_text())["pid"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  if pathlib.Path("/proc").is_dir():
    return pid if _parent_pid(pid) == parent else None
  try:
    os.kill(pid, 0)
  except OSError:
    return None
  return pid


def _wait(proc: subprocess.Popen, seconds: float) -> bool:
  try:
    proc.wait(timeout=max(0.01, seconds))
  except subprocess.TimeoutExpired:
    return False
  return True


def stop_program(proc: subprocess.Popen, lock: pathlib.Path, grace_s: float) -> str:
  """Stops the program that ``proc`` (``benchmarks.table1``) runs: SIGTERM to its training process
  (found by the program's lock, so that its signal handlers are in place), then waits up to
  ``grace_s`` for it to checkpoint and end; a second SIGTERM (abort) after that. Returns what
  happened."""
  deadline = time.monotonic() + grace_s
  pid = None
  while proc.poll() is None and time.monotonic() < deadline:
    pid = _trainer_pid(lock, proc.pid)
    if pid is not None:
      break
    time.sleep(0.2)
  if pid is None:
    if proc.poll() is not None:
      return "ended"
    _kill_group(proc)  # no training process took the lock within the grace
    return "killed before training"
  _signal(pid, signal.SIGTERM)
  if _wait(proc, deadline - time.monotonic()):
    return "stopped"
  print(f"not stopped within {grace_s:.0f} s: aborting (its last checkpoint is kept)", flush=True)
  _signal(pid, signal.SIGTERM)
  if not _wait(proc, 60):
    _kill_group(proc)
  return "aborted"


def _signal(pid: int, signum: int) -> None:
  try:
    os.kill(pid, signum)
  except ProcessLookupError:
    pass  # it has ended meanwhile


def _kill_group(proc: subprocess.Popen) -> None:
  """Kills ``proc`` and what it started (its own process group) and waits for it."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  proc.wait()


def table1_command(program: Program, f, work: pathlib.Path, report_only: bool = False) -> list:
  """The ``benchmarks.table1`` command that trains (or reports) ``program`` into ``work``."""
  cmd = [
    sys.executable,
    "-m",
    "benchmarks.table1",
    "--preset=paper_mnist",
    f"--protocol={f.protocol}",
    f"--configs={program.config}",
    f"--structs={program.struct}",
    f"--ks={program.k}",
    f"--seeds={','.join(map(str, program.seeds))}",
    f"--out={work}",
  ]
  if f.num_steps:
    cmd.append(f"--num_steps={f.num_steps}")
  if report_only:
    return cmd + ["--report_only"]
  overrides = [f"steps_per_dispatch={f.steps_per_dispatch}", *f.override]
  return cmd + [f"--override={o}" for o in overrides]


def run_program(
  program: Program, f, work: pathlib.Path, share_s: float, stop: StopRequest
) -> tuple[str, float]:
  """Trains ``program`` for ``share_s`` seconds at most (then stops it, ``stop_program``); returns
  (what happened: 'ended', 'stopped', 'aborted', ..., wall seconds)."""
  t0 = time.monotonic()
  cmd = table1_command(program, f, work)
  print(f"+ {' '.join(cmd[1:])}  (share {share_s:.0f} s)", flush=True)
  proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
  try:
    while not stop.requested and time.monotonic() - t0 < share_s:
      if _wait(proc, min(1.0, share_s - (time.monotonic() - t0))):
        return "ended", time.monotonic() - t0
    outcome = stop_program(proc, work / "programs" / program.name / "lock", f.stop_grace_s)
    after = " after a checkpoint (table1 shows the runner's exit 75)" * (outcome == "stopped")
    print(f"{program.name}: {outcome} at its share's end{after}", flush=True)
  except BaseException:
    _kill_group(proc)
    raise
  return outcome, time.monotonic() - t0


def _tail(path: pathlib.Path, lines: int = 15) -> str:
  try:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
  except OSError:
    return "(no log)"


def _code_version() -> str | None:
  """The repository's commit (with '+modified' when tracked files differ), if git tells."""
  try:
    commit = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None
  return commit + ("+modified" if dirty else "")


def _read_rows(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def settle(program: Program, state: dict, f, work: pathlib.Path, out: pathlib.Path) -> str:
  """After a program ran: its records into ``out/json`` if it finished, else its archives into
  ``out`` (if it advanced); updates ``state`` (a finished program lists no archives: an in-place
  campaign removes them at its end, ``merge`` when it merges). Returns the program's condition."""
  runs = [work / "runs" / run for run in program.runs]
  config = json.loads((runs[0] / "config.json").read_text()) if runs[0].exists() else {}
  state["num_steps"] = config.get("num_steps", state["num_steps"])
  if all((run / "results.json").exists() for run in runs):
    records = [work / "json" / f"{run.name}.json" for run in runs]
    if not all(r.exists() for r in records):  # table1 stopped before writing them
      subprocess.run(table1_command(program, f, work, report_only=True), cwd=REPO, check=True)
    (out / "json").mkdir(parents=True, exist_ok=True)
    for record in records:
      shutil.copyfile(record, out / "json" / record.name)
    state.update(finished=True, archives={}, step=state["num_steps"])
    state["test_nll"] = {
      run.name: json.loads((run / "results.json").read_text())["test_nll"] for run in runs
    }
    return "finished"
  step = program_step(work, program)
  if step > state["step"] or (step and not state["archives"]):
    manifest = pending_runs.pack_program(work / "programs" / program.name, out, work)
    state["archives"] = {
      name: {"step": entry["step"], "bytes": (out / entry["archive"]).stat().st_size}
      for name, entry in manifest.items()
    }
  state["step"] = step
  return "pending"


def main(argv):
  if len(argv) > 1 and not (len(argv) == 4 and argv[1] == "merge"):
    raise app.UsageError("usage: python -m benchmarks.gpu_campaign [--flags] | merge SRC DEST")
  try:
    if len(argv) == 4:
      for name in merge(pathlib.Path(argv[2]), pathlib.Path(argv[3])):
        print(f"merged {name}")
    else:
      run_campaign(flags.FLAGS)
  except CampaignError as err:
    sys.exit(f"error: {err}")


def run_campaign(f) -> dict:
  """One invocation of the campaign (see the module docstring); returns the summary written."""
  start = time.monotonic()
  seeds = [int(s) for s in f.seeds]
  if len(seeds) < 2:
    raise CampaignError("the campaign trains each program's seeds together: give two or more")
  out = pathlib.Path(f.out)
  resume = pathlib.Path(f.resume_from or f.out)
  work = pathlib.Path(f.work)
  in_place = out.resolve() == resume.resolve()
  settings = {
    "configs": list(f.configs),
    "structs": list(f.structs),
    "k": f.k,
    "seeds": seeds,
    "protocol": f.protocol,
    "num_steps": f.num_steps,
  }
  if resume.exists() and not (resume / SUMMARY).exists() and f.resume_from:
    raise CampaignError(f"--resume_from={resume} holds no {SUMMARY}: not a campaign folder")
  if not (resume / SUMMARY).exists():
    print(f"a new campaign: {resume / SUMMARY} does not exist", flush=True)
  summary = load_summary(resume, settings)
  probe_env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  probe = subprocess.Popen(
    [sys.executable, "-c", _PROBE], cwd=REPO, env=probe_env, stdout=subprocess.PIPE, text=True
  )
  programs = [
    Program(config, struct, f.k, tuple(seeds)) for struct in f.structs for config in f.configs
  ]
  pending, refused = [], {}
  for program in programs:
    state = program_state(summary, program)
    if state["finished"]:
      continue
    try:  # a program whose archives cannot resume is left out, the others go on
      step = check_archives(program, state, resume)
    except CampaignError as err:
      print(f"error: {err}", flush=True)
      refused[program.name] = refusal_record(err, resume)
      continue
    known = sum(a["bytes"] for a in state["archives"].values()) or None
    pending.append((program.name, step, known))
  if refused and not pending:
    raise CampaignError("no program can resume (see above)")
  out.mkdir(parents=True, exist_ok=True)
  if not pending:
    probe.kill()
    print("every program of the campaign has finished")
    _write_json(out / SUMMARY, summary)
    return summary
  chosen = select_programs(
    pending,
    max_files=f.max_out_files,
    max_bytes=f.max_out_mib * MIB,
    files_each=len(seeds),
    unknown_bytes=f.first_pack_mib * MIB,
  )
  if pending and not chosen:
    raise CampaignError(
      f"no program's output fits --max_out_files={f.max_out_files} and --max_out_mib="
      f"{f.max_out_mib} (each writes {len(seeds)} archives or records besides the summary)"
    )
  invocation = {
    "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "device": None,
    "code": _code_version(),
    "budget_s": f.budget_s,
    "steps_per_dispatch": f.steps_per_dispatch,
    "overrides": list(f.override),
    "programs": [],
    "not_advanced": [name for name, _, _ in pending if name not in chosen],
    "refused": refused,
  }
  summary["invocations"].append(invocation)
  by_name = {p.name: p for p in programs}
  with StopRequest() as stop:
    for i, name in enumerate(chosen):
      program, state = by_name[name], summary["programs"][name]
      state["step"] = restore(program, state, resume, work)
      left = f.budget_s - f.reserve_s - (time.monotonic() - start)
      share = share_seconds(left, len(chosen) - i)
      if stop.requested or share < f.min_share_s:
        invocation["not_advanced"].append(name)
        continue
      from_step = state["step"]
      outcome, wall = run_program(program, f, work, share, stop)
      condition = settle(program, state, f, work, out)
      if condition == "pending" and outcome == "ended":
        outcome = "failed"
        print(
          f"{program.name} ended unfinished; the end of its log "
          f"({work / 'programs' / program.name / 'stdout.log'}):\n"
          + _tail(work / "programs" / program.name / "stdout.log"),
          flush=True,
        )
      to_step = state["step"]
      rows = _read_rows(work / "runs" / program.runs[0] / "metrics.jsonl")
      rate = steady_rate(rows, from_step, to_step)
      record = {
        "program": name,
        "from_step": from_step,
        "to_step": to_step,
        "share_s": share,
        "wall_s": wall,
        "outcome": "finished" if condition == "finished" else outcome,
        "steps_per_second": rate,
        "run_steps_per_second": None if rate is None else rate * len(seeds),
        "gross_run_steps_per_second": (to_step - from_step) * len(seeds) / wall,
      }
      invocation["programs"].append(record)
      state["wall_s"] += wall
      state["steps_trained"] += to_step - from_step
      state["invocations"] += 1
      if rate is not None:
        state["steps_per_second"] = rate
        state["run_steps_per_second"] = rate * len(seeds)
      invocation["wall_s"] = time.monotonic() - start
      _write_json(out / SUMMARY, summary)
  try:
    invocation["device"] = probe.communicate(timeout=60)[0].strip() or None
  except subprocess.TimeoutExpired:
    probe.kill()
  if in_place:  # archives no program lists any more
    listed = {f"{n}.tar.gz" for s in summary["programs"].values() for n in s["archives"]}
    for path in out.glob("*.tar.gz"):
      if path.name not in listed:
        path.unlink()
  invocation["wall_s"] = time.monotonic() - start
  _write_json(out / SUMMARY, summary)
  print(report(summary))
  return summary


def report(summary: dict) -> str:
  """A Markdown table of the programs: step, last rates, condition."""
  lines = [
    "| program | step | of | run-steps/s | steps/s | wall s (all) | state |",
    "|---|---:|---:|---:|---:|---:|---|",
  ]
  for name, s in summary["programs"].items():
    rate = s["run_steps_per_second"]
    steps = s["steps_per_second"]
    lines.append(
      f"| {name} | {s['step']} | {s['num_steps'] or '—'} | "
      f"{'—' if rate is None else f'{rate:.0f}'} | {'—' if steps is None else f'{steps:.1f}'} | "
      f"{s['wall_s']:.0f} | {'finished' if s['finished'] else 'pending'} |"
    )
  return "\n".join(lines)


if __name__ == "__main__":
  define_flags()
  app.run(main)
