r"""Where the training runner's time goes besides the jitted step: the host side of each step.

On one H200 the runner trained at 180–220 steps/s where train_speed's loop of the same jitted step
ran 320–765 (docs/gpu.md): on a launch-bound device the host's work per step is no
longer hidden behind the device's. This splits the difference, timing in alternation (``--block``
steps per call, median of ``--repeats``, so every variant sees the same load):

  step      the jitted train step on batches already on the device (train_speed's loop)
  +batch    and each step's batch built on the host and put on the device, as the runner does
            (``data.train_batch``, ``sharding.put_global``)
  +log Z    and the runner's log Z bookkeeping: at each ``log_every``-th step the step's metrics
            read back and the training log Z's fresh AIS (``sampler_monitor.TrainLogZ``), and, when
            ``log_z_refresh_every`` > 0, the tracker's refreshes (``sampler_monitor.LogZTracker``)

and then the runner itself (``train.train_and_evaluate`` for ``--runner_steps`` steps, evaluated
only at the end) from its own metrics: the median ``steps_per_second`` of its ``log_every`` blocks
after the first two (the first holds the compilation). ``runner ÷ step`` is the host's share.

  python -m benchmarks.runner_overhead [--struct=1-layer-lin] [--config=dvae_sharp] [--k=5]
    [--num_sweeps=10] [--out=benchmarks/results/runner_overhead.json]

The defaults are the GPU comparison's runs (the CPU protocol: batch 100, PA 1000 × 10 sweeps,
K = 5). Writes JSON and prints a Markdown table.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import tempfile

import jax
from absl import app, flags

from benchmarks import timing
from dvae_jax import data as data_lib
from experiments import (
  config_lib,
  metrics,
  sampler_monitor,
  sharding,
  train,
  train_loop,
  train_step,
)
from experiments import experiment as experiment_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


def _define_flags() -> None:
  """Flags, defined only when run as a program (other benchmarks imported beside it by the tests
  define flags of the same names)."""
  flags.DEFINE_string("config", "dvae_sharp", "Named config.")
  flags.DEFINE_string("struct", "1-layer-lin", "Struct.")
  flags.DEFINE_integer("k", 5, "Importance samples K.")
  flags.DEFINE_integer("num_sweeps", None, "Gibbs sweeps per step (default: the protocol's).")
  flags.DEFINE_multi_string("override", [], "Extra KEY=VALUE config overrides (tests: tiny sizes).")
  flags.DEFINE_integer(
    "block", 100, "Steps per timed call (a multiple of log_every and of log_z_refresh_every)."
  )
  flags.DEFINE_integer("repeats", 5, "Timed calls per variant (the median is reported).")
  flags.DEFINE_integer("runner_steps", 1000, "Steps of the runner's own run.")
  flags.DEFINE_string(
    "out", str(REPO / "benchmarks" / "results" / "runner_overhead.json"), "Output JSON."
  )


def make_config(name: str, struct: str, k: int, num_sweeps: int | None, overrides: list[str]):
  """The named config with the struct, K, sweep budget and ``KEY=VALUE`` overrides applied (each
  value parsed as the key's type)."""
  c = config_lib.load_config(name)
  c.struct, c.k = struct, k
  if num_sweeps is not None:
    c.num_sweeps = num_sweeps
  for o in overrides:
    key, value = o.split("=", 1)
    if key not in c:
      raise ValueError(f"unknown config key {key!r} in {o!r}; valid keys: {', '.join(sorted(c))}")
    kind = c.get_type(key)
    c[key] = (value.lower() in ("1", "true")) if kind is bool else kind(value)
  return c


def host_variants(config, block: int):
  """``(names, fns, compile_seconds)``: the step-only, +batch and +log Z loops as
  ``timing.interleaved_medians`` functions of the step index (one shared, donated state)."""
  experiment, state = experiment_lib.build(config)
  config = experiment.config
  for key in ("log_every", "log_z_refresh_every"):
    if config[key] and block % config[key]:
      raise ValueError(f"--block={block} must be a multiple of {key}={config[key]}")
  step = train_step.make_train_step(experiment)
  x_sharding = sharding.batch_sharded(experiment.mesh)

  def host_batch(i):
    batch = data_lib.train_batch(experiment.dataset, config.seed, i, config.batch_size)
    return sharding.put_global(batch, x_sharding)

  on_device = [host_batch(i) for i in range(8)]
  holder = {"state": state}
  root = jax.random.key(config.seed + 1)
  tracker = sampler_monitor.LogZTracker(experiment, root, 0, state)
  train_log_z = sampler_monitor.TrainLogZ(experiment, jax.random.fold_in(root, 1))
  quiet = metrics.MetricsWriter(tempfile.gettempdir(), enabled=False)

  def step_only(i):
    holder["state"], m = step(holder["state"], on_device[i % len(on_device)])
    return m["loss"]

  def with_batch(i):
    holder["state"], m = step(holder["state"], host_batch(i))
    return m["loss"]

  def with_log_z(i):  # the runner's order: step, refresh, then at a log step read back and anchor
    holder["state"], m = step(holder["state"], host_batch(i))
    holder["state"] = tracker.refresh(i + 1, holder["state"], False)
    if (i + 1) % config.log_every == 0:
      tracker.write(quiet)
      holder["state"], _ = train_log_z.anchor(i + 1, holder["state"], train_loop.metrics_row(m))
      if train_log_z.enabled:
        tracker.reseed(i + 1, holder["state"])
    return m["loss"]

  compile_s = timing.timed_first_call(step_only)
  for i, fn in enumerate((with_batch, with_log_z)):
    jax.block_until_ready(fn(config.log_every - 1 if i else 0))  # compiles the AIS, the tracker
  return ["step", "+batch", "+log Z"], [step_only, with_batch, with_log_z], compile_s


def runner_config(config, num_steps: int):
  """The copy of ``config`` that the runner row trains: ``num_steps`` steps, evaluated and
  checkpointed once at the end, with that one (untimed) evaluation kept small."""
  c = config.copy_and_resolve_references()
  c.num_steps = c.eval_every = c.checkpoint_every = num_steps
  c.eval_num_examples, c.val_iw_samples, c.eval_iw_samples = 100, 10, 10
  c.ais_num_chains, c.ais_num_temperatures = 64, 100
  c.sampler_diagnostic_replicas, c.sampler_diagnostic_temperatures = 64, 10
  return c


def runner_seconds_per_step(config, num_steps: int, workdir: pathlib.Path) -> float:
  """Median seconds per step of the runner's ``log_every`` blocks after the first two (with
  ``config.seeds``, per step of the program that trains them all) in a run of
  ``runner_config(config, num_steps)``."""
  c = runner_config(config, num_steps)
  train.train_and_evaluate(c, workdir)
  seeds = config_lib.seed_list(c)  # several seeds in one program: each logs the program's rate
  logged = train.seed_workdir(workdir, seeds[0]) if seeds else workdir
  rates = [
    row["steps_per_second"] for row in metrics.read_metrics(logged) if "steps_per_second" in row
  ]
  if len(rates) < 3:
    raise ValueError(f"--runner_steps={num_steps} gives {len(rates)} log blocks; need >= 3")
  return 1.0 / statistics.median(rates[2:])


def main(argv):
  del argv
  f = flags.FLAGS
  config = make_config(f.config, f.struct, f.k, f.num_sweeps, f.override)
  names, fns, compile_s = host_variants(config, f.block)
  seconds = timing.interleaved_medians(fns, f.block, f.repeats)
  with tempfile.TemporaryDirectory() as tmp:
    seconds.append(runner_seconds_per_step(config, f.runner_steps, pathlib.Path(tmp) / "run"))
  names.append("runner")
  resolved = config_lib.resolve_config(config)
  record = {
    "device": f"{jax.devices()[0].platform}:{jax.devices()[0].id}",
    "device_count": jax.device_count(),
    "config": f.config,
    "struct": f.struct,
    "k": f.k,
    "batch_size": resolved.batch_size,
    "num_prior_samples": resolved.num_prior_samples,
    "num_sweeps": resolved.num_sweeps,
    "log_z_refresh_every": resolved.log_z_refresh_every,
    "log_every": resolved.log_every,
    # The steps per dispatch of the run timed in the "runner" row (0 resolves from its periods).
    "steps_per_dispatch": config_lib.resolve_config(
      runner_config(config, f.runner_steps)
    ).steps_per_dispatch,
    "train_ais_num_chains": resolved.train_ais_num_chains,
    "train_ais_num_temperatures": resolved.train_ais_num_temperatures,
    "block": f.block,
    "repeats": f.repeats,
    "runner_steps": f.runner_steps,
    "compile_seconds": compile_s,
    "rows": [
      {"variant": n, "ms_per_step": 1e3 * s, "steps_per_second": 1.0 / s, "vs_step": s / seconds[0]}
      for n, s in zip(names, seconds, strict=True)
    ],
  }
  out = pathlib.Path(f.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(record, indent=1))
  tmp.replace(out)
  print(
    f"{record['device']} × {record['device_count']}, {f.config}, {f.struct}, K = {f.k}, batch "
    f"{record['batch_size']}, PA {record['num_prior_samples']} × {record['num_sweeps']} sweeps"
  )
  print("| variant | ms/step | steps/s | ÷ step |\n|---|---:|---:|---:|")
  for r in record["rows"]:
    print(
      f"| {r['variant']} | {r['ms_per_step']:.2f} | {r['steps_per_second']:.1f} | "
      f"{r['vs_step']:.2f} |"
    )


if __name__ == "__main__":
  _define_flags()
  app.run(main)
