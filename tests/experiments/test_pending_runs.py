"""benchmarks.pending_runs: a run stopped on one machine, packed, unpacked elsewhere and resumed
ends exactly where the uninterrupted run ends; a program's seeds travel with their links."""

import json
import os
import shutil
import tarfile

import pytest
from test_reliability import STOP_AT_5, run_cli
from test_train import assert_rows_close

from benchmarks import pending_runs
from experiments import metrics, preemption


# Slow: what an archive holds and refuses is tested below; a run resuming exactly from its own
# checkpoints, in the default suite's test_reliability.py.
@pytest.mark.slow
def test_packed_run_resumes_elsewhere_exactly(data_dir, tmp_path, finished_run):
  # Checkpoints at 4 and 5 (the stop), evaluation at 3 and 6: the best-validation checkpoint
  # (step 3) and the newest one must both travel for the final test evaluation to match.
  overrides = STOP_AT_5
  straight_run = finished_run("dvae_sharp", **overrides)  # shared with test_reliability.py
  straight = straight_run.results
  here = tmp_path / "here" / "runs"
  stopped = run_cli(here / "r", data_dir, **overrides, debug_signal_step=5)
  assert stopped.returncode == preemption.EXIT_CODE, stopped.stderr[-3000:]
  (here / "finished").mkdir()  # a finished run gets no archive; a stale one is removed
  (here / "finished" / "results.json").write_text("{}")
  archives = tmp_path / "archives"
  archives.mkdir()
  (archives / "finished.tar.gz").write_bytes(b"stale")

  manifest = pending_runs.pack(here, archives)

  assert manifest == {"r": {"step": 5, "archive": "r.tar.gz"}}
  assert sorted(p.name for p in archives.iterdir()) == [pending_runs.MANIFEST, "r.tar.gz"]
  with tarfile.open(archives / "r.tar.gz") as tar:
    names = tar.getnames()
  assert {"r/config.json", "r/metrics.jsonl", "r/checkpoints/5", "r/checkpoints_best"} <= set(names)
  assert not any(n.startswith("r/checkpoints/4") for n in names)  # only the newest one travels

  shutil.rmtree(tmp_path / "here")  # the first machine is gone
  elsewhere = tmp_path / "elsewhere" / "runs"
  assert pending_runs.unpack(archives, elsewhere) == ["r"]
  resumed = run_cli(elsewhere / "r", data_dir, **overrides, debug_signal_step=5)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming {elsewhere / 'r'} from step 5" in resumed.stdout
  assert_rows_close(
    metrics.read_metrics(straight_run.workdir), metrics.read_metrics(elsewhere / "r"), rtol=1e-6
  )
  results = json.loads((elsewhere / "r" / "results.json").read_text())
  for key in ("test_nll", "val_nll", "best_step", "test_log_z"):
    assert results[key] == pytest.approx(straight[key], rel=1e-6), key

  # A run folder holding a newer checkpoint than its archive is not overwritten.
  assert pending_runs.unpack(archives, elsewhere) == []


def test_unpack_refuses_an_archive_with_foreign_paths(tmp_path):
  archives = tmp_path / "archives"
  archives.mkdir()
  outside = tmp_path / "evil.txt"
  outside.write_text("x")
  with tarfile.open(archives / "r.tar.gz", "w:gz") as tar:
    tar.add(outside, arcname="other/evil.txt")
  with pytest.raises(ValueError, match="unexpected member 'other/evil.txt'"):
    pending_runs.unpack(archives, tmp_path / "runs")
  assert not (tmp_path / "runs" / "other").exists()


# ----------------------------------------------------------------------------------------------
# Programs of several seeds (benchmarks.table1's layout): what an archive holds is checked on files
# written here; that an unpacked program resumes its seeds exactly is tested end to end in
# tests/test_benchmarks_gpu_check.py (the campaign packs and unpacks with these functions).


def _fake_run(folder, steps, best=None, finished=False):
  """A run folder as the runner leaves it: config, metrics, checkpoints of ``steps`` (each a folder
  with one file of its own bytes), the best-validation checkpoint, results.json if finished."""
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps({"seed": folder.name}))
  (folder / "metrics.jsonl").write_text('{"step": 1}\n')
  (folder / "tensorboard").mkdir()
  (folder / "tensorboard" / "events").write_text("not carried")
  for step in steps:
    (folder / "checkpoints" / str(step) / "default").mkdir(parents=True)
    (folder / "checkpoints" / str(step) / "default" / "d").write_bytes(f"{folder}{step}".encode())
  (folder / "checkpoints" / "9.orbax-checkpoint-tmp").mkdir()  # an incomplete save: never carried
  if best is not None:
    (folder / "checkpoints_best" / str(best)).mkdir(parents=True)
    (folder / "checkpoints_best" / str(best) / "d").write_bytes(b"best")
  if finished:
    (folder / "results.json").write_text("{}")


def _table1_program(out, seeds, steps=(3, 7), finished=()):
  """OUT/programs/cell/seed_N -> ../../runs/cell__sN, as benchmarks.table1 links them."""
  program = out / "programs" / "cell"
  program.mkdir(parents=True)
  for seed in seeds:
    _fake_run(out / "runs" / f"cell__s{seed}", steps, best=3, finished=seed in finished)
    (program / f"seed_{seed}").symlink_to(f"../../runs/cell__s{seed}", target_is_directory=True)
  (program / "stdout.log").write_text("not carried")
  return program


def _tree(folder):
  """{relative path: bytes, or 'link -> target', or 'dir'} of everything under ``folder``."""
  tree = {}
  for path in sorted(folder.rglob("*")):
    rel = str(path.relative_to(folder))
    if path.is_symlink():
      tree[rel] = f"link -> {os.readlink(path)}"
    elif path.is_file():
      tree[rel] = path.read_bytes()
    elif path.is_dir() and not any(path.iterdir()):
      tree[rel] = "dir"
  return tree


def test_program_archives_carry_each_seed_and_its_link(tmp_path):
  out = tmp_path / "out"
  program = _table1_program(out, seeds=(0, 1, 2), finished=(2,))
  archives = tmp_path / "archives"
  archives.mkdir()
  (archives / "cell__s2.tar.gz").write_bytes(b"stale: seed 2 has finished since")

  manifest = pending_runs.pack_program(program, archives)

  assert manifest == {
    f"cell__s{seed}": {
      "step": 7, "archive": f"cell__s{seed}.tar.gz", "program": "programs/cell", "seed": seed
    }
    for seed in (0, 1)
  }  # fmt: skip
  assert sorted(p.name for p in archives.iterdir()) == ["cell__s0.tar.gz", "cell__s1.tar.gz"]
  with tarfile.open(archives / "cell__s0.tar.gz") as tar:
    members = {m.name: m for m in tar.getmembers()}
  assert members["programs/cell/seed_0"].issym()
  assert members["programs/cell/seed_0"].linkname == "../../runs/cell__s0"
  assert {
    "runs/cell__s0/config.json", "runs/cell__s0/metrics.jsonl",
    "runs/cell__s0/checkpoints/7/default/d", "runs/cell__s0/checkpoints_best/3/d",
  } <= set(members)  # fmt: skip
  assert not any("checkpoints/3" in n or "tensorboard" in n or "tmp" in n for n in members)
  assert not any("stdout.log" in n or "cell__s1" in n for n in members)  # one seed per archive
  assert pending_runs.archive_step(archives / "cell__s0.tar.gz") == 7

  elsewhere = tmp_path / "elsewhere"
  assert pending_runs.unpack(archives, elsewhere) == ["cell__s0", "cell__s1"]
  restored = _tree(elsewhere)
  original = _tree(out)
  for seed in (0, 1):  # the link and exactly the carried files, byte for byte
    assert restored[f"programs/cell/seed_{seed}"] == f"link -> ../../runs/cell__s{seed}"
    run = f"runs/cell__s{seed}"
    carried = [f"{run}/config.json", f"{run}/metrics.jsonl", f"{run}/checkpoints/7/default/d",
               f"{run}/checkpoints_best/3/d"]  # fmt: skip
    assert {k: v for k, v in restored.items() if k.startswith(run)} == {
      k: original[k] for k in carried
    }
  assert pending_runs.program_seeds(elsewhere / "programs" / "cell").keys() == {0, 1}
  assert (elsewhere / "programs" / "cell" / "seed_1" / "checkpoints" / "7").is_dir()
  # Unpacked again over a folder holding the same step: left alone.
  assert pending_runs.unpack(archives, elsewhere) == []


def test_program_of_real_seed_folders_and_its_refusals(tmp_path):
  # experiments.run --config.seeds=0,1 --workdir=W: W/seed_N are the run folders themselves.
  workdir = tmp_path / "w"
  for seed in (0, 1):
    _fake_run(workdir / f"seed_{seed}", (4,))
  archives = tmp_path / "archives"
  manifest = pending_runs.pack_program(workdir, archives, root=tmp_path)
  assert sorted(manifest) == ["w__seed_0", "w__seed_1"]
  with tarfile.open(archives / "w__seed_1.tar.gz") as tar:
    assert "w/seed_1/checkpoints/4/default/d" in tar.getnames()
  assert pending_runs.unpack(archives, tmp_path / "b") == ["w__seed_0", "w__seed_1"]
  assert (tmp_path / "b" / "w" / "seed_0" / "checkpoints" / "4" / "default" / "d").is_file()

  # Seeds whose newest checkpoints differ cannot resume together from what travels.
  _fake_run(workdir / "seed_2", (2,))
  with pytest.raises(ValueError, match=r"different steps \(seed_0: 4, seed_1: 4, seed_2: 2\)"):
    pending_runs.pack_program(workdir, archives, root=tmp_path)
  # An absolute link would point elsewhere on another machine.
  other = tmp_path / "p"
  other.mkdir()
  (other / "seed_0").symlink_to(workdir / "seed_0", target_is_directory=True)
  with pytest.raises(ValueError, match="links to the absolute path"):
    pending_runs.pack_program(other, archives, root=tmp_path)
  with pytest.raises(ValueError, match="holds no seed_N folders"):
    pending_runs.pack_program(tmp_path / "b", archives)


def test_unpack_refuses_a_link_out_of_its_run_folder(tmp_path):
  run = tmp_path / "src" / "runs" / "r"
  _fake_run(run, (1,))
  archives = tmp_path / "archives"
  archives.mkdir()
  with tarfile.open(archives / "r.tar.gz", "w:gz") as tar:
    tar.add(run / "config.json", arcname="runs/r/config.json")
    link = tarfile.TarInfo("programs/c/seed_0")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../elsewhere"
    tar.addfile(link)
  with pytest.raises(ValueError, match="unexpected member 'programs/c/seed_0'"):
    pending_runs.unpack(archives, tmp_path / "dest")
  assert not (tmp_path / "dest" / "programs").exists()
