r"""Learning curves of paired long runs, read while they train (or after).

Reads the run folders that ``benchmarks.table1`` trains
(``RUNS/<config>__<struct>__k<K>__s<seed>/``,
each with its ``metrics.jsonl``), pairs every config with the reference config of the same struct,
K and seed (same initialisation key and batch order), and reports at each validation step:

- the validation NLL of each run (whole validation split, the paper's protocol),
- the paired difference NLL(config) − NLL(reference),
- the sampler diagnostic of each run (``val/sampler_error``: the RMS error of the persistent
  population's moments in units of what as many exact samples would show, so ≈ 1 is as good as
  exact samples; docs/training.md, "Reading the sampler diagnostic") and its log Z drift.

A resumed run repeats the steps logged after its last checkpoint; the last record of a step wins
(it is the one the run continued from). Writes ``curves.json``, ``curves.md`` and, with matplotlib,
``curves.png`` (validation NLL, paired difference, sampler error against steps).

  python -m benchmarks.long_run_curves --runs_dir=runs/table1_1m/runs \
    --out=benchmarks/results/table1_1m/curves
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parent.parent
CURVE_KEYS = ("val/nll", "val/log_z", "val/sampler_error", "val/sampler_log_z_drift")


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (other benchmarks that a test process
  imports define flags of the same names)."""
  flags.DEFINE_string("runs_dir", None, "Folder of run folders <config>__<struct>__k<K>__s<seed>.")
  flags.DEFINE_string("reference", "dvae_sharp", "Config the others are paired with.")
  flags.DEFINE_string(
    "out", str(REPO / "benchmarks" / "results" / "table1_1m" / "curves"), "Output folder."
  )


def read_curves(run_dir: pathlib.Path) -> dict:
  """``{"last_step": int, key: {step: value}}`` for the keys of :data:`CURVE_KEYS` in a run's
  ``metrics.jsonl`` (the last record of a step wins)."""
  curves: dict = {key: {} for key in CURVE_KEYS}
  last_step = 0
  path = run_dir / "metrics.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (not a run folder)")
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    record = json.loads(line)
    step = int(record["step"])
    last_step = max(last_step, step)
    for key in CURVE_KEYS:
      if key in record:
        curves[key][step] = float(record[key])
  return {"last_step": last_step, **curves}


def load(runs_dir: pathlib.Path) -> dict:
  """``{(config, struct, k, seed): curves}`` of every run folder in ``runs_dir``."""
  runs = {}
  for run_dir in sorted(p for p in runs_dir.iterdir() if (p / "metrics.jsonl").is_file()):
    parts = run_dir.name.split("__")
    if len(parts) != 4 or not parts[2].startswith("k") or not parts[3].startswith("s"):
      raise ValueError(f"{run_dir.name}: expected <config>__<struct>__k<K>__s<seed>")
    config, struct, k, seed = parts[0], parts[1], int(parts[2][1:]), int(parts[3][1:])
    runs[(config, struct, k, seed)] = read_curves(run_dir)
  return runs


def pair(runs: dict, reference: str) -> list[dict]:
  """One row per (config, struct, K, seed, validation step) that the config and the reference
  both reached: both NLLs, their difference and both sampler diagnostics."""
  rows = []
  for (config, struct, k, seed), curves in sorted(runs.items()):
    ref = runs.get((reference, struct, k, seed))
    if config == reference or ref is None:
      continue
    for step in sorted(set(curves["val/nll"]) & set(ref["val/nll"])):
      rows.append({
        "config": config,
        "struct": struct,
        "k": k,
        "seed": seed,
        "step": step,
        "nll": curves["val/nll"][step],
        "reference_nll": ref["val/nll"][step],
        "difference": curves["val/nll"][step] - ref["val/nll"][step],
        "sampler_error": curves["val/sampler_error"].get(step),
        "reference_sampler_error": ref["val/sampler_error"].get(step),
      })
  return rows


def _fmt(value, spec: str) -> str:
  return "—" if value is None else format(value, spec)


def report(rows: list[dict], runs: dict, reference: str) -> str:
  reached = ", ".join(
    f"{c} {s} K={k} seed {seed}: step {curves['last_step']:,}"
    for (c, s, k, seed), curves in sorted(runs.items())
  )
  lines = [
    f"Validation NLL (nats, whole validation split) of paired runs; difference = NLL(config) −"
    f" NLL({reference}) at the same step, same initialisation and batch order (negative: the"
    f" config is ahead). Sampler error: the persistent population's moment error in units of the"
    f" noise of as many exact samples (≈ 1: as good as exact samples; ≤ 1.5: within noise)."
    f" Runs reached: {reached}.",
    "",
    f"| config | struct | K | seed | step | NLL(config) | NLL({reference}) | difference |"
    f" sampler error (config / {reference}) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['config']} | {r['struct']} | {r['k']} | {r['seed']} | {r['step']:,} |"
      f" {r['nll']:.2f} | {r['reference_nll']:.2f} | {r['difference']:+.2f} |"
      f" {_fmt(r['sampler_error'], '.3f')} / {_fmt(r['reference_sampler_error'], '.3f')} |"
    )
  return "\n".join(lines) + "\n"


def plot(runs: dict, rows: list[dict], reference: str, path: pathlib.Path) -> bool:
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib not installed (pip install -e '.[bench]'): no figure")
    return False
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for (config, struct, k, seed), curves in sorted(runs.items()):
    label = f"{config} {struct} K={k} s{seed}"
    nll = sorted(curves["val/nll"].items())
    if nll:
      axes[0].plot(*zip(*nll, strict=True), "o-", ms=3, label=label)
    err = sorted(curves["val/sampler_error"].items())
    if err:
      axes[2].plot(*zip(*err, strict=True), "o-", ms=3, label=label)
  groups: dict = {}
  for r in rows:
    groups.setdefault((r["config"], r["struct"], r["k"], r["seed"]), []).append(r)
  for (config, struct, k, seed), group in sorted(groups.items()):
    axes[1].plot(
      [r["step"] for r in group], [r["difference"] for r in group], "o-", ms=3,
      label=f"{config} − {reference}, {struct} K={k} s{seed}",
    )
  axes[1].axhline(0.0, color="k", lw=0.8)
  axes[0].set(xlabel="training step", ylabel="validation NLL (nats)", title="validation NLL")
  axes[1].set(xlabel="training step", ylabel="difference (nats)", title="paired difference")
  axes[2].set(xlabel="training step", ylabel="sampler error", title="sampler diagnostic")
  for ax in axes:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.runs_dir:
    raise app.UsageError("--runs_dir is required (the folder of run folders)")
  runs = load(pathlib.Path(f.runs_dir))
  rows = pair(runs, f.reference)
  out = pathlib.Path(f.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "curves.md").write_text(report(rows, runs, f.reference))
  record = {
    "reference": f.reference,
    "runs": {"__".join(map(str, key)): curves for key, curves in sorted(runs.items())},
    "paired": rows,
  }
  (out / "curves.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
  plot(runs, rows, f.reference, out / "curves.png")
  print(report(rows, runs, f.reference))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
