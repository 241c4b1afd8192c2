r"""One command for whoever has a GPU: training speed per struct, then the longest paired
DVAE-vs-DVAE# comparison that fits the remaining time budget.

  python -m benchmarks.gpu_check                 # ≈ 10 minutes in all (--budget_s=600)

1. ``benchmarks.train_speed`` on every struct (paper sampler settings: batch 100, PA 1000 × 40):
   steps/s, the sampler's share, device memory → ``OUT/train_speed.json``.
2. From the measured steps/s, the number of training steps at which the paired runs — dvae and
   dvae_sharp, K = 5, seed 0, on each of ``--compare_structs`` (1-layer-lin and 1-layer-nonlin) —
   fit the rest of the budget (``--train_fraction`` of each run's share goes to training, the rest
   to start-up, compilation and evaluation), rounded down to a multiple of 500 steps. They run
   through ``benchmarks.table1`` (resumable, same protocol as the CPU grids: evaluation every
   num_steps/5 on 2,000 images, test NLL with 4,000 importance samples) → ``OUT/table1/``.
3. ``OUT/gpu_check.json``: device, budget, the chosen steps, the wall time of each part.

Nothing in it is GPU-specific: on a CPU it runs the same way (the tests run it there with a tiny
budget), which is what makes it trustworthy to run unchanged on a lent accelerator.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parent.parent

_BUDGET = flags.DEFINE_float("budget_s", 600.0, "Wall-clock budget of the whole check (seconds).")
_OUT = flags.DEFINE_string("out", str(REPO / "benchmarks" / "results" / "gpu"), "Output folder.")
_SPEED_STRUCTS = flags.DEFINE_list(
  "structs",
  ["1-layer-lin", "1-layer-nonlin", "2-layer-nonlin", "4-layer-nonlin"],
  "Structs timed by train_speed.",
)
_SPEED_STEPS = flags.DEFINE_integer("speed_steps", 100, "train_speed: timed steps per repeat.")
_SPEED_REPEATS = flags.DEFINE_integer("speed_repeats", 5, "train_speed: repeats.")
_COMPARE_STRUCTS = flags.DEFINE_list(
  "compare_structs", ["1-layer-lin", "1-layer-nonlin"], "Structs of the paired comparison."
)
_CONFIGS = flags.DEFINE_list("configs", ["dvae_sharp", "dvae"], "Configs compared (paired).")
_TRAIN_FRACTION = flags.DEFINE_float(
  "train_fraction", 0.6, "Share of each run's time budget spent in training steps."
)
_MIN_STEPS = flags.DEFINE_integer("min_steps", 500, "Fewest training steps of a comparison run.")
_EVAL_EXAMPLES = flags.DEFINE_integer("eval_num_examples", 2000, "Evaluation images per split.")
_EVAL_IW = flags.DEFINE_integer("eval_iw_samples", 4000, "Importance samples of the test NLL.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Extra KEY=VALUE for every comparison run.")


def _run(module: str, args: list[str]) -> float:
  """Runs ``python -m module *args`` from the repository root; returns its wall seconds."""
  t0 = time.perf_counter()
  print("+ python -m", module, " ".join(args), flush=True)
  subprocess.run([sys.executable, "-m", module, *args], check=True, cwd=REPO)
  return time.perf_counter() - t0


def comparison_steps(steps_per_second: dict[str, float], seconds_left: float) -> int:
  """Training steps per run so that len(configs) × len(structs) runs fit ``seconds_left``.

  Every run gets an equal share of the time; ``--train_fraction`` of it is spent training at the
  slowest compared struct's measured rate. Rounded down to a multiple of 500 (of 100 below 500),
  never below ``--min_steps``.
  """
  runs = len(_CONFIGS.value) * len(_COMPARE_STRUCTS.value)
  rate = min(steps_per_second[s] for s in _COMPARE_STRUCTS.value)
  steps = int(_TRAIN_FRACTION.value * seconds_left / runs * rate)
  unit = 500 if steps >= 500 else 100
  return max(_MIN_STEPS.value, steps // unit * unit)


def main(argv):
  del argv
  start = time.perf_counter()
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  speed_structs = list(dict.fromkeys(_SPEED_STRUCTS.value + _COMPARE_STRUCTS.value))
  speed_wall = _run(
    "benchmarks.train_speed",
    [
      f"--structs={','.join(speed_structs)}",
      f"--steps={_SPEED_STEPS.value}",
      f"--repeats={_SPEED_REPEATS.value}",
      f"--out={out / 'train_speed.json'}",
    ],
  )
  speed = json.loads((out / "train_speed.json").read_text())
  rates = {r["struct"]: r["steps_per_second"] for r in speed["rows"]}
  steps = comparison_steps(rates, _BUDGET.value - (time.perf_counter() - start))
  table1 = [
    "--preset=cpu_mnist",
    f"--configs={','.join(_CONFIGS.value)}",
    f"--structs={','.join(_COMPARE_STRUCTS.value)}",
    "--ks=5",
    "--seeds=0",
    f"--num_steps={steps}",
    f"--out={out / 'table1'}",
    f"--override=eval_every={max(1, steps // 5)}",
    f"--override=eval_num_examples={_EVAL_EXAMPLES.value}",
    f"--override=eval_iw_samples={_EVAL_IW.value}",
  ] + [f"--override={o}" for o in _OVERRIDE.value]
  compare_wall = _run("benchmarks.table1", table1)
  summary = {
    "device": speed["device"],
    "device_count": speed["device_count"],
    "budget_s": _BUDGET.value,
    "train_speed_wall_s": speed_wall,
    "comparison_steps": steps,
    "comparison_wall_s": compare_wall,
    "total_wall_s": time.perf_counter() - start,
    "steps_per_second": rates,
  }
  tmp = out / "gpu_check.json.tmp"
  tmp.write_text(json.dumps(summary, indent=1))
  os.replace(tmp, out / "gpu_check.json")
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  app.run(main)
