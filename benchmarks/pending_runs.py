r"""Carries unfinished training runs from one machine to another: one compact archive per run.

A long grid (``benchmarks.table1`` with the paper's 1M steps) outlives the machine it started on.
``pack`` writes, for every run folder under ``--runs_dir`` that has no ``results.json`` yet, an
archive ``<run>.tar.gz`` into ``--archive_dir`` holding exactly what the runner needs to resume it
bit for bit: ``config.json``, ``metrics.jsonl``, the newest checkpoint (``checkpoints/<step>/``) and
the best-validation checkpoint (``checkpoints_best/``, used by the final test evaluation).
Archives of runs that have finished since are removed, so the folder lists the pending runs only.
``unpack`` restores them into ``--runs_dir``; rerunning the grid's command then resumes each run
from its checkpoint (``benchmarks.table1`` skips finished runs and resumes unfinished ones).

The seeds of one program (``--config.seeds``; ``benchmarks.table1`` with several ``--seeds``) resume
together, from a step that all of them hold (``experiments.seeds.resume_together``). ``pack`` with
``--programs_dir`` archives each program folder's seeds: one archive per seed, named after its run
folder, holding that run folder's files as above and, where the program's ``seed_N`` entry is a
link to the run folder (``benchmarks.table1``'s layout: ``OUT/programs/<cell>/seed_N`` →
``OUT/runs/<run>``), the link itself; the paths are relative to the program folder's parent's
parent (``OUT``), so ``unpack`` into ``OUT`` restores the program as it was. A program whose seeds'
newest checkpoints are not of one step is refused (only the newest checkpoint travels, so they
could not resume together).

  # before the machine goes away (stop the runs first with SIGTERM: they checkpoint and exit)
  python -m benchmarks.pending_runs pack --runs_dir=runs/table1_1m/runs \
      --archive_dir=benchmarks/results/table1_1m/pending
  # on the next machine
  python -m benchmarks.pending_runs unpack --runs_dir=runs/table1_1m/runs \
      --archive_dir=benchmarks/results/table1_1m/pending
  # programs of several seeds (benchmarks.table1 --seeds=0,1,2,3 --out=OUT): unpack into OUT
  python -m benchmarks.pending_runs pack --programs_dir=OUT/programs --archive_dir=ARCHIVES
  python -m benchmarks.pending_runs unpack --runs_dir=OUT --archive_dir=ARCHIVES
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import tarfile

from absl import app, flags

MANIFEST = "pending_runs.json"
_SEED_ENTRY = re.compile(r"seed_(\d+)")


def _latest_checkpoint(run: pathlib.Path) -> pathlib.Path | None:
  """The newest complete step folder of ``run/checkpoints`` (orbax writes a step under a temporary
  name and renames it when complete, so a plain integer name is a complete checkpoint)."""
  steps = [p for p in (run / "checkpoints").glob("*") if p.is_dir() and p.name.isdigit()]
  return max(steps, key=lambda p: int(p.name)) if steps else None


def latest_step(run: pathlib.Path) -> int | None:
  """The step of the newest complete checkpoint of the run folder ``run`` (None if it has none)."""
  latest = _latest_checkpoint(run)
  return None if latest is None else int(latest.name)


def _members(run: pathlib.Path) -> list[pathlib.Path]:
  """The files and folders of ``run`` that a resume needs (see the module docstring)."""
  latest = _latest_checkpoint(run)
  if latest is None:
    raise ValueError(f"{run} has no complete checkpoint to carry over")
  members = [run / "config.json", run / "metrics.jsonl", latest]
  if (run / "checkpoints_best").is_dir():
    members.append(run / "checkpoints_best")
  return [m for m in members if m.exists()]


def _write_archive(
  archive: pathlib.Path,
  root: pathlib.Path,
  members: list[pathlib.Path],
  links: list[pathlib.Path] = (),
) -> None:
  """Writes ``members`` (files and folders) and ``links`` (symbolic links, stored as links) into
  ``archive`` with paths relative to ``root``; atomically (a stopped writer leaves no half file)."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    for link in links:
      info = tarfile.TarInfo(str(link.relative_to(root)))
      info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(link), 0o777
      tar.addfile(info)
    for member in members:
      tar.add(member, arcname=str(member.relative_to(root)))
  tmp = archive.with_name(archive.name + ".tmp")
  tmp.write_bytes(buffer.getvalue())
  os.replace(tmp, archive)


def pack(runs_dir: pathlib.Path, archive_dir: pathlib.Path) -> dict:
  """Archives every unfinished run of ``runs_dir`` into ``archive_dir``; returns the manifest
  ``{run name: {"step": newest checkpoint step, "archive": file name}}`` (also written there)."""
  archive_dir.mkdir(parents=True, exist_ok=True)
  manifest = {}
  for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
    archive = archive_dir / f"{run.name}.tar.gz"
    if (run / "results.json").exists() or _latest_checkpoint(run) is None:
      archive.unlink(missing_ok=True)
      continue
    _write_archive(archive, runs_dir, _members(run))
    manifest[run.name] = {"step": int(_latest_checkpoint(run).name), "archive": archive.name}
  (archive_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
  return manifest


def program_seeds(program: pathlib.Path) -> dict[int, pathlib.Path]:
  """``{N: program/seed_N}``: the seed entries of a program folder (folders, or links to folders),
  in seed order."""
  entries = {}
  for entry in program.iterdir() if program.is_dir() else ():
    match = _SEED_ENTRY.fullmatch(entry.name)
    if match and entry.is_dir():
      entries[int(match.group(1))] = entry
  return dict(sorted(entries.items()))


def _seed_folder(entry: pathlib.Path) -> pathlib.Path:
  """The run folder of a program's seed entry: the entry, or where its (relative) link points,
  resolved lexically (so that a folder reached through links keeps its path)."""
  if not entry.is_symlink():
    return entry
  target = os.readlink(entry)
  if os.path.isabs(target):
    raise ValueError(f"{entry} links to the absolute path {target}: only relative links travel")
  return pathlib.Path(os.path.normpath(entry.parent / target))


def archive_name(program: pathlib.Path, entry: pathlib.Path) -> str:
  """The archive stem of a program's seed: its run folder's name when the entry links to one
  (``benchmarks.table1``: the run's name), else ``<program>__seed_N``."""
  return _seed_folder(entry).name if entry.is_symlink() else f"{program.name}__{entry.name}"


def pack_program(
  program: pathlib.Path, archive_dir: pathlib.Path, root: pathlib.Path | None = None
) -> dict:
  """Archives the unfinished seeds of the program folder ``program`` (its ``seed_N`` entries) into
  ``archive_dir``, one ``<archive_name>.tar.gz`` per seed (see the module docstring), with paths
  relative to ``root`` (default: ``program``'s parent's parent, ``benchmarks.table1``'s OUT for
  ``OUT/programs/<cell>``). Archives of seeds that have finished are removed.

  Returns:
    ``{archive stem: {"step", "archive", "program", "seed"}}`` of the seeds archived (``program``:
    the program folder relative to ``root``).

  Raises:
    ValueError: no seed entries; a seed without a complete checkpoint; seeds whose newest
      checkpoints are of different steps; a link or run folder outside ``root``.
  """
  program = pathlib.Path(os.path.abspath(program))
  root = pathlib.Path(os.path.abspath(root or program.parent.parent))
  entries = program_seeds(program)
  if not entries:
    raise ValueError(f"{program} holds no seed_N folders: not a program of several seeds")
  archive_dir.mkdir(parents=True, exist_ok=True)
  pending = {}
  for seed, entry in entries.items():
    folder = _seed_folder(entry)
    archive = archive_dir / f"{archive_name(program, entry)}.tar.gz"
    if (folder / "results.json").exists():
      archive.unlink(missing_ok=True)
      continue
    latest = _latest_checkpoint(folder)
    if latest is None:
      raise ValueError(f"{folder} (seed {seed} of {program}) has no complete checkpoint")
    for path in (entry, folder):
      if not path.is_relative_to(root):
        raise ValueError(f"{path} is outside {root}: the archive's paths are relative to it")
    pending[seed] = (entry, folder, archive, int(latest.name))
  steps = {seed: step for seed, (_, _, _, step) in pending.items()}
  if len(set(steps.values())) > 1:
    found = ", ".join(f"seed_{seed}: {step}" for seed, step in steps.items())
    raise ValueError(
      f"the seeds of {program} hold their newest checkpoints at different steps ({found}); only "
      "the newest travels, and the seeds of one program resume together from one step"
    )
  manifest = {}
  for seed, (entry, folder, archive, step) in pending.items():
    links = [entry] if entry.is_symlink() else []
    _write_archive(archive, root, _members(folder), links)
    manifest[archive.name.removesuffix(".tar.gz")] = {
      "step": step,
      "archive": archive.name,
      "program": str(program.relative_to(root)),
      "seed": seed,
    }
  return manifest


def pack_programs(programs_dir: pathlib.Path, archive_dir: pathlib.Path) -> dict:
  """``pack_program`` of every program folder of ``programs_dir`` (paths relative to its parent);
  returns and writes the manifest of all their archives."""
  manifest = {}
  for program in sorted(p for p in programs_dir.iterdir() if p.is_dir()):
    manifest.update(pack_program(program, archive_dir, programs_dir.parent))
  (archive_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
  return manifest


def _run_folder(archive: pathlib.Path, members: list[tarfile.TarInfo]) -> str:
  """The one run folder an archive carries (the folder of its ``config.json``), after checking
  every member: folders and files inside that run folder, and links to it. Raises ValueError
  naming the first member that is none of these."""
  configs = [m.name for m in members if m.isfile() and m.name.endswith("/config.json")]
  folder = min(configs, key=len).removesuffix("/config.json") if configs else None
  for member in members:
    parts = pathlib.PurePosixPath(member.name).parts
    safe = not member.name.startswith("/") and ".." not in parts and folder is not None
    if member.issym():
      target = os.path.normpath(os.path.join(os.path.dirname(member.name), member.linkname))
      ok = safe and not os.path.isabs(member.linkname) and target == folder
    else:
      ok = safe and (member.isfile() or member.isdir()) and member.name.startswith(f"{folder}/")
    if not ok:
      raise ValueError(
        f"{archive}: unexpected member {member.name!r} (an archive holds one run folder, with its "
        "config.json, and links to that folder)"
      )
  return folder


def archive_step(archive: pathlib.Path) -> int:
  """The step of the newest checkpoint an archive carries."""
  with tarfile.open(archive) as tar:
    members = tar.getmembers()
  folder = _run_folder(archive, members)
  steps = [
    int(parts[0])
    for m in members
    if (rest := m.name.removeprefix(f"{folder}/checkpoints/")) != m.name
    and (parts := rest.split("/"))[0].isdigit()
  ]
  if not steps:
    raise ValueError(f"{archive} carries no checkpoint")
  return max(steps)


def unpack_archive(archive: pathlib.Path, runs_dir: pathlib.Path) -> bool:
  """Extracts one archive into ``runs_dir``, unless the run folder there already holds a checkpoint
  at least as new as the archive's; returns whether it extracted."""
  runs_dir.mkdir(parents=True, exist_ok=True)
  with tarfile.open(archive) as tar:
    folder = runs_dir / _run_folder(archive, tar.getmembers())
    present = _latest_checkpoint(folder) if folder.is_dir() else None
    if present is not None and int(present.name) >= archive_step(archive):
      return False
    tar.extractall(runs_dir, filter="data")
  return True


def unpack(archive_dir: pathlib.Path, runs_dir: pathlib.Path) -> list[str]:
  """Extracts every archive of ``archive_dir`` into ``runs_dir``; a run folder that already holds
  a newer checkpoint than its archive is left alone. Returns the names of the archives restored."""
  return [
    archive.name.removesuffix(".tar.gz")
    for archive in sorted(archive_dir.glob("*.tar.gz"))
    if unpack_archive(archive, runs_dir)
  ]


def main(argv):
  if len(argv) != 2 or argv[1] not in ("pack", "unpack"):
    raise app.UsageError(
      "usage: python -m benchmarks.pending_runs pack|unpack --runs_dir=... | --programs_dir=... "
      "--archive_dir=..."
    )
  f = flags.FLAGS
  archive_dir = pathlib.Path(f.archive_dir)
  if argv[1] == "pack":
    if bool(f.runs_dir) == bool(f.programs_dir):
      raise app.UsageError("pack needs one of --runs_dir and --programs_dir")
    if f.programs_dir:
      manifest = pack_programs(pathlib.Path(f.programs_dir), archive_dir)
    else:
      manifest = pack(pathlib.Path(f.runs_dir), archive_dir)
    for name, entry in manifest.items():
      print(f"{name}: checkpoint at step {entry['step']} -> {archive_dir / entry['archive']}")
  else:
    if not f.runs_dir:
      raise app.UsageError("unpack needs --runs_dir (for program archives: their OUT folder)")
    for name in unpack(archive_dir, pathlib.Path(f.runs_dir)):
      print(f"restored {name} into {f.runs_dir}")


if __name__ == "__main__":
  flags.DEFINE_string(
    "runs_dir",
    None,
    "Folder of run folders (benchmarks.table1's OUT/runs); unpack: where archives are extracted "
    "(for program archives, the parent of the programs folder: benchmarks.table1's OUT).",
  )
  flags.DEFINE_string(
    "programs_dir", None, "pack: folder of program folders (benchmarks.table1's OUT/programs)."
  )
  flags.DEFINE_string("archive_dir", None, "Folder of the archives.")
  flags.mark_flag_as_required("archive_dir")
  app.run(main)
