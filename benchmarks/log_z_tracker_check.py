r"""How far the training log Z is from a fresh estimate at each evaluation (docs/math.md §3.6), for
the log Z tracker and for the training AIS that replaced it (``sampler_monitor.TrainLogZ``).

Reads the ``metrics.jsonl`` of finished (or stopped) runs of ``experiments.run`` and, per run and
per evaluation step, reports the tracked training log Z's error against the evaluation's fresh
anneals for the sampler's own parameters (``val/sampler_log_z_drift``), the population's largest
moment error (``val/sampler_*_error``: docs/training.md, "Reading the sampler diagnostic"), and
the error the training sampler's running value would have had without the tracker since the
previous evaluation: each refresh i removes d_i = T_{i−1} + (own increments) − T_i, so
Σ d_i + the evaluation's error = Σ own increments − (fresh change) (T: tracker values). With
K = 1 the parameter trajectory does not depend on the tracker, so runs that differ only in the
tracker's settings are paired, and their untracked errors agree. With the training AIS, each
logged step's re-anchoring (``sampler/log_z_ais_drift``) plays the refresh's part, and each
evaluation also gets the logged value's own stderr (``terms/log_z_stderr``) and ``z``: the error
over the combined stderr of the logged value and the fresh anneals (≈ N(0, 1) if the stderr is
honest).

  # Three default runs that differ only in the tracker's sweeps (evaluations every 2,500 steps):
  for s in 40 100 200; do
    python -m experiments.run --config=dvae_sharp --config.eval_every=2500 \
      --config.log_z_tracker_sweeps=$s --workdir=runs/lz_check_t$s
  done
  python -m benchmarks.log_z_tracker_check --workdirs=runs/lz_check_t40,runs/lz_check_t100,\
runs/lz_check_t200 --out=benchmarks/results/log_z_tracker
  # The training AIS (the default) at 10 and 4 sweeps per step:
  for s in 10 4; do
    python -m experiments.run --config=dvae_sharp --config.eval_every=2500 \
      --config.num_sweeps=$s --workdir=runs/trainais_s$s
  done
  python -m benchmarks.log_z_tracker_check --workdirs=runs/trainais_s10,runs/trainais_s4 \
    --out=benchmarks/results/train_log_z

Writes OUT/log_z_tracker.json and OUT/log_z_tracker.md.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parent.parent
ERROR_KEYS = ("val/sampler_z1_error", "val/sampler_z2_error", "val/sampler_z1z2_error")
CONFIG_KEYS = (
  "method",
  "struct",
  "k",
  "seed",
  "num_steps",
  "num_sweeps",
  "eval_every",
  "log_z_refresh_every",
  "log_z_tracker_replicas",
  "log_z_tracker_sweeps",
  "log_z_tracker_target_ess",
  "train_ais_num_chains",
  "train_ais_num_temperatures",
)
DRIFT_KEYS = ("sampler/log_z_refresh_drift", "sampler/log_z_ais_drift")


def _define_flags() -> None:
  """Flags, defined only when run as a program (absl's flags are global)."""
  flags.DEFINE_list("workdirs", [], "Run folders (each with metrics.jsonl and config.json).")
  flags.DEFINE_string("out", str(REPO / "benchmarks" / "results" / "log_z_tracker"), "Output.")


def summarize_run(rows: list[dict], config: dict) -> dict:
  """One run's evaluations: ``{"config": {...}, "evaluations": [{step, log_z_error,
  max_moment_error, untracked_error, tracker_stderr, logged_stderr, z}, ...]}``.

  ``untracked_error`` is ``log_z_error`` plus the drifts removed (``DRIFT_KEYS``: tracker
  refreshes, training-AIS anchors) after the previous evaluation up to this one;
  ``tracker_stderr`` is the last refresh's reported stderr before it; ``logged_stderr`` the
  training AIS's ``terms/log_z_stderr`` logged at the evaluation's step (None without it) and
  ``z`` = log_z_error / √(logged_stderr² + the fresh anneals' stderr²).
  """
  evaluations, drift, stderr, logged = [], 0.0, None, {}
  for row in sorted(rows, key=lambda r: r["step"]):
    drift += sum(row.get(k, 0.0) for k in DRIFT_KEYS)
    stderr = row.get("sampler/log_z_refresh_stderr", stderr)
    if "terms/log_z_stderr" in row:
      logged[row["step"]] = row["terms/log_z_stderr"]
    if "val/sampler_log_z_drift" in row:
      missing = [k for k in ERROR_KEYS if k not in row]
      if missing:
        raise ValueError(f"step {row['step']}: an evaluation row without {missing}")
      logged_stderr, z = logged.get(row["step"]), None
      if logged_stderr is not None:
        reference = row.get("val/sampler_reference_log_z_stderr", 0.0)
        z = row["val/sampler_log_z_drift"] / (logged_stderr**2 + reference**2) ** 0.5
      evaluations.append(
        {
          "step": row["step"],
          "log_z_error": row["val/sampler_log_z_drift"],
          "max_moment_error": max(row[k] for k in ERROR_KEYS),
          "untracked_error": drift + row["val/sampler_log_z_drift"],
          "tracker_stderr": stderr,
          "logged_stderr": logged_stderr,
          "z": z,
        }
      )
      drift = 0.0
  return {"config": {k: config.get(k) for k in CONFIG_KEYS}, "evaluations": evaluations}


def read_run(workdir: pathlib.Path) -> dict:
  metrics = workdir / "metrics.jsonl"
  if not metrics.exists():
    raise FileNotFoundError(f"{metrics} not found: is {workdir} a run folder?")
  rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
  config = json.loads((workdir / "config.json").read_text())
  summary = summarize_run(rows, config)
  results = workdir / "results.json"
  if results.exists():
    summary["test_nll"] = json.loads(results.read_text()).get("test_nll")
  return summary


def markdown(runs: dict[str, dict]) -> str:
  lines = [
    "| run | sweeps | tracker sweeps | target ESS | step | log Z error | tracker stderr "
    "| training AIS stderr | z | untracked error | max moment error |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]

  def fmt(value, spec):
    return "—" if value is None else format(value, spec)

  for name, run in runs.items():
    c = run["config"]
    tracker_sweeps = c["log_z_tracker_sweeps"] if c.get("log_z_refresh_every") != 0 else "off"
    for e in run["evaluations"]:
      lines.append(
        f"| {name} | {fmt(c['num_sweeps'], 'd')} | {tracker_sweeps} "
        f"| {c['log_z_tracker_target_ess']} | {e['step']} | {e['log_z_error']:+.3f} "
        f"| {fmt(e['tracker_stderr'], '.3f')} | {fmt(e.get('logged_stderr'), '.3f')} "
        f"| {fmt(e.get('z'), '+.2f')} | {e['untracked_error']:+.2f} "
        f"| {e['max_moment_error']:.2f} |"
      )
  return "\n".join(lines) + "\n"


def main(argv) -> None:
  del argv
  out = pathlib.Path(flags.FLAGS.out)
  runs = {pathlib.Path(w).name: read_run(pathlib.Path(w)) for w in flags.FLAGS.workdirs}
  if not runs:
    raise app.UsageError("--workdirs names no run folder")
  out.mkdir(parents=True, exist_ok=True)
  (out / "log_z_tracker.json").write_text(json.dumps(runs, indent=1) + "\n")
  (out / "log_z_tracker.md").write_text(markdown(runs))
  print(markdown(runs))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
