r"""Carries unfinished training runs from one machine to another: one compact archive per run.

A long grid (``benchmarks.table1`` with the paper's 1M steps) outlives the machine it started on.
``pack`` writes, for every run folder under ``--runs_dir`` that has no ``results.json`` yet, an
archive ``<run>.tar.gz`` into ``--archive_dir`` holding exactly what the runner needs to resume it
bit for bit: ``config.json``, ``metrics.jsonl``, the newest checkpoint (``checkpoints/<step>/``) and
the best-validation checkpoint (``checkpoints_best/``, used by the final test evaluation).
Archives of runs that have finished since are removed, so the folder lists the pending runs only.
``unpack`` restores them into ``--runs_dir``; rerunning the grid's command then resumes each run
from its checkpoint (``benchmarks.table1`` skips finished runs and resumes unfinished ones).

  # before the machine goes away (stop the runs first with SIGTERM: they checkpoint and exit)
  python -m benchmarks.pending_runs pack --runs_dir=runs/table1_1m/runs \
      --archive_dir=benchmarks/results/table1_1m/pending
  # on the next machine
  python -m benchmarks.pending_runs unpack --runs_dir=runs/table1_1m/runs \
      --archive_dir=benchmarks/results/table1_1m/pending
"""

from __future__ import annotations

import io
import json
import pathlib
import tarfile

from absl import app, flags

MANIFEST = "pending_runs.json"


def _latest_checkpoint(run: pathlib.Path) -> pathlib.Path | None:
  """The newest complete step folder of ``run/checkpoints`` (orbax writes a step under a temporary
  name and renames it when complete, so a plain integer name is a complete checkpoint)."""
  steps = [p for p in (run / "checkpoints").glob("*") if p.is_dir() and p.name.isdigit()]
  return max(steps, key=lambda p: int(p.name)) if steps else None


def _members(run: pathlib.Path) -> list[pathlib.Path]:
  """The files and folders of ``run`` that a resume needs (see the module docstring)."""
  latest = _latest_checkpoint(run)
  if latest is None:
    raise ValueError(f"{run} has no complete checkpoint to carry over")
  members = [run / "config.json", run / "metrics.jsonl", latest]
  if (run / "checkpoints_best").is_dir():
    members.append(run / "checkpoints_best")
  return [m for m in members if m.exists()]


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
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
      for member in _members(run):
        tar.add(member, arcname=str(member.relative_to(runs_dir)))
    archive.write_bytes(buffer.getvalue())
    manifest[run.name] = {"step": int(_latest_checkpoint(run).name), "archive": archive.name}
  (archive_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
  return manifest


def unpack(archive_dir: pathlib.Path, runs_dir: pathlib.Path) -> list[str]:
  """Extracts every archive of ``archive_dir`` into ``runs_dir``; a run folder that already holds
  a newer checkpoint than its archive is left alone. Returns the names of the runs restored."""
  restored = []
  runs_dir.mkdir(parents=True, exist_ok=True)
  for archive in sorted(archive_dir.glob("*.tar.gz")):
    name = archive.name.removesuffix(".tar.gz")
    with tarfile.open(archive) as tar:
      members = tar.getmembers()
      for member in members:
        if not (member.isfile() or member.isdir()) or not member.name.startswith(f"{name}/"):
          raise ValueError(f"{archive}: unexpected member {member.name!r}")
      steps = {
        int(parts[2]) for m in members if len(parts := m.name.split("/")) > 2
        and parts[1] == "checkpoints" and parts[2].isdigit()
      }
      present = _latest_checkpoint(runs_dir / name) if (runs_dir / name).is_dir() else None
      if present is not None and steps and int(present.name) >= max(steps):
        continue
      tar.extractall(runs_dir, filter="data")
    restored.append(name)
  return restored


def main(argv):
  if len(argv) != 2 or argv[1] not in ("pack", "unpack"):
    raise app.UsageError("usage: python -m benchmarks.pending_runs pack|unpack --runs_dir=... "
                         "--archive_dir=...")
  runs_dir = pathlib.Path(flags.FLAGS.runs_dir)
  archive_dir = pathlib.Path(flags.FLAGS.archive_dir)
  if argv[1] == "pack":
    for name, entry in pack(runs_dir, archive_dir).items():
      print(f"{name}: checkpoint at step {entry['step']} -> {archive_dir / entry['archive']}")
  else:
    for name in unpack(archive_dir, runs_dir):
      print(f"restored {runs_dir / name}")


if __name__ == "__main__":
  flags.DEFINE_string("runs_dir", None, "Folder of run folders (benchmarks.table1's OUT/runs).")
  flags.DEFINE_string("archive_dir", None, "Folder of the archives.")
  flags.mark_flags_as_required(["runs_dir", "archive_dir"])
  app.run(main)
