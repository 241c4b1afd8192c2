r"""Trains and evaluates a grid of the DVAE# paper's Table 1 and writes one JSON per run + a table.

Each run is ``python -m experiments.run`` in a subprocess (its own workdir under ``--out``, so an
interrupted grid resumes: finished runs are skipped, unfinished ones resume from their checkpoint).

  # The CPU grids of the README (2 structs, 4 methods, K = 1 and 5; README "Results" has the
  # exact flags): binarized MNIST, then the OMNIGLOT stand-in.
  python -m benchmarks.table1 --preset=cpu_mnist --num_steps=6000 --seeds=0,1
  python -m benchmarks.table1 --preset=cpu_omniglot --num_steps=4000 --seeds=0

  # The paper's full protocol (1M steps, 1000 × 40 PA, 4000 IW samples) on a GPU: one flag away.
  python -m benchmarks.table1 --preset=paper_mnist --protocol=paper

Outputs: ``OUT/runs/<name>/`` (the runner's workdir: metrics.jsonl, results.json, images),
``OUT/json/<name>.json`` (results + the learning curve), ``OUT/images/`` (each run's last sample
and reconstruction grids), ``OUT/table1.md`` and ``OUT/learning_curves_<struct>.png``. The run
folders (checkpoints) are not meant to be committed (``.gitignore``).
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

from absl import app, flags

from dvae_jax import models
from experiments import config_lib

REPO = pathlib.Path(__file__).resolve().parent.parent

ALL_METHODS = config_lib.PAPER_METHODS  # the eight methods of MATH.md §4, in the §6 table order
ALL_STRUCTS = tuple(models.STRUCTS)

# (configs, structs, Ks) of each preset. 'dvae_sharp_factorial' is the factorial-Bernoulli baseline.
PRESETS = {
  "cpu_mnist": (
    ("dvae", "dvae_pp_power", "dvae_sharp", "dvae_sharp_factorial"),
    ("1-layer-lin", "1-layer-nonlin"),
    (1, 5),
  ),
  "cpu_omniglot": (
    ("dvae", "dvae_pp_power", "dvae_sharp", "dvae_sharp_factorial"),
    ("1-layer-lin", "1-layer-nonlin"),
    (1, 5),
  ),
  "cpu_caltech": (
    ("dvae", "dvae_pp_power", "dvae_sharp", "dvae_sharp_factorial"),
    ("1-layer-nonlin",),
    (1, 5),
  ),
  "paper_mnist": (ALL_METHODS, ALL_STRUCTS, (1, 5, 25)),
  "paper_omniglot": (ALL_METHODS, ALL_STRUCTS, (1, 5, 25)),
}

_PRESET = flags.DEFINE_enum("preset", "cpu_mnist", list(PRESETS), "Grid to run.")
_CONFIGS = flags.DEFINE_list("configs", None, "Override the preset's configs.")
_STRUCTS = flags.DEFINE_list("structs", None, "Override the preset's structs.")
_KS = flags.DEFINE_list("ks", None, "Override the preset's K values.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (the spread over seeds is reported).")
_PROTOCOL = flags.DEFINE_enum("protocol", "cpu", ["cpu", "paper"], "Budget defaults of the runner.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Training steps (default: the protocol's).")
_EXTRA = flags.DEFINE_multi_string("override", [], "Extra --config.KEY=VALUE for every run.")
_OUT = flags.DEFINE_string("out", str(REPO / "benchmarks" / "results" / "table1"), "Output dir.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only rebuild the table from finished runs.")


def _dataset(preset: str) -> str:
  if preset.endswith("omniglot"):
    return "omniglot"
  return "caltech101_silhouettes" if preset.endswith("caltech") else "binarized_mnist"


def run_name(config: str, struct: str, k: int, seed: int) -> str:
  return f"{config}__{struct}__k{k}__s{seed}"


def grid():
  configs, structs, ks = PRESETS[_PRESET.value]
  configs = _CONFIGS.value or configs
  structs = _STRUCTS.value or structs
  ks = [int(k) for k in (_KS.value or ks)]
  seeds = [int(s) for s in _SEEDS.value]
  return list(itertools.product(configs, structs, ks, seeds))


def run_one(out: pathlib.Path, config: str, struct: str, k: int, seed: int) -> dict | None:
  name = run_name(config, struct, k, seed)
  workdir = out / "runs" / name
  if (workdir / "results.json").exists():
    return json.loads((workdir / "results.json").read_text())
  cmd = [
    sys.executable,
    "-m",
    "experiments.run",
    f"--config={config}",
    f"--workdir={workdir}",
    f"--config.struct={struct}",
    f"--config.k={k}",
    f"--config.seed={seed}",
    f"--config.protocol={_PROTOCOL.value}",
    f"--config.dataset={_dataset(_PRESET.value)}",
  ]
  if _NUM_STEPS.value:
    cmd.append(f"--config.num_steps={_NUM_STEPS.value}")
  cmd += [f"--config.{o}" if not o.startswith("--") else o for o in _EXTRA.value]
  print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
  workdir.mkdir(parents=True, exist_ok=True)
  with open(workdir / "stdout.log", "a") as log:
    proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  if proc.returncode != 0:
    print(f"  FAILED (exit {proc.returncode}); see {workdir / 'stdout.log'}", flush=True)
    return None
  return json.loads((workdir / "results.json").read_text())


def learning_curve(workdir: pathlib.Path) -> dict:
  """Training loss and validation NLL against the step, from the runner's metrics.jsonl."""
  curve = {"step": [], "loss": [], "val_step": [], "val_nll": []}
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return curve
  for line in path.read_text().splitlines():
    row = json.loads(line)
    if "loss" in row:
      curve["step"].append(row["step"])
      curve["loss"].append(row["loss"])
    if "val/nll" in row:
      curve["val_step"].append(row["step"])
      curve["val_nll"].append(row["val/nll"])
  return curve


def copy_images(out: pathlib.Path, workdir: pathlib.Path, name: str) -> None:
  """The run's last sample and reconstruction grids, as OUT/images/<name>_{samples,recon}.png."""
  (out / "images").mkdir(exist_ok=True)
  for kind, short in (("samples", "samples"), ("reconstructions", "recon")):
    grids = sorted(workdir.glob(f"{kind}_*.png"))
    if grids:
      shutil.copyfile(grids[-1], out / "images" / f"{name}_{short}.png")


def _mean_spread(values: list[float], sign: str = "") -> str:
  """'mean ± std' (the value alone for one, '—' for none); sign='+' prints the sign."""
  if not values:
    return "—"
  mean = f"{statistics.mean(values):{sign}.2f}"
  return mean if len(values) == 1 else f"{mean} ± {statistics.stdev(values):.2f}"


def write_report(out: pathlib.Path, rows: list[tuple], reference: str = "dvae_sharp") -> str:
  """Markdown tables: test NLL, one row per (config, struct), one column per K, mean ± std over
  seeds; then each config's per-seed difference from ``reference``."""
  by_cell: dict = {}
  for (config, struct, k, _seed), result in rows:
    if result is not None:
      by_cell.setdefault((config, struct, k), []).append(result)
  configs = list(dict.fromkeys(r[0][0] for r in rows))
  structs = list(dict.fromkeys(r[0][1] for r in rows))
  ks = sorted({r[0][2] for r in rows})
  lines = [
    "Test NLL (nats; importance-weighted with the discrete model, at the best-validation"
    " checkpoint; mean ± std over seeds, n = number of seeds finished).",
    "",
    "| config | struct | " + " | ".join(f"K={k}" for k in ks) + " | steps | n |",
    "|---|---|" + "---|" * len(ks) + "---|---|",
  ]
  for struct in structs:
    for config in configs:
      cells, steps, n = [], "—", 0
      for k in ks:
        results = by_cell.get((config, struct, k), [])
        cells.append(_mean_spread([r["test_nll"] for r in results]))
        if results:
          steps = str(results[0]["config"]["num_steps"])
          n = max(n, len(results))
      lines.append(f"| {config} | {struct} | " + " | ".join(cells) + f" | {steps} | {n} |")
  lines += _paired_differences(by_seed(rows), configs, structs, ks, reference)
  table = "\n".join(lines) + "\n"
  (out / "table1.md").write_text(table)
  return table


def by_seed(rows: list[tuple]) -> dict:
  """{(config, struct, k, seed): test NLL} of the finished runs."""
  return {cell: result["test_nll"] for cell, result in rows if result is not None}


def _paired_differences(nll: dict, configs, structs, ks, reference: str) -> list[str]:
  """Markdown lines: NLL(config) − NLL(reference) per seed (runs of one seed share the
  initialisation key and the batch order), mean ± std over the seeds both finished."""
  others = [c for c in configs if c != reference]
  if reference not in configs or not others:
    return []
  lines = [
    "",
    f"Paired differences: test NLL(config) − test NLL({reference}), same struct, K and seed; mean"
    f" ± std over the seeds both finished (n). Positive: {reference} is better.",
    "",
    "| config | struct | " + " | ".join(f"K={k}" for k in ks) + " | n |",
    "|---|---|" + "---|" * len(ks) + "---|",
  ]
  seeds = sorted({cell[3] for cell in nll})
  for struct in structs:
    for config in others:
      cells, n = [], 0
      for k in ks:
        diffs = [
          nll[(config, struct, k, s)] - nll[(reference, struct, k, s)]
          for s in seeds
          if (config, struct, k, s) in nll and (reference, struct, k, s) in nll
        ]
        cells.append(_mean_spread(diffs, sign="+"))
        n = max(n, len(diffs))
      lines.append(f"| {config} | {struct} | " + " | ".join(cells) + f" | {n} |")
  return lines


def plot_curves(out: pathlib.Path, rows: list[tuple]) -> None:
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib not installed (pip install -e '.[bench]'): no learning-curve PNGs")
    return
  structs = list(dict.fromkeys(r[0][1] for r in rows))
  for struct in structs:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (config, s, k, seed), _ in rows:
      path = out / "json" / f"{run_name(config, s, k, seed)}.json"
      if s != struct or not path.exists():
        continue
      curve = json.loads(path.read_text())["learning_curve"]
      if not curve["step"]:
        continue
      label = f"{config} K={k} s{seed}"
      axes[0].plot(curve["step"], curve["loss"], label=label, lw=0.8)
      axes[1].plot(curve["val_step"], curve["val_nll"], marker="o", label=label, lw=0.8)
    axes[0].set(title=f"{struct}: training loss", xlabel="step", ylabel="loss (nats)")
    axes[1].set(title=f"{struct}: validation NLL", xlabel="step", ylabel="NLL (nats)")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / f"learning_curves_{struct}.png", dpi=110)
    plt.close(fig)


def main(argv):
  del argv
  out = pathlib.Path(_OUT.value)
  (out / "json").mkdir(parents=True, exist_ok=True)
  rows = []
  for cell in grid():
    workdir = out / "runs" / run_name(*cell)
    if _REPORT_ONLY.value:
      path = workdir / "results.json"
      result = json.loads(path.read_text()) if path.exists() else None
    else:
      result = run_one(out, *cell)
    if result is not None:
      curve = learning_curve(workdir)
      copy_images(out, workdir, run_name(*cell))
      record = {"run": run_name(*cell), "results": result, "learning_curve": curve}
      tmp = out / "json" / f"{run_name(*cell)}.json.tmp"
      tmp.write_text(json.dumps(record, indent=1))
      os.replace(tmp, out / "json" / f"{run_name(*cell)}.json")
    rows.append((cell, result))
    write_report(out, rows)
  print(write_report(out, rows))
  plot_curves(out, rows)


if __name__ == "__main__":
  app.run(main)
