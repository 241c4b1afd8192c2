r"""Paired test-NLL differences against the training budget (does the gap move with steps?).

Reads the per-run JSONs that ``benchmarks.table1`` writes
(``DIR/json/<config>__<struct>__k<K>__s<seed>.json``) from several grids run at different
``num_steps``, pairs every config with the reference config of the same struct, K, seed and budget
(same initialisation key and batch order), and reports the difference NLL(config) − NLL(reference)
per budget: a Markdown table (mean ± std over seeds, n) and a figure with one panel per struct,
each seed's difference as a point and the mean as a line.

  R=benchmarks/results
  python -m benchmarks.budget_trend --out=$R/budget_trend \
    --dirs=$R/table1_cpu,$R/table1_cpu_6k,$R/table1_cpu_20k,$R/table1_cpu_50k

Only runs of ``--dataset`` with ``--num_sweeps`` sweeps per step and ``--k`` importance samples are
used, so grids with other sampler budgets are never mixed in.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parent.parent


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (other benchmarks that a test process
  imports define flags of the same names)."""
  flags.DEFINE_list("dirs", [], "table1 output folders (each with json/).")
  flags.DEFINE_string("reference", "dvae_sharp", "Config the others are paired with.")
  flags.DEFINE_list("configs", ["dvae", "dvae_pp_power"], "Configs paired with it.")
  flags.DEFINE_integer("k", 5, "Importance samples K of the runs compared.")
  flags.DEFINE_string("dataset", "binarized_mnist", "Dataset of the runs compared.")
  flags.DEFINE_integer("num_sweeps", 40, "Sampler sweeps per step of the runs compared.")
  flags.DEFINE_string("out", str(REPO / "benchmarks" / "results" / "budget_trend"), "Output.")


def load_runs(dirs, *, k: int, dataset: str, num_sweeps: int) -> dict:
  """{(config, struct, seed, num_steps): test NLL} of the finished runs that match the filters."""
  runs = {}
  for d in dirs:
    for path in sorted(pathlib.Path(d).glob("json/*.json")):
      record = json.loads(path.read_text())
      config, struct, k_part, seed_part = record["run"].split("__")
      c = record["results"]["config"]
      if int(k_part[1:]) != k or c["dataset"] != dataset or c["num_sweeps"] != num_sweeps:
        continue
      runs[(config, struct, int(seed_part[1:]), c["num_steps"])] = record["results"]["test_nll"]
  return runs


def paired_differences(runs: dict, reference: str, configs=None) -> dict:
  """{(config, struct, num_steps): {seed: NLL(config) − NLL(reference)}} for ``configs`` (all
  when None)."""
  diffs: dict = {}
  for (config, struct, seed, steps), nll in runs.items():
    ref = runs.get((reference, struct, seed, steps))
    if config != reference and ref is not None and (configs is None or config in configs):
      diffs.setdefault((config, struct, steps), {})[seed] = nll - ref
  return diffs


def report(diffs: dict, reference: str) -> str:
  budgets = sorted({steps for _, _, steps in diffs})
  rows = sorted({(config, struct) for config, struct, _ in diffs}, key=lambda r: (r[1], r[0]))
  lines = [
    f"Paired test-NLL differences NLL(config) − NLL({reference}) (nats), same struct, K, seed and"
    f" budget; mean ± std over seeds (n). Negative: the config beats {reference}.",
    "",
    "| config | struct | " + " | ".join(f"{b:,} steps" for b in budgets) + " |",
    "|---|---|" + "---|" * len(budgets),
  ]
  for config, struct in rows:
    cells = []
    for b in budgets:
      values = list(diffs.get((config, struct, b), {}).values())
      if not values:
        cells.append("—")
      elif len(values) == 1:
        cells.append(f"{values[0]:+.2f} (1)")
      else:
        cells.append(
          f"{statistics.mean(values):+.2f} ± {statistics.stdev(values):.2f} ({len(values)})"
        )
    lines.append(f"| {config} | {struct} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(diffs: dict, reference: str, path: pathlib.Path) -> bool:
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib not installed (pip install -e '.[bench]'): no figure")
    return False
  structs = sorted({struct for _, struct, _ in diffs})
  configs = sorted({config for config, _, _ in diffs})
  colours = dict(zip(configs, plt.get_cmap("tab10").colors, strict=False))
  fig, axes = plt.subplots(1, len(structs), figsize=(5.5 * len(structs), 4), squeeze=False)
  for ax, struct in zip(axes[0], structs, strict=True):
    for config in configs:
      budgets = sorted(b for c, s, b in diffs if (c, s) == (config, struct))
      if not budgets:
        continue
      means = [statistics.mean(diffs[(config, struct, b)].values()) for b in budgets]
      ax.plot(budgets, means, "-", color=colours[config], label=config)
      for b in budgets:
        values = list(diffs[(config, struct, b)].values())
        ax.plot([b] * len(values), values, "o", ms=4, color=colours[config], alpha=0.6)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ticks = sorted({b for _, s, b in diffs if s == struct})
    ax.set_xticks(ticks, [f"{b / 1000:g}k" for b in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(title=struct, xlabel="training steps", ylabel=f"NLL − NLL({reference}) (nats)")
    ax.legend(fontsize=8)
  fig.suptitle(f"Paired differences from {reference} (points: seeds; line: mean)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def main(argv):
  del argv
  f = flags.FLAGS
  runs = load_runs(f.dirs, k=f.k, dataset=f.dataset, num_sweeps=f.num_sweeps)
  diffs = paired_differences(runs, f.reference, f.configs)
  out = pathlib.Path(f.out)
  out.mkdir(parents=True, exist_ok=True)
  table = report(diffs, f.reference)
  (out / "budget_trend.md").write_text(table)
  record = [
    {"config": c, "struct": s, "num_steps": b, "differences_by_seed": v}
    for (c, s, b), v in sorted(diffs.items())
  ]
  tmp = out / "budget_trend.json.tmp"
  tmp.write_text(json.dumps(record, indent=1))
  os.replace(tmp, out / "budget_trend.json")
  plot(diffs, f.reference, out / "budget_trend.png")
  print(table)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
