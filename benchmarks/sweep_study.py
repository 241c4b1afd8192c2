r"""The sweep-budget study (docs/results.md): one grid trained with several Gibbs sweep budgets.

For each budget N in ``--sweeps`` it runs ``benchmarks.table1 --preset=sweep_study
--override=num_sweeps=N --out=OUT/sweeps_N`` (dvae and dvae_sharp, 1-layer-lin / 1-layer-nonlin /
2-layer-nonlin, K = 5; finished runs are skipped, interrupted ones resume), then reports, per cell
and budget, the test NLL, its paired per-seed difference from the ``--reference_sweeps`` budget,
the sampler diagnostic's largest moment error over training (docs/training.md, "Reading the
sampler diagnostic"), the largest log Z drift removed at an evaluation, and the training speed.

  # The study (≈ 2 × 3 × 2 × 5 runs of 6,000 steps; the 40-sweep runs of the two 1-layer structs
  # are taken from the committed 6k grid instead of being rerun):
  python -m benchmarks.sweep_study --sweeps=1,2,4,10,40 --seeds=0,1 --num_steps=6000

  # Only the report, from the finished runs:
  python -m benchmarks.sweep_study --report_only

Outputs: ``OUT/sweeps_N/`` (table1's folders), ``OUT/sweep_study.md`` and ``OUT/sweep_study.json``.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys

from absl import app, flags

from benchmarks import table1

REPO = pathlib.Path(__file__).resolve().parent.parent
PRESET = "sweep_study"

_SWEEPS = flags.DEFINE_list("sweeps", ["1", "2", "4", "10", "40"], "Sweep budgets per step.")
_REFERENCE = flags.DEFINE_integer("reference_sweeps", 40, "Budget the others are compared with.")
_REFERENCE_JSON = flags.DEFINE_list(
  "reference_json",
  [str(REPO / "benchmarks" / "results" / "table1_cpu_6k" / "json")],
  "Folders of table1 JSONs of finished reference-budget runs (used instead of rerunning them).",
)
# table1's flags --configs, --structs, --ks, --seeds, --num_steps, --override, --out, --report_only
# (defined there) mean the same here; the study's defaults, where table1's differ:
DEFAULT_SEEDS = ("0", "1")
DEFAULT_NUM_STEPS = 6000
DEFAULT_OUT = REPO / "benchmarks" / "results" / "sweep_study"
# The evaluation of the committed 6k grid (docs/results.md), so that its 40-sweep runs pair with
# the study's: validation every 1,000 steps (so the diagnostic runs 6 times), test NLL with 4,000
# importance samples on the fixed 2,000-image subset. --override=KEY=VALUE replaces them.
STUDY_CONFIG = {"eval_every": "1000", "eval_iw_samples": "4000", "eval_num_examples": "2000"}


def seeds() -> list[str]:
  return table1._SEEDS.value if flags.FLAGS["seeds"].present else list(DEFAULT_SEEDS)


def num_steps() -> int:
  return table1._NUM_STEPS.value or DEFAULT_NUM_STEPS


def out_dir() -> pathlib.Path:
  return pathlib.Path(table1._OUT.value) if flags.FLAGS["out"].present else DEFAULT_OUT


def cells() -> list[tuple[str, str, int, int]]:
  configs, structs, ks = table1.PRESETS[PRESET]
  return [
    (c, s, int(k), int(seed))
    for c in (table1._CONFIGS.value or configs)
    for s in (table1._STRUCTS.value or structs)
    for k in (table1._KS.value or ks)
    for seed in seeds()
  ]


def budget_dir(out: pathlib.Path, sweeps: int) -> pathlib.Path:
  return out / f"sweeps_{sweeps}"


def study_overrides() -> dict[str, str]:
  """STUDY_CONFIG updated by the --override=KEY=VALUE flags."""
  return {**STUDY_CONFIG, **dict(o.split("=", 1) for o in table1._EXTRA.value)}


def _matches(record: dict, sweeps: int, num_steps: int) -> bool:
  """The record is a run of this budget, step count and study evaluation."""
  config = record["results"]["config"]
  wanted = {**study_overrides(), "num_sweeps": str(sweeps), "num_steps": str(num_steps)}
  return all(str(config.get(k)) == v for k, v in wanted.items())


def load_records(
  out: pathlib.Path, sweeps: int, num_steps: int, reference_dirs=()
) -> dict[tuple, dict]:
  """{cell: table1 record} of the finished runs of one budget: OUT/sweeps_N/json first, then the
  reference folders (only records whose config has this budget and step count)."""
  records = {}
  for cell in cells():
    name = table1.run_name(*cell)
    for folder in (budget_dir(out, sweeps) / "json", *map(pathlib.Path, reference_dirs)):
      path = folder / f"{name}.json"
      if path.exists():
        record = json.loads(path.read_text())
        if _matches(record, sweeps, num_steps):
          records[cell] = record
          break
  return records


def run_budget(out: pathlib.Path, sweeps: int, structs: list[str]) -> None:
  """``benchmarks.table1`` for one budget (a subprocess; its folder is OUT/sweeps_N)."""
  cmd = [
    sys.executable,
    "-m",
    "benchmarks.table1",
    f"--preset={PRESET}",
    f"--out={budget_dir(out, sweeps)}",
    f"--num_steps={num_steps()}",
    f"--seeds={','.join(seeds())}",
    f"--structs={','.join(structs)}",
    f"--override=num_sweeps={sweeps}",
  ]
  if table1._CONFIGS.value:
    cmd.append(f"--configs={','.join(table1._CONFIGS.value)}")
  if table1._KS.value:
    cmd.append(f"--ks={','.join(table1._KS.value)}")
  cmd += [f"--override={k}={v}" for k, v in study_overrides().items()]
  print(" ".join(cmd), flush=True)
  subprocess.run(cmd, cwd=REPO, check=True)


def _spread(values: list[float], sign: str = "") -> str:
  if not values:
    return "—"
  mean = f"{statistics.mean(values):{sign}.2f}"
  return mean if len(values) == 1 else f"{mean} ± {statistics.stdev(values):.2f}"


def summarize(by_budget: dict[int, dict[tuple, dict]], reference: int) -> list[dict]:
  """One row per (config, struct, K, budget): NLLs, paired differences from `reference`, the
  diagnostic's maximum, the largest |log Z drift| at an evaluation, steps per second."""
  rows = []
  groups = sorted({cell[:3] for records in by_budget.values() for cell in records})
  for group in groups:
    for sweeps in sorted(by_budget):
      records = {c[3]: r for c, r in by_budget[sweeps].items() if c[:3] == group}
      if not records:
        continue
      ref = {c[3]: r for c, r in by_budget.get(reference, {}).items() if c[:3] == group}
      nll = {s: r["results"]["test_nll"] for s, r in records.items()}
      diffs = [nll[s] - ref[s]["results"]["test_nll"] for s in sorted(nll) if s in ref]
      history = [r["results"].get("sampler_diagnostic") or {} for r in records.values()]
      max_error = [h["max_error"] for h in history if "max_error" in h]
      drift = [abs(d) for h in history for d in h.get("log_z_drift", [])]
      speed = [
        r["results"]["config"]["num_steps"] / r["results"]["train_seconds"]
        for r in records.values()
        if r["results"].get("train_seconds")
      ]
      rows.append(
        {
          "config": group[0],
          "struct": group[1],
          "k": group[2],
          "num_sweeps": sweeps,
          "seeds": sorted(nll),
          "test_nll": [nll[s] for s in sorted(nll)],
          "paired_difference": diffs,
          "max_sampler_error": max(max_error) if max_error else None,
          "max_eval_log_z_drift": max(drift) if drift else None,
          "steps_per_second": statistics.mean(speed) if speed else None,
        }
      )
  return rows


def report(rows: list[dict], reference: int) -> str:
  lines = [
    f"Sweep-budget study: test NLL (nats, mean ± std over seeds), paired per-seed difference from"
    f" {reference} sweeps (positive: the budget is worse), the sampler diagnostic's largest moment"
    " error over training (≈ 1 in equilibrium; docs/training.md), the largest |log Z drift|"
    " removed at an evaluation, and training steps/s (mean over seeds; machine load varies).",
    "",
    f"| config | struct | K | sweeps | test NLL | Δ vs {reference} (n) | max diag. error |"
    " max abs. drift | steps/s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]

  def fmt(value, spec=".2f"):
    return "—" if value is None else f"{value:{spec}}"

  for r in rows:
    diff = _spread(r["paired_difference"], sign="+")
    lines.append(
      f"| {r['config']} | {r['struct']} | {r['k']} | {r['num_sweeps']} | {_spread(r['test_nll'])}"
      f" | {diff} ({len(r['paired_difference'])}) | {fmt(r['max_sampler_error'])}"
      f" | {fmt(r['max_eval_log_z_drift'])} | {fmt(r['steps_per_second'], '.1f')} |"
    )
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  out = out_dir()
  out.mkdir(parents=True, exist_ok=True)
  budgets = [int(s) for s in _SWEEPS.value]
  reference_dirs = _REFERENCE_JSON.value or []
  if not table1._REPORT_ONLY.value:
    for sweeps in budgets:
      structs = sorted({c[1] for c in cells()})
      if sweeps == _REFERENCE.value:  # reuse finished reference runs
        done = load_records(out, sweeps, num_steps(), reference_dirs)
        structs = sorted({c[1] for c in cells() if c not in done})
      if structs:
        run_budget(out, sweeps, structs)
  by_budget = {
    sweeps: load_records(
      out, sweeps, num_steps(), reference_dirs if sweeps == _REFERENCE.value else ()
    )
    for sweeps in sorted(set(budgets) | {_REFERENCE.value})
  }
  rows = summarize(by_budget, _REFERENCE.value)
  text = report(rows, _REFERENCE.value)
  (out / "sweep_study.md").write_text(text)
  (out / "sweep_study.json").write_text(json.dumps(rows, indent=1))
  print(text)


if __name__ == "__main__":
  app.run(main)
