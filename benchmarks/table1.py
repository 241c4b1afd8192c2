r"""Trains and evaluates a grid of the DVAE# paper's Table 1 and writes one JSON per run + a table.

Each (config, struct, K) cell is one ``python -m experiments.run`` in a subprocess training all of
its seeds in one program (``--config.seeds``; a single seed is a single run). Every run has its own
folder under ``--out``, so an interrupted grid resumes: finished runs are skipped, unfinished ones
resume from their checkpoint.

  # The CPU grids of docs/results.md (2 structs, 4 methods, K = 1 and 5; docs/results.md has
  # the exact flags): binarized MNIST, then the OMNIGLOT stand-in.
  python -m benchmarks.table1 --preset=cpu_mnist --num_steps=6000 --seeds=0,1
  python -m benchmarks.table1 --preset=cpu_omniglot --num_steps=4000 --seeds=0

  # The paper's full protocol (1M steps, 1000 × 40 PA, 4000 IW samples) on a GPU: one flag away.
  python -m benchmarks.table1 --preset=paper_mnist --protocol=paper

Outputs: ``OUT/runs/<name>/`` (the run's folder: metrics.jsonl, results.json, images; a program of
several seeds has its workdir in ``OUT/programs/<config>__<struct>__k<K>/``, whose ``seed_N`` links
to the run folders),
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

ALL_METHODS = config_lib.PAPER_METHODS  # the eight methods of math.md §4, in the §6 table order
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
  # The sweep-budget study (one budget per --out; benchmarks/sweep_study.py runs them all).
  "sweep_study": (
    ("dvae", "dvae_sharp"),
    ("1-layer-lin", "1-layer-nonlin", "2-layer-nonlin"),
    (5,),
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


def program_dir(out: pathlib.Path, config: str, struct: str, k: int) -> pathlib.Path:
  """The workdir of the program that trains a cell's seeds together: ``OUT/programs/<config>__
  <struct>__k<K>`` (its lock and stdout.log); its ``seed_N`` folders link to the runs' folders."""
  return out / "programs" / f"{config}__{struct}__k{k}"


def _link_seed_folders(program: pathlib.Path, runs: dict[int, pathlib.Path]) -> None:
  """``program/seed_N`` → ``runs[N]`` (relative links), so that the runner's seed folders are the
  run folders ``OUT/runs/<config>__<struct>__k<K>__s<seed>`` that every reader knows."""
  program.mkdir(parents=True, exist_ok=True)
  for seed, run in runs.items():
    run.mkdir(parents=True, exist_ok=True)
    link = program / f"seed_{seed}"
    target = os.path.relpath(run, program)
    if link.is_symlink() and os.readlink(link) != target:
      link.unlink()
    if not link.is_symlink() and not link.exists():
      link.symlink_to(target, target_is_directory=True)


def run_cell(out: pathlib.Path, config: str, struct: str, k: int, seeds: list[int]) -> dict:
  """Trains the unfinished seeds of one (config, struct, K) cell: one seed as a single run, several
  in one program (``--config.seeds``, one vmapped training of them all). Every seed's outputs are
  in its run folder ``OUT/runs/<config>__<struct>__k<K>__s<seed>`` either way. Returns ``{seed:
  results, or None if its run failed}``."""
  runs = {seed: out / "runs" / run_name(config, struct, k, seed) for seed in seeds}
  todo = [seed for seed in seeds if not (runs[seed] / "results.json").exists()]
  if todo:
    cmd = [
      sys.executable,
      "-m",
      "experiments.run",
      f"--config={config}",
      f"--config.struct={struct}",
      f"--config.k={k}",
      f"--config.protocol={_PROTOCOL.value}",
      f"--config.dataset={_dataset(_PRESET.value)}",
    ]
    if len(todo) == 1:
      workdir = runs[todo[0]]
      workdir.mkdir(parents=True, exist_ok=True)
      cmd += [f"--workdir={workdir}", f"--config.seed={todo[0]}"]
    else:
      workdir = program_dir(out, config, struct, k)
      _link_seed_folders(workdir, {seed: runs[seed] for seed in todo})
      cmd += [f"--workdir={workdir}", f"--config.seeds={','.join(map(str, todo))}"]
    if _NUM_STEPS.value:
      cmd.append(f"--config.num_steps={_NUM_STEPS.value}")
    cmd += [f"--config.{o}" if not o.startswith("--") else o for o in _EXTRA.value]
    names = ", ".join(runs[seed].name for seed in todo)
    print(f"[{time.strftime('%H:%M:%S')}] {names}", flush=True)
    with open(workdir / "stdout.log", "a") as log:
      proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
      print(f"  FAILED (exit {proc.returncode}); see {workdir / 'stdout.log'}", flush=True)
  return {
    seed: json.loads(path.read_text()) if (path := runs[seed] / "results.json").exists() else None
    for seed in seeds
  }


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
  """The run's last sample and reconstruction grids, as OUT/images/<name>_{samples,recon}.png
  (from the workdir's images/, or the workdir itself for runs written before that folder)."""
  (out / "images").mkdir(exist_ok=True)
  for kind, short in (("samples", "samples"), ("reconstructions", "recon")):
    grids = sorted(workdir.glob(f"images/{kind}_*.png")) or sorted(workdir.glob(f"{kind}_*.png"))
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


# Line style of each K (one colour per method: the default colour cycle, in the preset's order).
K_STYLES = ("-", "--", ":", "-.")
SMOOTH_POINTS = 5  # the training loss is logged for one batch every log_every steps: noisy


def mean_curve(curves: list[tuple[list, list]]) -> tuple[list, list]:
  """(steps, mean over curves) at the steps every curve has; curves: [(steps, values)]."""
  common = sorted(set.intersection(*(set(steps) for steps, _ in curves))) if curves else []
  lookups = [dict(zip(steps, values, strict=True)) for steps, values in curves]
  return common, [statistics.mean(look[s] for look in lookups) for s in common]


def moving_average(values: list[float], width: int) -> list[float]:
  """Trailing mean over up to ``width`` points (the first points average fewer)."""
  return [statistics.mean(values[max(0, i - width + 1) : i + 1]) for i in range(len(values))]


def focus_limits(values: list[float], margin: float = 0.15, min_span: float = 1.0):
  """(low, high) y limits around ``values`` with ``margin`` of their span on each side, at least
  ``min_span`` wide: an axis on which differences of a nat are visible."""
  if not values:
    return None
  low, high = min(values), max(values)
  pad = max(margin * (high - low), (min_span - (high - low)) / 2, 0.0)
  return low - pad, high + pad


def paired_val_differences(curves: dict, config: str, reference: str, struct: str, k: int):
  """(steps, mean over seeds of val NLL(config) − val NLL(reference)) for one struct and K, over
  the seeds both have; curves: {(config, struct, k, seed): learning curve}."""
  pairs = []
  for (c, s, kk, seed), curve in curves.items():
    other = curves.get((reference, s, kk, seed))
    if (c, s, kk) != (config, struct, k) or other is None:
      continue
    ref = dict(zip(other["val_step"], other["val_nll"], strict=True))
    steps = [t for t in curve["val_step"] if t in ref]
    own = dict(zip(curve["val_step"], curve["val_nll"], strict=True))
    pairs.append((steps, [own[t] - ref[t] for t in steps]))
  return mean_curve(pairs)


def plot_curves(out: pathlib.Path, rows: list[tuple], reference: str = "dvae_sharp") -> None:
  """OUT/learning_curves_<struct>.png: training loss, validation NLL and the paired difference
  val NLL(method) − val NLL(reference) against the step; one colour per method, one line style
  per K, means over seeds. The y axes frame the later half of training of the methods with an RBM
  prior, where they differ by about a nat; lines outside (the factorial baseline, early steps)
  are clipped and their last value is written in the panel."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
  except ImportError:
    print("matplotlib not installed (pip install -e '.[bench]'): no learning-curve PNGs")
    return
  curves = {}
  for cell, _ in rows:
    path = out / "json" / f"{run_name(*cell)}.json"
    if path.exists():
      curve = json.loads(path.read_text())["learning_curve"]
      if curve["step"]:
        curves[cell] = curve
  configs = list(dict.fromkeys(cell[0] for cell, _ in rows))
  palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  colour = {c: palette[i % len(palette)] for i, c in enumerate(configs)}
  ks = sorted({cell[2] for cell, _ in rows})
  style = {k: K_STYLES[i % len(K_STYLES)] for i, k in enumerate(ks)}
  focus = [c for c in configs if not c.endswith("_factorial")] or configs
  for struct in dict.fromkeys(cell[1] for cell, _ in rows):
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    framed = {0: [], 1: [], 2: []}
    drawn = {0: [], 1: [], 2: []}  # (axis, config, k, last value) of every line
    seeds = sorted({cell[3] for cell in curves if cell[1] == struct})
    for config in configs:
      for k in ks:
        cells = [cell for cell in curves if cell[:3] == (config, struct, k)]
        if not cells:
          continue
        loss = mean_curve([(curves[c]["step"], curves[c]["loss"]) for c in cells])
        loss = (loss[0], moving_average(loss[1], SMOOTH_POINTS))
        val = mean_curve([(curves[c]["val_step"], curves[c]["val_nll"]) for c in cells])
        panels = [(0, loss), (1, val)]
        if config != reference:
          panels.append((2, paired_val_differences(curves, config, reference, struct, k)))
        for axis, (steps, values) in panels:
          if not steps:
            continue
          marker = "o" if axis else None  # validation points: one per evaluation
          axes[axis].plot(
            steps, values, color=colour[config], ls=style[k], lw=1.4, marker=marker, ms=3
          )
          drawn[axis].append((config, k, values[-1]))
          if config in focus:
            late = [v for t, v in zip(steps, values, strict=True) if t >= 0.5 * steps[-1]]
            framed[axis] += late
    axes[2].axhline(0.0, color=colour.get(reference, "k"), lw=1.0)
    if not drawn[2]:
      axes[2].text(
        0.5, 0.5, f"no {reference} runs to pair with", ha="center", transform=axes[2].transAxes
      )
    framed[2].append(0.0)
    for axis in range(3):
      limits = focus_limits(framed[axis])
      if limits is None:
        continue
      axes[axis].set_ylim(*limits)
      outside = [
        f"{c} K={k}: {v:+.1f}" if axis == 2 else f"{c} K={k}: {v:.1f}"
        for c, k, v in drawn[axis]
        if not limits[0] <= v <= limits[1]
      ]
      if outside:
        axes[axis].text(
          0.02,
          0.02,
          "off scale (last value):\n" + "\n".join(outside),
          transform=axes[axis].transAxes,
          fontsize=7,
          va="bottom",
        )
    n_seeds = f"mean over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    axes[0].set(
      title=f"{struct}: training loss ({SMOOTH_POINTS}-point moving average)",
      xlabel="step",
      ylabel="loss (nats)",
    )
    axes[1].set(title=f"{struct}: validation NLL ({n_seeds})", xlabel="step", ylabel="NLL (nats)")
    axes[2].set(
      title=f"paired: val NLL(method) − val NLL({reference}), same seed",
      xlabel="step",
      ylabel="difference (nats; > 0: method worse)",
    )
    for ax in axes:
      ax.grid(alpha=0.3)
    method_handles = [Line2D([], [], color=colour[c], lw=2, label=c) for c in configs]
    k_handles = [Line2D([], [], color="0.3", ls=style[k], lw=1.4, label=f"K={k}") for k in ks]
    axes[1].legend(handles=method_handles, fontsize=8, loc="upper right", title="method")
    axes[2].legend(handles=k_handles, fontsize=8, loc="best", title="objective K")
    fig.tight_layout()
    fig.savefig(out / f"learning_curves_{struct}.png", dpi=110)
    plt.close(fig)


def saved_record(out: pathlib.Path, name: str) -> dict | None:
  """The run's record OUT/json/<name>.json (results + learning curve), if written before."""
  path = out / "json" / f"{name}.json"
  return json.loads(path.read_text()) if path.exists() else None


def portable_provenance(results: dict) -> dict:
  """Results whose ``data_source`` is a machine path (records written before data files were named
  by name and MD5) get the file's name, and its MD5 when the file is still at that path."""
  source = results.get("data_source", "")
  if "/" not in source:
    return results
  from dvae_jax import data as data_lib

  paths = source.split(", ")
  names = [os.path.basename(p) for p in paths]
  results = {**results, "data_source": ", ".join(names)}
  if all(os.path.isfile(p) for p in paths):
    results["data_md5"] = {n: data_lib.file_md5(p) for n, p in zip(names, paths, strict=True)}
  return results


def main(argv):
  del argv
  out = pathlib.Path(_OUT.value)
  (out / "json").mkdir(parents=True, exist_ok=True)
  rows, trained = [], {}
  for cell in grid():
    workdir = out / "runs" / run_name(*cell)
    saved = saved_record(out, run_name(*cell))
    if _REPORT_ONLY.value and not (workdir / "results.json").exists() and saved is not None:
      # The run folders are not committed: rebuild the report from the committed records.
      result, curve = portable_provenance(saved["results"]), saved["learning_curve"]
    elif _REPORT_ONLY.value:
      path = workdir / "results.json"
      result = json.loads(path.read_text()) if path.exists() else None
      curve = learning_curve(workdir)
    else:
      if cell[:3] not in trained:  # the cell's seeds, in one program
        trained[cell[:3]] = run_cell(out, *cell[:3], [int(s) for s in _SEEDS.value])
      result = trained[cell[:3]][cell[3]]
      curve = learning_curve(workdir)
    if result is not None:
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
