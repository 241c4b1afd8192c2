r"""Variants of a method against a reference run, paired by seed (the ablations of docs/results.md).

Each ``--dirs`` folder is a ``benchmarks.table1`` output (``DIR/json/<run>.json``).
A run's *variant* is its config name plus the keys in which it departs from that method's defaults
(β off the math.md §6 table, ``adam_eps_mode``, a graph ``prior``, ``num_sweeps``), so
``dvae_sharp`` with ``--override=beta=20`` is "dvae_sharp β=20". Every variant is paired with the
reference variant (default: plain ``dvae_sharp``) of the same struct, K, seed and number of steps
(same initialisation key and batch order), and with its own method at the defaults; the report
gives the test NLL, NLL(variant) − NLL(reference) and NLL(variant) − NLL(method), mean ± std over
seeds (n).

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

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parent.parent
# Keys that make a run a variant of its method when they differ from these defaults.
VARIANT_DEFAULTS = {"adam_eps_mode": "optax", "prior": "rbm", "num_sweeps": 40}


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
  """{(variant, struct, k, seed, num_steps): (test NLL, β)} of the finished runs in ``dirs``."""
  runs = {}
  for d in dirs:
    for path in sorted(pathlib.Path(d).glob("json/*.json")):
      record = json.loads(path.read_text())
      c = record["results"]["config"]
      key = (variant_name(c), c["struct"], c["k"], c["seed"], c["num_steps"])
      runs[key] = (record["results"]["test_nll"], c["beta"])
  return runs


def _mean_spread(values: list[float], sign: str = "") -> str:
  if not values:
    return "—"
  mean = f"{statistics.mean(values):{sign}.2f}"
  spread = "" if len(values) == 1 else f" ± {statistics.stdev(values):.2f}"
  return f"{mean}{spread} ({len(values)})"


def summarise(runs: dict, reference: str) -> list[dict]:
  """One row per (variant, struct, K, steps): β, the NLLs and the paired differences by seed."""
  cells: dict = {}
  for (variant, struct, k, seed, steps), (nll, beta) in runs.items():
    cell = cells.setdefault(
      (variant, struct, k, steps), {"beta": beta, "nll": {}, "diff": {}, "diff_base": {}}
    )
    cell["nll"][seed] = nll
    ref = runs.get((reference, struct, k, seed, steps))
    if ref is not None and variant != reference:
      cell["diff"][seed] = nll - ref[0]
    base = runs.get((variant.split(" ")[0], struct, k, seed, steps))  # the method's defaults
    if base is not None and " " in variant:
      cell["diff_base"][seed] = nll - base[0]
  return [
    {"variant": v, "struct": s, "k": k, "num_steps": n, **cell}
    for (v, s, k, n), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][3], kv[0][0]))
  ]


def report(rows: list[dict], reference: str) -> str:
  lines = [
    f"Test NLL (nats) and the paired difference NLL(variant) − NLL({reference}), same struct, K,"
    f" seed and steps; mean ± std over seeds (n). Negative: the variant beats {reference}.",
    "",
    "| variant | struct | K | steps | β | test NLL | − reference | − its method's defaults |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['variant']} | {r['struct']} | {r['k']} | {r['num_steps']} | {r['beta']:g} | "
      f"{_mean_spread(list(r['nll'].values()))} | "
      f"{_mean_spread(list(r['diff'].values()), '+') if r['variant'] != reference else '0'} | "
      f"{_mean_spread(list(r['diff_base'].values()), '+') if ' ' in r['variant'] else '—'} |"
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
