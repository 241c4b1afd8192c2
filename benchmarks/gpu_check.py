r"""One command for whoever has a GPU: training speed per struct, then the longest paired
DVAE-vs-DVAE# comparison that fits the remaining time budget; or (``--campaign``) the next stretch
of the resumable 1M-step campaign (``benchmarks.gpu_campaign``).

  python -m benchmarks.gpu_check                 # ≈ 10 minutes in all (--budget_s=600)
  python -m benchmarks.gpu_check --campaign      # the campaign, in place (--budget_s=480)
  # the campaign on a machine that hands back only an output folder (then merge it; see
  # benchmarks/gpu_campaign.py):
  python -m benchmarks.gpu_check --campaign \
      --resume_from=benchmarks/results/gpu_campaign --out=FOLDER

1. ``benchmarks.train_speed`` on every struct (paper sampler settings: batch 100, PA 1000 × 40):
   steps/s, the sampler's share, device memory → ``OUT/train_speed.json``.
2. ``benchmarks.runner_overhead`` on the comparison's first struct and settings: the runner's
   steps/s beside its jitted step's alone, with the host's per-step work added piece by piece
   → ``OUT/runner_overhead.json``.
3. From the measured steps/s, the number of training steps at which the paired runs — dvae and
   dvae_sharp, K = 5, the ``--seeds`` (0–3, trained in one program per run), on each of
   ``--compare_structs`` (1-layer-lin and 1-layer-nonlin) —
   fit the rest of the budget (``--train_fraction`` of each run's share, counted at train_speed's
   rate, goes to training), rounded down to a multiple of 500 steps. They run through
   ``benchmarks.table1`` (resumable, same protocol as the CPU grids: evaluation every num_steps/5 on
   2,000 images, test NLL with 4,000 importance samples) → ``OUT/table1/``, one struct at a time, so
   that a run stopped by an outer time limit costs one pair, not one run of every pair.
4. ``OUT/gpu_check.json``: device, budget, the chosen steps, the wall time of each part, each
   comparison program's own training rate (``runner_steps_per_second``: its steps over its
   ``train_seconds``, compilation included) and its run-steps per second
   (``run_steps_per_second``: the seeds × the runner's logged ``steps_per_second``, the first block,
   with the compilation, left out; all its runs' training steps per second). It is written after the
   speed part and again after each struct's pair, so an outer time limit loses only what was
   running.

``--campaign`` skips all of the above (the campaign's programs measure their own rates: its
``campaign.json`` gives each program's ``run_steps_per_second`` at the paper's protocol) and runs
``benchmarks.gpu_campaign`` for the budget with the ``--configs``, ``--compare_structs`` (its
structs), ``--seeds`` and ``--override`` given here and its own flags (``--resume_from``,
``--work``, ``--max_out_files``, ...). ``--out`` is then the campaign's folder (default
``benchmarks/results/gpu_campaign``) and ``--budget_s`` defaults to 480.

Why ``--train_fraction`` is 0.3: on the H200 (benchmarks/results/gpu/) a 12,000-step run of the
CPU protocol took 94–114 s, of which 54–67 s training at 180–220 steps/s where train_speed's loop
(40 sweeps, batches already on the device) ran 320–765 steps/s; the rest was compilation and
evaluation. At 0.5 the fourth run outlasted a 520 s limit; 0.3 would have fitted all four.

Nothing in it is GPU-specific: on a CPU it runs the same way (the tests run it there with a tiny
budget), which is what makes it trustworthy to run unchanged on an accelerator held for a
short time.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from absl import app, flags

from benchmarks import gpu_campaign

REPO = pathlib.Path(__file__).resolve().parent.parent
# The campaign's budget when --budget_s is not given: a stop that waits for an evaluation, and the
# packing, still end within a 10-minute slot.
CAMPAIGN_BUDGET_S = 480.0


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (train_speed and table1, which a test
  process may import too, define flags of the same names)."""
  flags.DEFINE_float("budget_s", 600.0, "Wall-clock budget of the whole check (seconds).")
  flags.DEFINE_string("out", str(REPO / "benchmarks" / "results" / "gpu"), "Output folder.")
  flags.DEFINE_list(
    "structs",
    ["1-layer-lin", "1-layer-nonlin", "2-layer-nonlin", "4-layer-nonlin"],
    "Structs timed by train_speed.",
  )
  flags.DEFINE_integer("speed_steps", 100, "train_speed: timed steps per repeat.")
  flags.DEFINE_integer("speed_repeats", 5, "train_speed: repeats.")
  flags.DEFINE_integer("overhead_block", 100, "runner_overhead: steps per timed call.")
  flags.DEFINE_integer("overhead_repeats", 5, "runner_overhead: repeats.")
  flags.DEFINE_integer("overhead_runner_steps", 1000, "runner_overhead: steps of the runner's run.")
  flags.DEFINE_list(
    "compare_structs", ["1-layer-lin", "1-layer-nonlin"], "Structs of the paired comparison."
  )
  flags.DEFINE_list("configs", ["dvae_sharp", "dvae"], "Configs compared (paired).")
  flags.DEFINE_list(
    "seeds",
    ["0", "1", "2", "3"],
    "Seeds of each comparison run (several: one program per run, all vmapped).",
  )
  flags.DEFINE_float(
    "train_fraction",
    0.3,
    "Share of each run's time budget spent training at train_speed's measured rate.",
  )
  flags.DEFINE_integer("min_steps", 500, "Fewest training steps of a comparison run.")
  flags.DEFINE_integer("eval_num_examples", 2000, "Evaluation images per split.")
  flags.DEFINE_integer("eval_iw_samples", 4000, "Importance samples of the test NLL.")
  flags.DEFINE_multi_string("override", [], "Extra KEY=VALUE for every comparison run.")
  flags.DEFINE_bool(
    "campaign", False, "Run the resumable 1M-step campaign (benchmarks.gpu_campaign) instead."
  )
  gpu_campaign.define_flags(shared=False)


def _run(module: str, args: list[str], forward_signals: bool = False) -> float:
  """Runs ``python -m module *args`` from the repository root; returns its wall seconds. With
  ``forward_signals``, SIGTERM and SIGINT received meanwhile are passed on to it (which then stops
  in its own way) and its end is awaited."""
  t0 = time.perf_counter()
  print("+ python -m", module, " ".join(args), flush=True)
  proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO)
  previous = {}
  if forward_signals:
    for signum in (signal.SIGTERM, signal.SIGINT):
      previous[signum] = signal.signal(signum, lambda n, _: proc.send_signal(n))
  try:
    code = proc.wait()
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  if code:
    raise subprocess.CalledProcessError(code, [module, *args])
  return time.perf_counter() - t0


def comparison_steps(
  steps_per_second: dict[str, float],
  seconds_left: float,
  *,
  configs: list[str],
  structs: list[str],
  train_fraction: float,
  min_steps: int,
  num_seeds: int = 1,
) -> int:
  """Training steps per run so that len(configs) × len(structs) runs of ``num_seeds`` seeds each
  fit ``seconds_left``.

  Every run gets an equal share of the time; ``train_fraction`` of it is spent training at the
  slowest compared struct's measured rate. A program of several seeds is counted as that many
  runs (a device with work to spare trains them in less: the check then ends early, never late).
  Rounded down to a multiple of 500 (of 100 below 500), never below ``min_steps``.
  """
  runs = len(configs) * len(structs) * num_seeds
  rate = min(steps_per_second[s] for s in structs)
  steps = int(train_fraction * seconds_left / runs * rate)
  unit = 500 if steps >= 500 else 100
  return max(min_steps, steps // unit * unit)


def _write_summary(out: pathlib.Path, summary: dict) -> None:
  tmp = out / "gpu_check.json.tmp"
  tmp.write_text(json.dumps(summary, indent=1))
  os.replace(tmp, out / "gpu_check.json")


def runner_rates(
  table1_out: pathlib.Path, configs: list[str], struct: str, seed: int = 0
) -> dict[str, float]:
  """Training steps per second of each finished comparison run of ``struct`` and ``seed`` (its own
  ``train_seconds``: compilation of the train step and of the training log Z's AIS included; the
  seeds of one program share its training time)."""
  rates = {}
  for config in configs:
    path = table1_out / "json" / f"{config}__{struct}__k5__s{seed}.json"
    if path.exists():
      results = json.loads(path.read_text())["results"]
      rates[config] = results["config"]["num_steps"] / results["train_seconds"]
  return rates


def run_rates(
  table1_out: pathlib.Path, configs: list[str], struct: str, seeds: list[int]
) -> dict[str, float]:
  """Run-steps per second of each comparison program of ``struct``: the seeds × the median of the
  runner's logged ``steps_per_second`` (its first block, with the compilation, left out), read from
  the first seed's metrics (every seed of a program logs the program's rate)."""
  rates = {}
  for config in configs:
    path = table1_out / "runs" / f"{config}__{struct}__k5__s{seeds[0]}" / "metrics.jsonl"
    if path.exists():
      rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
      rate = gpu_campaign.steady_rate(rows, 0, max((row["step"] for row in rows), default=0))
      if rate is not None:
        rates[config] = len(seeds) * rate
  return rates


def campaign(f, budget_s: float) -> None:
  """``benchmarks.gpu_campaign`` with this command's settings, for ``budget_s`` seconds."""
  out = f.out if f["out"].present else str(REPO / "benchmarks" / "results" / "gpu_campaign")
  args = [
    f"--budget_s={budget_s}",
    f"--out={out}",
    f"--configs={','.join(f.configs)}",
    f"--structs={','.join(f.compare_structs)}",
    f"--seeds={','.join(f.seeds)}",
    *[f"--override={o}" for o in f.override],
    *gpu_campaign.forwarded_args(f),
  ]
  _run("benchmarks.gpu_campaign", args, forward_signals=True)


def main(argv):
  del argv
  f = flags.FLAGS
  start = time.perf_counter()
  if f.campaign:  # its own default budget unless one is given
    campaign(f, f.budget_s if f["budget_s"].present else CAMPAIGN_BUDGET_S)
    return
  out = pathlib.Path(f.out)
  out.mkdir(parents=True, exist_ok=True)
  speed_structs = list(dict.fromkeys(f.structs + f.compare_structs))
  speed_wall = _run(
    "benchmarks.train_speed",
    [
      f"--structs={','.join(speed_structs)}",
      f"--steps={f.speed_steps}",
      f"--repeats={f.speed_repeats}",
      f"--out={out / 'train_speed.json'}",
    ],
  )
  speed = json.loads((out / "train_speed.json").read_text())
  rates = {r["struct"]: r["steps_per_second"] for r in speed["rows"]}
  overhead_wall = _run(
    "benchmarks.runner_overhead",
    [
      f"--struct={f.compare_structs[0]}",
      f"--config={f.configs[0]}",
      "--k=5",
      f"--block={f.overhead_block}",
      f"--repeats={f.overhead_repeats}",
      f"--runner_steps={f.overhead_runner_steps}",
      f"--out={out / 'runner_overhead.json'}",
    ]
    + [f"--override={o}" for o in f.override],
  )
  overhead = json.loads((out / "runner_overhead.json").read_text())
  steps = comparison_steps(
    rates,
    f.budget_s - (time.perf_counter() - start),
    configs=f.configs,
    structs=f.compare_structs,
    train_fraction=f.train_fraction,
    min_steps=f.min_steps,
    num_seeds=len(f.seeds),
  )
  summary = {
    "device": speed["device"],
    "device_count": speed["device_count"],
    "budget_s": f.budget_s,
    "train_fraction": f.train_fraction,
    "train_speed_wall_s": speed_wall,
    "steps_per_second": rates,
    "runner_overhead_wall_s": overhead_wall,
    "runner_overhead": {r["variant"]: r["steps_per_second"] for r in overhead["rows"]},
    "comparison_steps": steps,
    "comparison_wall_s": {},
    "seeds": [int(s) for s in f.seeds],
    "runner_steps_per_second": {},
    "run_steps_per_second": {},
  }
  _write_summary(out, summary)
  for struct in f.compare_structs:
    table1 = [
      "--preset=cpu_mnist",
      f"--configs={','.join(f.configs)}",
      f"--structs={struct}",
      "--ks=5",
      f"--seeds={','.join(f.seeds)}",
      f"--num_steps={steps}",
      f"--out={out / 'table1'}",
      f"--override=eval_every={max(1, steps // 5)}",
      f"--override=eval_num_examples={f.eval_num_examples}",
      f"--override=eval_iw_samples={f.eval_iw_samples}",
    ] + [f"--override={o}" for o in f.override]
    summary["comparison_wall_s"][struct] = _run("benchmarks.table1", table1)
    summary["runner_steps_per_second"][struct] = runner_rates(
      out / "table1", f.configs, struct, int(f.seeds[0])
    )
    summary["run_steps_per_second"][struct] = run_rates(
      out / "table1", f.configs, struct, [int(s) for s in f.seeds]
    )
    summary["total_wall_s"] = time.perf_counter() - start
    _write_summary(out, summary)
  # One report over both structs (each table1 call above reported its own struct only).
  _run(
    "benchmarks.table1",
    [
      "--preset=cpu_mnist",
      "--report_only",
      f"--configs={','.join(f.configs)}",
      f"--structs={','.join(f.compare_structs)}",
      "--ks=5",
      f"--seeds={','.join(f.seeds)}",
      f"--num_steps={steps}",
      f"--out={out / 'table1'}",
    ],
  )
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
