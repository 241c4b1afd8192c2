r"""Data-parallel training speed: the prior sampler's chains split over the devices vs replicated.

For each device count: steps/s of the runner's jitted train step (``dvae_sharp``, batch 100, PA
with 1000 samples × 40 sweeps) with the state laid out as the runner does it
(``experiment.state_shardings``: the sampler's chains split over the devices) and, in the same
process and timed in alternation, with every leaf replicated (each device samples the whole
population). Each device count runs in its own process; on the CPU the devices are forced host
devices (``--xla_force_host_platform_device_count``), so on a machine with C cores they share
those C cores, and each step is waited for, as the runner does there (XLA's CPU collectives
deadlocked with many steps in flight).

  python -m benchmarks.multi_device [--struct=1-layer-lin] [--cpu_devices=1,2]

Writes ``benchmarks/results/multi_device.json`` and prints a Markdown table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import timing
from dvae_jax import data as data_lib
from experiments import config_lib, sharding, train_step
from experiments import experiment as experiment_lib

_STRUCT = flags.DEFINE_string("struct", "1-layer-lin", "Struct.")
_METHOD = flags.DEFINE_string("method", "dvae_sharp", "Config name.")
_CPU_DEVICES = flags.DEFINE_list("cpu_devices", ["1", "2"], "Device counts (CPU: forced).")
_STEPS = flags.DEFINE_integer("steps", 100, "Timed steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Repeats (the median is reported).")
_WORKER = flags.DEFINE_bool("worker", False, "Internal: measure in this process.")
_OUT = flags.DEFINE_string(
  "out",
  str(pathlib.Path(__file__).resolve().parent / "results" / "multi_device.json"),
  "Output JSON.",
)

REPO = pathlib.Path(__file__).resolve().parent.parent


def measure() -> list[dict]:
  """Rows for the devices of this process: one per layout."""
  config = config_lib.load_config(_METHOD.value)
  config.struct = _STRUCT.value
  config.protocol = "paper"  # 1000 samples × 40 sweeps, batch 100
  experiment, state = experiment_lib.build(config)
  layouts = {"split": experiment}
  if jax.device_count() > 1:
    replicated = jax.tree.map(lambda _: sharding.replicated(experiment.mesh), state)
    layouts["replicated"] = dataclasses.replace(experiment, state_sharding=replicated)
  x_sharding = sharding.batch_sharded(experiment.mesh)
  batches = [
    sharding.put_global(data_lib.train_batch(experiment.dataset, 0, i, 100), x_sharding)
    for i in range(8)
  ]
  cpu_devices = jax.devices()[0].platform == "cpu" and jax.device_count() > 1
  fns, compile_seconds = [], []
  for exp in layouts.values():
    step = train_step.make_train_step(exp)
    # Each layout trains its own copy (the step donates its input).
    holder = {"state": jax.device_put(jax.tree.map(jnp.copy, state), exp.state_sharding)}

    def once(i, step=step, holder=holder):
      holder["state"], metrics = step(holder["state"], batches[i % len(batches)])
      # As the runner does on the CPU: with several steps in flight, XLA's CPU collectives can
      # deadlock (see experiments/train.py).
      return jax.block_until_ready(metrics["loss"]) if cpu_devices else metrics["loss"]

    compile_seconds.append(timing.timed_first_call(once))
    fns.append(once)
  seconds = timing.interleaved_medians(fns, _STEPS.value, _REPEATS.value)
  return [
    {
      "struct": _STRUCT.value,
      "method": _METHOD.value,
      "platform": jax.devices()[0].platform,
      "device_count": jax.device_count(),
      "chains": layout,
      "compile_seconds": c,
      "step_ms": 1e3 * s,
      "steps_per_second": 1.0 / s,
    }
    for layout, s, c in zip(layouts, seconds, compile_seconds, strict=True)
  ]


def measure_in_subprocess(num_devices: int) -> list[dict]:
  xla_flags = os.environ.get("XLA_FLAGS", "")
  env = {"XLA_FLAGS": f"{xla_flags} --xla_force_host_platform_device_count={num_devices}".strip()}
  args = ["--worker", f"--struct={_STRUCT.value}", f"--method={_METHOD.value}"]
  args += [f"--steps={_STEPS.value}", f"--repeats={_REPEATS.value}"]
  return timing.run_worker("benchmarks.multi_device", args, env)


def main(argv):
  del argv
  if _WORKER.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(measure()))
    return
  rows = [row for n in _CPU_DEVICES.value for row in measure_in_subprocess(int(n))]
  base = next(r["steps_per_second"] for r in rows if r["device_count"] == min(
    r["device_count"] for r in rows
  ))  # fmt: skip
  for r in rows:
    r["speedup_vs_fewest_devices"] = r["steps_per_second"] / base
  result = {
    "benchmark": "multi_device",
    "machine": platform.machine(),
    "cpu_count": os.cpu_count(),
    "rows": rows,
  }
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1))
  lines = [
    "| devices | sampler chains | steps/s | ms/step | speed-up vs fewest devices |",
    "|---:|---|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['device_count']} × {r['platform']} | {r['chains']} | {r['steps_per_second']:.1f} | "
      f"{r['step_ms']:.1f} | {r['speedup_vs_fewest_devices']:.2f}× |"
    )
  print(f"{_METHOD.value}, {_STRUCT.value}, batch 100, PA 1000×40, {os.cpu_count()} CPU cores")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
