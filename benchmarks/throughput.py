r"""Run-steps per second of the training runner with fused steps (``steps_per_dispatch`` = S) and
many seeds in one program (``seeds``), next to the jitted step alone and to separate processes.

For each struct, at the CPU protocol's sweep budget (``--protocol``; batch 100, PA 1000 samples):

  step       the jitted train step alone on batches already on the device (the runner's upper
             bound with S = 1; ``benchmarks.train_speed``'s loop)
  fused S    the jitted fused steps alone (``train_step.make_fused_steps``) on index slabs already
             on the device: S steps per launch
  runner S   the runner itself (``train.train_and_evaluate`` with ``steps_per_dispatch`` = S for
             ``--runner_steps`` steps, evaluated only at the end), from its own ``steps_per_second``
             rows (``runner_overhead.runner_seconds_per_step``): the host's work per dispatch and
             the logged steps' training AIS (``train_ais_num_chains``) included
  runner S × N seeds   the same with ``seeds`` = 0..N−1: N runs in one vmapped program
             (``--num_seeds``)
  N processes          N single runs (S = 1) in N processes at once, each on its own seed
             (``--processes``): the throughput of running seeds side by side instead

The step and the fused programs are timed in alternation (``--block`` steps per call, median of
``--repeats``) so they see the same load; the runs follow one another. ``÷ step`` is each row's
seconds per step over the step's: below 1, fusing saved launch and host time; the runner's excess
over its fused program is the host's work between dispatches. ``run_steps_per_second`` = steps/s
× runs (the runs' training steps per second, all runs together): the number that says how much
training a machine does.

  python -m benchmarks.throughput [--structs=1-layer-lin] [--sizes=1,10,100] [--num_seeds=1,2,4]
    [--processes=2] [--config=dvae_sharp] [--k=1] [--runner_steps=2000]
    [--out_dir=benchmarks/results/throughput]

Writes ``OUT_DIR/throughput_<platform>.json`` and ``.md`` (a Markdown table). Absolute numbers
depend on the machine's load: measure on idle cores.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import jax
import numpy as np
from absl import app, flags

from benchmarks import runner_overhead, timing, train_speed
from dvae_jax import data as data_lib
from dvae_jax.data import batching
from experiments import config_lib, sharding, train_step
from experiments import experiment as experiment_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


def _define_flags() -> None:
  """Flags, defined only when run as a program (other benchmarks imported beside it by the tests
  define flags of the same names)."""
  flags.DEFINE_list("structs", ["1-layer-lin"], "Structs.")
  flags.DEFINE_list("sizes", ["1", "10", "100"], "Steps per dispatch S to measure.")
  flags.DEFINE_list("num_seeds", ["1"], "Seeds per program N to measure (runner rows).")
  flags.DEFINE_list("processes", [], "Numbers of separate single-run processes to measure.")
  flags.DEFINE_string("config", "dvae_sharp", "Named config.")
  flags.DEFINE_integer("k", 1, "Importance samples K.")
  flags.DEFINE_string("protocol", "cpu", "Budget protocol (the sweep budget per struct).")
  flags.DEFINE_multi_string("override", [], "Extra KEY=VALUE config overrides (tests: tiny sizes).")
  flags.DEFINE_integer("block", 200, "Steps per timed call (a multiple of every size).")
  flags.DEFINE_integer("repeats", 5, "Timed calls per variant (the median is reported).")
  flags.DEFINE_integer(
    "runner_steps", 2000, "Steps of each runner run (a multiple of every size and of log_every)."
  )
  flags.DEFINE_string(
    "out_dir", str(REPO / "benchmarks" / "results" / "throughput"), "Output folder."
  )


def check_sizes(sizes: list[int], block: int, runner_steps: int, log_every: int) -> None:
  """Raises ValueError unless every S divides ``block``, ``runner_steps`` and ``log_every``."""
  for s in sizes:
    for name, value in (
      ("--block", block),
      ("--runner_steps", runner_steps),
      ("log_every", log_every),
    ):
      if s < 1 or value % s:
        raise ValueError(f"steps per dispatch {s} must be >= 1 and divide {name}={value}")


def device_variants(config, sizes: list[int], block: int):
  """``(names, fns, first_block_seconds)``: the step alone and the fused programs of each size as
  ``timing.interleaved_medians`` functions, each doing ``block`` steps per call (one shared,
  donated state; data and index slabs put on the device beforehand). ``first_block_seconds``:
  each function's first call, compilation included."""
  experiment, state = experiment_lib.build(config)
  config = experiment.config
  step = train_step.make_train_step(experiment)
  fused = train_step.make_fused_steps(experiment)
  train_x = train_step.prepare_train_x(experiment)
  x_sharding = sharding.batch_sharded(experiment.mesh)
  slab_sharding = train_step.slab_sharded(experiment.mesh)
  batches = [
    sharding.put_global(
      data_lib.train_batch(experiment.dataset, config.seed, i, config.batch_size), x_sharding
    )
    for i in range(8)
  ]
  num_examples = experiment.dataset.train.shape[0]
  slabs = {
    s: [
      sharding.put_global(
        batching.slab_indices(config.seed, i * s, s, config.batch_size, num_examples).astype(
          np.int32
        ),
        slab_sharding,
      )
      for i in range(block // s)
    ]
    for s in sizes
  }
  holder = {"state": state}

  def step_block(_):
    for i in range(block):
      holder["state"], m = step(holder["state"], batches[i % len(batches)])
    return m["loss"]

  def fused_block(s):
    def run(_):
      for idx in slabs[s]:
        holder["state"], m = fused(holder["state"], train_x, idx)
      return m["loss"]

    return run

  fns = [step_block] + [fused_block(s) for s in sizes]
  first_s = [timing.timed_first_call(fn) for fn in fns]
  return ["step"] + [f"fused {s}" for s in sizes], fns, first_s


def rows_from_seconds(
  names: list[str],
  seconds: list[float],
  first_s: list[float | None],
  runs: list[int] | None = None,
):
  """Rows of the table from seconds per step (the first is the step's, the reference), each
  variant's first block (None for the runs) and its number of runs trained at once (default 1):
  ``run_steps_per_second`` = runs / seconds per step."""
  runs = runs or [1] * len(names)
  return [
    {
      "variant": name,
      "seeds": n,
      "ms_per_step": 1e3 * s,
      "steps_per_second": 1.0 / s,
      "run_steps_per_second": n / s,
      "vs_step": s / seconds[0],
      "first_block_seconds": c,
    }
    for name, s, c, n in zip(names, seconds, first_s, runs, strict=True)
  ]


def _process_seconds_per_step(args) -> float:
  """``runner_overhead.runner_seconds_per_step`` in a process of its own (``processes_seconds``)."""
  config, num_steps, workdir = args
  return runner_overhead.runner_seconds_per_step(config, num_steps, pathlib.Path(workdir))


def processes_seconds(config, n: int, num_steps: int, tmp: pathlib.Path) -> list[float]:
  """Seconds per step of each of ``n`` single runs (seeds 0..n−1) trained at once, one process
  each (spawned: a fresh JAX per process)."""
  import multiprocessing

  jobs = []
  for seed in range(n):
    c = config.copy_and_resolve_references()
    c.seed, c.steps_per_dispatch = seed, 1
    jobs.append((c, num_steps, str(tmp / f"process_{seed}")))
  with multiprocessing.get_context("spawn").Pool(n) as pool:
    return pool.map(_process_seconds_per_step, jobs)


def measure(struct: str, f) -> dict:
  """The record of one struct: its settings and rows."""
  config = runner_overhead.make_config(f.config, struct, f.k, None, f.override)
  config.protocol = f.protocol
  sizes = [int(s) for s in f.sizes]
  resolved = config_lib.resolve_config(config)
  check_sizes(sizes, f.block, f.runner_steps, resolved.log_every)
  names, fns, first_s = device_variants(config, sizes, f.block)
  seconds = [s / f.block for s in timing.interleaved_medians(fns, 1, f.repeats)]
  runs = [1] * len(names)
  for n in [int(n) for n in f.num_seeds]:
    for s in sizes:
      c = config.copy_and_resolve_references()
      c.steps_per_dispatch = s
      if n > 1:
        c.seeds = ",".join(str(seed) for seed in range(n))
      with tempfile.TemporaryDirectory() as tmp:
        seconds.append(
          runner_overhead.runner_seconds_per_step(c, f.runner_steps, pathlib.Path(tmp) / "run")
        )
      names.append(f"runner {s}" + (f" × {n} seeds" if n > 1 else ""))
      first_s.append(None)
      runs.append(n)
  for n in [int(n) for n in f.processes]:
    with tempfile.TemporaryDirectory() as tmp:
      each = processes_seconds(config, n, f.runner_steps, pathlib.Path(tmp))
    # The row's seconds per step: one run-step of all n at the rate they reached together.
    seconds.append(n / sum(1.0 / s for s in each))
    names.append(f"{n} processes")
    first_s.append(None)
    runs.append(n)
  return {
    "struct": struct,
    "config": f.config,
    "k": f.k,
    "protocol": f.protocol,
    "batch_size": resolved.batch_size,
    "num_prior_samples": resolved.num_prior_samples,
    "num_sweeps": resolved.num_sweeps,
    "log_every": resolved.log_every,
    "train_ais_num_chains": resolved.train_ais_num_chains,
    "train_ais_num_temperatures": resolved.train_ais_num_temperatures,
    "block": f.block,
    "repeats": f.repeats,
    "runner_steps": f.runner_steps,
    "device_peak_mib": train_speed._device_peak_mib(),
    "rows": rows_from_seconds(names, seconds, first_s, runs),
  }


def markdown(records: list[dict], device: str) -> str:
  lines = [
    f"Steps/s on {device}; PA with the protocol's samples × sweeps, batch 100 (÷ step: seconds per"
    " step over the jitted step's; run-steps/s: the training steps of all runs together).",
    "",
    "| struct | K | samples × sweeps | variant | ms/step | steps/s | run-steps/s | ÷ step |",
    "|---|---:|---|---|---:|---:|---:|---:|",
  ]
  for rec in records:
    for r in rec["rows"]:
      lines.append(
        f"| {rec['struct']} | {rec['k']} | {rec['num_prior_samples']} × {rec['num_sweeps']} | "
        f"{r['variant']} | {r['ms_per_step']:.2f} | {r['steps_per_second']:.1f} | "
        f"{r['run_steps_per_second']:.1f} | {r['vs_step']:.2f} |"
      )
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  f = flags.FLAGS
  device = jax.devices()[0]
  records = [measure(struct, f) for struct in f.structs]
  record = {
    "device": f"{device.platform}:{device.device_kind}",
    "device_count": jax.device_count(),
    "records": records,
  }
  out_dir = pathlib.Path(f.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  stem = out_dir / f"throughput_{device.platform}"
  tmp = stem.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(record, indent=1))
  tmp.replace(stem.with_suffix(".json"))
  table = markdown(records, record["device"])
  stem.with_suffix(".md").write_text(table)
  print(table)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
