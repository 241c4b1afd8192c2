"""Tests of the Table 1 report of benchmarks/table1.py (aggregation over seeds, Markdown table)."""

import json
import statistics

import pytest

from benchmarks import table1


def _result(nll, steps=2000):
  return {"test_nll": nll, "config": {"num_steps": steps}}


def test_report_aggregates_seeds_per_cell(tmp_path):
  rows = [
    (("dvae_sharp", "1-layer-lin", 1, 0), _result(90.0)),
    (("dvae_sharp", "1-layer-lin", 1, 1), _result(92.0)),
    (("dvae_sharp", "1-layer-lin", 5, 0), _result(88.5)),
    (("dvae", "1-layer-lin", 1, 0), None),  # a failed run: shown as missing, not as a number
  ]
  table = table1.write_report(tmp_path, rows)
  assert (tmp_path / "table1.md").read_text() == table
  first = table.split("Paired differences")[0]
  lines = {line.split(" | ")[0]: line for line in first.splitlines() if line.startswith("| dvae")}
  spread = statistics.stdev([90.0, 92.0])
  assert lines["| dvae_sharp"] == (
    f"| dvae_sharp | 1-layer-lin | 91.00 ± {spread:.2f} | 88.50 | 2000 | 2 |"
  )
  assert lines["| dvae"] == "| dvae | 1-layer-lin | — | — | — | 0 |"


def test_report_pairs_differences_by_seed(tmp_path):
  rows = [
    (("dvae_sharp", "1-layer-lin", 5, 0), _result(90.0)),
    (("dvae_sharp", "1-layer-lin", 5, 1), _result(95.0)),
    (("dvae", "1-layer-lin", 5, 0), _result(91.0)),
    (("dvae", "1-layer-lin", 5, 1), _result(96.5)),
    (("dvae", "1-layer-lin", 5, 2), _result(80.0)),  # no dvae_sharp run of seed 2: not paired
  ]
  table = table1.write_report(tmp_path, rows)
  paired = table.split("Paired differences")[1]
  spread = statistics.stdev([1.0, 1.5])
  assert f"| dvae | 1-layer-lin | +1.25 ± {spread:.2f} | 2 |" in paired.splitlines()
  assert "| dvae_sharp |" not in paired


def test_run_names_are_unique_per_cell():
  names = {
    table1.run_name(c, s, k, seed)
    for c in ("a", "b")
    for s in ("x",)
    for k in (1, 5)
    for seed in (0, 1)
  }
  assert len(names) == 8


def test_presets_name_known_configs_structs_and_datasets():
  from dvae_jax import models
  from experiments import config_lib

  for preset, (configs, structs, ks) in table1.PRESETS.items():
    for config in configs:
      config_lib.load_config(config)  # raises for an unknown name
    assert set(structs) <= set(models.STRUCTS) and set(ks) <= {1, 5, 25}
    expected = {"omniglot": "omniglot", "caltech": "caltech101_silhouettes"}.get(
      preset.split("_")[-1], "binarized_mnist"
    )
    assert table1._dataset(preset) == expected, preset


def _curve(val_nll, start=1000, loss=None):
  steps = [start * (i + 1) for i in range(len(val_nll))]
  return {"step": steps, "loss": loss or list(val_nll), "val_step": steps, "val_nll": list(val_nll)}


def test_curve_helpers():
  assert table1.mean_curve([([1, 2, 3], [1.0, 2.0, 3.0]), ([2, 3], [4.0, 5.0])]) == (
    [2, 3],
    [3.0, 4.0],
  )
  assert table1.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
  # A nat-wide axis at least, with margins: 1-nat differences on a 100-nat scale stay visible.
  assert table1.focus_limits([100.0, 100.2]) == (99.6, 100.6)
  low, high = table1.focus_limits([95.0, 99.0])
  assert (low, high) == (95.0 - 0.6, 99.0 + 0.6)
  assert table1.focus_limits([]) is None


def test_paired_val_differences_pair_seeds_and_steps():
  curves = {
    ("dvae", "s", 1, 0): _curve([101.0, 99.0]),
    ("dvae", "s", 1, 1): _curve([103.0, 100.0, 98.0]),
    ("dvae_sharp", "s", 1, 0): _curve([100.0, 98.5]),
    ("dvae_sharp", "s", 1, 1): _curve([101.0, 99.0, 97.0]),
    ("dvae", "s", 5, 0): _curve([90.0]),  # no K=5 reference: not paired
  }
  steps, diffs = table1.paired_val_differences(curves, "dvae", "dvae_sharp", "s", 1)
  assert steps == [1000, 2000]  # the steps every pair has
  assert diffs == [(1.0 + 2.0) / 2, (0.5 + 1.0) / 2]
  assert table1.paired_val_differences(curves, "dvae", "dvae_sharp", "s", 5) == ([], [])


def test_portable_provenance_drops_machine_paths(tmp_path):
  (tmp_path / "binarized_mnist.npz").write_bytes(b"abc")
  old = {"test_nll": 1.0, "data_source": str(tmp_path / "binarized_mnist.npz")}
  new = table1.portable_provenance(old)
  assert new["data_source"] == "binarized_mnist.npz"
  assert new["data_md5"] == {"binarized_mnist.npz": "900150983cd24fb0d6963f7d28e17f72"}
  gone = table1.portable_provenance({"data_source": "/nowhere/omniglot_28x28_rebuilt.npz"})
  assert gone == {"data_source": "omniglot_28x28_rebuilt.npz"}  # no checksum it cannot compute
  assert table1.portable_provenance(new) is new


def test_plot_draws_one_figure_per_struct(tmp_path):
  pytest.importorskip("matplotlib")
  (tmp_path / "json").mkdir()
  rows = []
  for config, offset in (("dvae_sharp", 0.0), ("dvae", 0.8), ("dvae_sharp_factorial", 15.0)):
    for k in (1, 5):
      for seed in (0, 1):
        cell = (config, "1-layer-lin", k, seed)
        curve = _curve([110 + offset - k, 105 + offset - k, 100 + offset - k])
        record = {"results": _result(100.0), "learning_curve": curve}
        (tmp_path / "json" / f"{table1.run_name(*cell)}.json").write_text(json.dumps(record))
        rows.append((cell, record["results"]))
  table1.plot_curves(tmp_path, rows)
  from PIL import Image

  image = Image.open(tmp_path / "learning_curves_1-layer-lin.png")
  assert image.size[0] > 1500 and image.size[1] > 400


def test_a_cells_seeds_train_in_one_program_writing_the_run_folders(tmp_path, monkeypatch):
  """``run_cell``: several unfinished seeds are one ``--config.seeds`` program whose ``seed_N``
  folders link to the run folders ``runs/<config>__<struct>__k<K>__s<seed>`` (which
  long_run_curves reads); one seed is a single run in its folder; finished seeds are skipped."""
  import subprocess
  import types

  from benchmarks import long_run_curves

  for name, value in (("_PROTOCOL", "cpu"), ("_PRESET", "cpu_mnist"), ("_NUM_STEPS", 8)):
    monkeypatch.setattr(table1, name, types.SimpleNamespace(value=value))
  monkeypatch.setattr(table1, "_EXTRA", types.SimpleNamespace(value=["log_every=2"]))
  commands = []

  def fake_run(cmd, **kwargs):  # the runner's outputs, written where its workdir says
    commands.append(cmd)
    args = dict(a[2:].split("=", 1) for a in cmd if a.startswith("--"))
    workdir = tmp_path / args["workdir"]
    seeds = args.get("config.seeds")
    folders = (
      {int(s): workdir / f"seed_{s}" for s in seeds.split(",")}
      if seeds
      else {int(args["config.seed"]): workdir}
    )
    for seed, folder in folders.items():
      (folder / "metrics.jsonl").write_text(json.dumps({"step": 8, "val/nll": 90.0 + seed}) + "\n")
      (folder / "results.json").write_text(json.dumps(_result(90.0 + seed, 8)))
    return subprocess.CompletedProcess(cmd, 0)

  monkeypatch.setattr(table1.subprocess, "run", fake_run)
  out = tmp_path / "out"
  results = table1.run_cell(out, "dvae", "1-layer-lin", 5, [0, 1, 2])
  assert {s: r["test_nll"] for s, r in results.items()} == {0: 90.0, 1: 91.0, 2: 92.0}
  (command,) = commands
  program = out / "programs" / "dvae__1-layer-lin__k5"
  assert f"--workdir={program}" in command and "--config.seeds=0,1,2" in command
  assert "--config.num_steps=8" in command and "--config.log_every=2" in command
  assert not any(a.startswith("--config.seed=") for a in command)
  for seed in (0, 1, 2):
    run = out / "runs" / f"dvae__1-layer-lin__k5__s{seed}"
    assert run.is_dir() and not run.is_symlink() and (run / "results.json").is_file()
    assert (program / f"seed_{seed}").resolve() == run.resolve()
  assert (program / "stdout.log").exists()
  cells = sorted(long_run_curves.load(out / "runs"))
  assert cells == [("dvae", "1-layer-lin", 5, seed) for seed in range(3)]

  # Finished seeds are skipped; the one left is a single run in its own folder.
  (out / "runs" / "dvae__1-layer-lin__k5__s1" / "results.json").unlink()
  commands.clear()
  assert table1.run_cell(out, "dvae", "1-layer-lin", 5, [0, 1, 2])[1]["test_nll"] == 91.0
  (command,) = commands
  assert f"--workdir={out / 'runs' / 'dvae__1-layer-lin__k5__s1'}" in command
  assert "--config.seed=1" in command and not any("config.seeds" in a for a in command)
  commands.clear()
  table1.run_cell(out, "dvae", "1-layer-lin", 5, [0, 1, 2])
  assert commands == []
