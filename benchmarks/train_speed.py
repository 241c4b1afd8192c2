r"""Training speed per struct with the paper's sampler settings, and where the time goes.

For each struct: steps/s of the runner's jitted train step (batch 100, PA with 1000 samples × 40
sweeps, MATH.md §6), the time of the prior-sampler step alone (the same jitted ``sampler.step``),
hence the share of the step spent sampling; the process's peak resident memory; and the estimated
wall time of the full 1M-step protocol on this machine (training only, and with 50 validations).

  python -m benchmarks.train_speed [--structs=1-layer-lin,2-layer-nonlin] [--method=dvae_sharp]

Writes ``benchmarks/results/train_speed.json`` and prints a Markdown table. Ratios (sampling share)
are measured in one run; absolute numbers depend on the machine's load.
"""

from __future__ import annotations

import json
import pathlib
import platform
import resource
import statistics
import time

import jax
from absl import app, flags

from dvae_jax import data as data_lib
from experiments import config_lib, sharding, train

_STRUCTS = flags.DEFINE_list(
  "structs", ["1-layer-lin", "1-layer-nonlin", "2-layer-nonlin", "4-layer-nonlin"], "Structs."
)
_METHOD = flags.DEFINE_string("method", "dvae_sharp", "Config name.")
_STEPS = flags.DEFINE_integer("steps", 40, "Timed steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repeats (the median is reported).")
_OUT = flags.DEFINE_string(
  "out",
  str(pathlib.Path(__file__).resolve().parent / "results" / "train_speed.json"),
  "Output JSON.",
)

PAPER_STEPS = 1_000_000


def _median_seconds(fn, steps: int, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for i in range(steps):
      out = fn(i)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / steps)
  return statistics.median(times)


def measure(struct: str) -> dict:
  config = config_lib.load_config(_METHOD.value)
  config.struct = struct
  config.protocol = "paper"  # 1000 samples × 40 sweeps, batch 100
  experiment, state = train.build(config)
  config = experiment.config
  step = train.make_train_step(experiment)
  x_sharding = sharding.batch_sharded(experiment.mesh)
  batches = [
    sharding.put_global(
      data_lib.train_batch(experiment.dataset, 0, i, config.batch_size), x_sharding
    )
    for i in range(8)
  ]
  holder = {"state": state}

  def train_once(i):
    holder["state"], metrics = step(holder["state"], batches[i % len(batches)])
    return metrics["loss"]

  t0 = time.perf_counter()
  jax.block_until_ready(train_once(0))
  compile_s = time.perf_counter() - t0
  step_s = _median_seconds(train_once, _STEPS.value, _REPEATS.value)

  sampler = experiment.sampler
  sampler_step = jax.jit(sampler.step)
  prior = holder["state"].params["prior"]
  sampler_holder = {"state": holder["state"].sampler_state}

  def sample_once(i):
    sampler_holder["state"], info = sampler_step(jax.random.key(i), sampler_holder["state"], prior)
    return info.log_z

  jax.block_until_ready(sample_once(0))
  sampler_s = _median_seconds(sample_once, _STEPS.value, _REPEATS.value)
  train_hours = PAPER_STEPS * step_s / 3600
  return {
    "struct": struct,
    "method": config.method,
    "batch_size": config.batch_size,
    "num_prior_samples": config.num_prior_samples,
    "num_sweeps": config.num_sweeps,
    "compile_seconds": compile_s,
    "step_ms": 1e3 * step_s,
    "steps_per_second": 1.0 / step_s,
    "sampler_ms": 1e3 * sampler_s,
    "sampling_share": sampler_s / step_s,
    "paper_protocol_train_hours": train_hours,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def main(argv):
  del argv
  rows = [measure(s) for s in _STRUCTS.value]
  result = {
    "benchmark": "train_speed",
    "device": str(jax.devices()[0]),
    "device_count": jax.device_count(),
    "jax": jax.__version__,
    "machine": platform.machine(),
    "rows": rows,
  }
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1))
  lines = [
    "| struct | steps/s | ms/step | sampler ms (share) | compile s | peak RSS MiB | 1M steps (h) |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['struct']} | {r['steps_per_second']:.1f} | {r['step_ms']:.1f} | "
      f"{r['sampler_ms']:.1f} ({100 * r['sampling_share']:.0f}%) | {r['compile_seconds']:.1f} | "
      f"{r['peak_rss_mib']:.0f} | {r['paper_protocol_train_hours']:.1f} |"
    )
  print(f"{result['device']} × {result['device_count']}, {_METHOD.value}, batch 100, PA 1000×40")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
