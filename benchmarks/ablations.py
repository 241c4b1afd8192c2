r"""Variants of a method against a reference run, paired by seed (the ablations of docs/results.md).

Each ``--dirs`` folder is a ``benchmarks.table1`` output (``DIR/json/<run>.json``).
A run's *variant* is its config name plus the keys in which it departs from that method's defaults
(β off the math.md §6 table, ``adam_eps_mode``, a graph ``prior``, ``num_sweeps``,
``num_prior_samples``, ``rao_blackwell``), so
``dvae_sharp`` with ``--override=beta=20`` is "dvae_sharp β=20". Every variant is paired with the
reference variant (default: plain ``dvae_sharp``) of the same struct, K, seed and number of steps
(same initialisation key and batch order), and with its own method at the defaults; the report
gives the test NLL, NLL(variant) − NLL(reference) and NLL(variant) − NLL(method), mean ± std over
seeds (n), the sampler diagnostic's largest moment error over training (max over seeds; ≈ 1: as
good as exact samples) and the training steps/s (mean over seeds, as the runs measured it: compare
speeds only between runs that shared a machine's load).

  R=benchmarks/results
  python -m benchmarks.ablations --out=$R/ablations_6k \
    --dirs=$R/table1_cpu_6k,$R/ablation_smoothing_6k,$R/ablation_beta_6k/dvae_sharp_beta10,...

Writes OUT/ablations.md and OUT/ablations.json.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
from typing import NamedTuple

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parent.parent


class RunSummary(NamedTuple):
  """What the report reads of one finished run."""

  nll: float
  beta: float
  max_error: float | None  # the sampler diagnostic's largest moment error over training
  steps_per_second: float | None  # num_steps / train_seconds
# Keys that make a run a variant of its method when they differ from these defaults.
VARIANT_DEFAULTS = {
  "adam_eps_mode": "optax",
  "prior": "rbm",
  "num_sweeps": 40,
  "num_prior_samples": 1000,
  "rao_blackwell": "none",
}


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (other benchmarks that a test process
  imports define flags of the same names)."""
  flags.DEFINE_list("dirs", [], "table1 output folders (each with json/).")
  flags.DEFINE_string("reference", "dvae_sharp", "Variant the others are paired with.")
  flags.DEFINE_string("out", str(REPO / "benchmarks" / "results" / "ablations_6k"), "Output.")


def variant_name(config: dict) -> str:
  """'method' plus ' key=value' for each departure from the defaults (β: from the §6 table)."""
  from experiments import config_lib

  parts = [config["method"]]
  if config.get("prior") == "factorial":
    parts[0] += "_factorial"
  table_beta = config_lib.BETA_TABLE[config["dataset"]][config["struct"]][config["method"]]
  if config["beta"] != table_beta:
    parts.append(f"β={config['beta']:g}")
  for key, default in VARIANT_DEFAULTS.items():
    value = config.get(key, default)
    if value != default and (key, value) != ("prior", "factorial"):
      parts.append(f"{key}={value}")
  return " ".join(parts)


def load_runs(dirs) -> dict:
  """{(variant, struct, k, seed, num_steps): RunSummary} of the finished runs in ``dirs``."""
  runs = {}
  for d in dirs:
    for path in sorted(pathlib.Path(d).glob("json/*.json")):
      record = json.loads(path.read_text())
      c = record["results"]["config"]
      key = (variant_name(c), c["struct"], c["k"], c["seed"], c["num_steps"])
      results = record["results"]
      seconds = results.get("train_seconds")
      runs[key] = RunSummary(
        nll=results["test_nll"],
        beta=c["beta"],
        max_error=(results.get("sampler_diagnostic") or {}).get("max_error"),
        steps_per_second=c["num_steps"] / seconds if seconds else None,
      )
  return runs


def _mean_spread(values: list[float], sign: str = "") -> str:
  if not values:
    return "—"
  mean = f"{statistics.mean(values):{sign}.2f}"
  spread = "" if len(values) == 1 else f" ± {statistics.stdev(values):.2f}"
  return f"{mean}{spread} ({len(values)})"


def summarise(runs: dict, reference: str) -> list[dict]:
  """One row per (variant, struct, K, steps): β, the NLLs and the paired differences by seed, the
  largest sampler diagnostic and the mean steps/s (None where no run recorded them)."""
  cells: dict = {}
  for (variant, struct, k, seed, steps), run in runs.items():
    cell = cells.setdefault(
      (variant, struct, k, steps),
      {"beta": run.beta, "nll": {}, "diff": {}, "diff_base": {}, "max_error": {}, "speed": {}},
    )
    cell["nll"][seed] = run.nll
    if run.max_error is not None:
      cell["max_error"][seed] = run.max_error
    if run.steps_per_second is not None:
      cell["speed"][seed] = run.steps_per_second
    ref = runs.get((reference, struct, k, seed, steps))
    if ref is not None and variant != reference:
      cell["diff"][seed] = run.nll - ref.nll
    base = runs.get((variant.split(" ")[0], struct, k, seed, steps))  # the method's defaults
    if base is not None and " " in variant:
      cell["diff_base"][seed] = run.nll - base.nll
  return [
    {"variant": v, "struct": s, "k": k, "num_steps": n, **cell}
    for (v, s, k, n), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][3], kv[0][0]))
  ]


def report(rows: list[dict], reference: str) -> str:
  lines = [
    f"Test NLL (nats) and the paired difference NLL(variant) − NLL({reference}), same struct, K,"
    f" seed and steps; mean ± std over seeds (n). Negative: the variant beats {reference}.",
    "",
    "| variant | struct | K | steps | β | test NLL | − reference | − its method's defaults |"
    " max diag. error | steps/s |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    errors, speeds = list(r["max_error"].values()), list(r["speed"].values())
    lines.append(
      f"| {r['variant']} | {r['struct']} | {r['k']} | {r['num_steps']} | {r['beta']:g} | "
      f"{_mean_spread(list(r['nll'].values()))} | "
      f"{_mean_spread(list(r['diff'].values()), '+') if r['variant'] != reference else '0'} | "
      f"{_mean_spread(list(r['diff_base'].values()), '+') if ' ' in r['variant'] else '—'} | "
      f"{f'{max(errors):.2f}' if errors else '—'} | "
      f"{f'{statistics.mean(speeds):.1f}' if speeds else '—'} |"
    )
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  f = flags.FLAGS
  out = pathlib.Path(f.out)
  out.mkdir(parents=True, exist_ok=True)
  rows = summarise(load_runs(f.dirs), f.reference)
  text = report(rows, f.reference)
  for name, content in (("ablations.md", text), ("ablations.json", json.dumps(rows, indent=1))):
    tmp = out / f"{name}.tmp"
    tmp.write_text(content)
    os.replace(tmp, out / name)
  print(text)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
