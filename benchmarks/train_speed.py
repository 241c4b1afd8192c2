r"""Training speed per struct with the paper's sampler settings, and where the time goes.

For each struct: steps/s of the runner's jitted train step (batch 100, PA with 1000 samples × 40
sweeps, math.md §6), the time of the prior-sampler step alone (the same jitted ``sampler.step``),
hence the share of the step spent sampling (the two timed in alternation, so under the same load);
the peak resident memory of a process that measures that struct alone (each struct runs in its own
interpreter unless ``--noisolate``) and, on accelerators, the device's peak memory in use; and the
estimated wall time of the full 1M-step protocol on the machine measured (training steps only).

  python -m benchmarks.train_speed [--structs=1-layer-lin,2-layer-nonlin] [--method=dvae_sharp]
  # Sweep budgets per step, each struct's budgets timed in alternation (so their ratio is measured
  # under one load):
  python -m benchmarks.train_speed --sweeps=40,4 --out=benchmarks/results/train_speed_sweeps.json

Each row also gives ``with_tracker_steps_per_second``: the step plus the log Z tracker's amortised
cost (docs/math.md §3.6): its jitted refresh (the runner's) is timed in the same
alternation, one refresh every ``log_z_refresh_every`` calls, and its seconds per refresh divided
by ``log_z_refresh_every`` (``tracker_ms_per_step``). (It is measured, not estimated from the
sampler's time per replica-sweep, which is right on a CPU but not on a launch-bound GPU.) With
several ``--sweeps``, ``speedup`` and ``with_tracker_speedup`` are over the first budget's.
``with_log_z_steps_per_second`` (and ``with_log_z_speedup``) adds the training log Z's fresh AIS
(``sampler_monitor.TrainLogZ``: ``train_ais_num_chains`` × ``train_ais_num_temperatures`` once
every ``log_every`` steps, timed in the same alternation; ``train_ais_ms_per_step``): the cost of
the runner's log Z bookkeeping as configured (the tracker is off when ``log_z_refresh_every`` = 0).

Writes ``benchmarks/results/train_speed.json`` and prints a Markdown table. Ratios (sampling share)
are measured in one run; absolute numbers depend on the machine's load.
"""

from __future__ import annotations

import json
import pathlib
import platform
import resource

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import timing
from dvae_jax import data as data_lib
from experiments import config_lib, sampler_monitor, sharding, train_step
from experiments import experiment as experiment_lib


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (benchmarks.table1, which a test
  process may import too, defines flags of the same names)."""
  flags.DEFINE_list(
    "structs", ["1-layer-lin", "1-layer-nonlin", "2-layer-nonlin", "4-layer-nonlin"], "Structs."
  )
  flags.DEFINE_string("method", "dvae_sharp", "Config name.")
  flags.DEFINE_list("sweeps", ["40"], "Gibbs sweeps per step (the first is the baseline).")
  flags.DEFINE_integer(
    "log_z_refresh_every", None, "The log Z tracker's period (default: the config's; 0: off)."
  )
  flags.DEFINE_integer("steps", 100, "Timed steps per repeat.")
  flags.DEFINE_integer("repeats", 5, "Repeats (the median is reported).")
  flags.DEFINE_bool(
    "isolate", True, "Measure each struct in its own process, so peak RSS is that struct's alone."
  )
  flags.DEFINE_string(
    "out",
    str(pathlib.Path(__file__).resolve().parent / "results" / "train_speed.json"),
    "Output JSON.",
  )


PAPER_STEPS = 1_000_000


def _device_peak_mib() -> float | None:
  """Peak memory in use on the first device (accelerators report it; the CPU does not: None)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


def _timed_budget(struct: str, num_sweeps: int):
  """``(train_once, sample_once, track_once, ais_once, config, compile_seconds)`` of one struct and
  budget, warm. ``track_once(i)`` refreshes the log Z tracker when ``i % log_z_refresh_every == 0``
  and ``ais_once(i)`` runs the training log Z's AIS when ``i % log_every == 0`` (each ``None`` when
  off)."""
  config = config_lib.load_config(flags.FLAGS.method)
  config.struct = struct
  config.protocol = "paper"  # 1000 samples × 40 sweeps, batch 100
  config.num_sweeps = num_sweeps
  if flags.FLAGS.log_z_refresh_every is not None:
    config.log_z_refresh_every = flags.FLAGS.log_z_refresh_every
  experiment, state = experiment_lib.build(config)
  config = experiment.config
  step = train_step.make_train_step(experiment)
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

  compile_s = timing.timed_first_call(train_once)

  sampler_step = jax.jit(experiment.sampler.step)
  # Copies: the train step donates its state, and the two are timed in alternation.
  prior = jax.tree.map(jnp.copy, holder["state"].params["prior"])
  sampler_holder = {"state": jax.tree.map(jnp.copy, holder["state"].sampler_state)}
  # Split up front, so that the timed loop does no host-side key work.
  keys = list(jax.random.split(jax.random.key(0), flags.FLAGS.steps))

  def sample_once(i):
    sampler_holder["state"], info = sampler_step(keys[i], sampler_holder["state"], prior)
    return info.log_z

  jax.block_until_ready(sample_once(0))

  train_log_z = sampler_monitor.TrainLogZ(experiment, jax.random.key(2))
  ais_once = None
  if train_log_z.enabled:
    ais = {"log_z": jnp.zeros(())}

    def ais_once(i):
      if i % config.log_every == 0:  # the runner waits for it: it is on the host path
        ais["log_z"] = jax.block_until_ready(train_log_z.estimate(i, prior).log_z)
      return ais["log_z"]

    jax.block_until_ready(ais_once(0))

  tracking = sampler_monitor.make_log_z_tracking(experiment)
  if tracking is None:
    return train_once, sample_once, None, ais_once, config, compile_s
  seed_fn, refresh_fn = tracking
  # The runner's jitted refresh on its own copy of the state (it donates the state it is given).
  track = {"state": jax.tree.map(jnp.copy, holder["state"])}
  track["tracker"] = seed_fn(jax.random.key(1), track["state"])
  track["values"] = jnp.zeros(())

  def track_once(i):
    if i % config.log_z_refresh_every == 0:
      track["tracker"], track["state"], track["values"] = refresh_fn(
        keys[i], track["tracker"], track["state"]
      )
    return track["values"]

  jax.block_until_ready(track_once(0))
  return train_once, sample_once, track_once, ais_once, config, compile_s


def _no_tracker(i):
  """Stands in for ``track_once`` / ``ais_once`` when that is off (times nothing)."""
  del i
  return jnp.zeros(())


def measure(struct: str) -> list[dict]:
  budgets = [int(b) for b in flags.FLAGS.sweeps]
  timed = [_timed_budget(struct, b) for b in budgets]
  fns = [
    f
    for train_once, sample_once, track_once, ais_once, _, _ in timed
    for f in (train_once, sample_once, track_once or _no_tracker, ais_once or _no_tracker)
  ]
  medians = timing.interleaved_medians(fns, flags.FLAGS.steps, flags.FLAGS.repeats)
  rows = []
  for (_, _, track_once, ais_once, config, compile_s), step_s, sampler_s, track_s, ais_s in zip(
    timed, medians[0::4], medians[1::4], medians[2::4], medians[3::4], strict=True
  ):
    tracker_s = ais_per_step_s = 0.0
    if track_once is not None:
      tracker_s = timing.amortised_seconds_per_step(
        track_s, flags.FLAGS.steps, config.log_z_refresh_every
      )
    if ais_once is not None:
      ais_per_step_s = timing.amortised_seconds_per_step(ais_s, flags.FLAGS.steps, config.log_every)
    rows.append(
      {
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
        "tracker_ms_per_step": 1e3 * tracker_s,
        "with_tracker_steps_per_second": 1.0 / (step_s + tracker_s),
        "train_ais_ms_per_step": 1e3 * ais_per_step_s,
        "with_log_z_steps_per_second": 1.0 / (step_s + tracker_s + ais_per_step_s),
        "paper_protocol_train_hours": PAPER_STEPS * step_s / 3600,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mib": _device_peak_mib(),
      }
    )
  for row in rows:
    row["speedup"] = row["steps_per_second"] / rows[0]["steps_per_second"]
    for name in ("with_tracker", "with_log_z"):
      row[f"{name}_speedup"] = row[f"{name}_steps_per_second"] / rows[0][f"{name}_steps_per_second"]
  return rows


def measure_in_subprocess(struct: str) -> dict:
  """``measure(struct)`` in a fresh interpreter: ru_maxrss is per process and never goes down."""
  f = flags.FLAGS
  args = [f"--structs={struct}", f"--method={f.method}", f"--steps={f.steps}"]
  args += [f"--repeats={f.repeats}", f"--sweeps={','.join(f.sweeps)}", "--noisolate"]
  if flags.FLAGS.log_z_refresh_every is not None:
    args.append(f"--log_z_refresh_every={flags.FLAGS.log_z_refresh_every}")
  return timing.run_worker("benchmarks.train_speed", args)["rows"]


def main(argv):
  del argv
  structs = flags.FLAGS.structs
  if flags.FLAGS.isolate and len(structs) > 1:
    rows = [r for s in structs for r in measure_in_subprocess(s)]
  else:
    rows = [r for s in structs for r in measure(s)]
  result = {
    "benchmark": "train_speed",
    "device": str(jax.devices()[0]),
    "device_count": jax.device_count(),
    "jax": jax.__version__,
    "machine": platform.machine(),
    "rows": rows,
  }
  out = pathlib.Path(flags.FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1))
  device_peak = any(r["device_peak_mib"] is not None for r in rows)
  lines = [
    "| struct | sweeps | steps/s | speedup | with tracker: steps/s (speedup) | "
    + "with tracker and training AIS: steps/s (speedup) | ms/step | "
    + "sampler ms (share) | compile s | peak RSS MiB | "
    + ("device peak MiB | " if device_peak else "")
    + "1M steps (h) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    + ("---:|" if device_peak else "")
    + "---:|",
  ]
  for r in rows:
    device = f"{r['device_peak_mib']:.0f} | " if device_peak else ""
    lines.append(
      f"| {r['struct']} | {r['num_sweeps']} | {r['steps_per_second']:.1f} | {r['speedup']:.2f} | "
      f"{r['with_tracker_steps_per_second']:.1f} ({r['with_tracker_speedup']:.2f}) | "
      f"{r['with_log_z_steps_per_second']:.1f} ({r['with_log_z_speedup']:.2f}) | "
      f"{r['step_ms']:.1f} | "
      f"{r['sampler_ms']:.1f} ({100 * r['sampling_share']:.0f}%) | {r['compile_seconds']:.1f} | "
      f"{r['peak_rss_mib']:.0f} | {device}{r['paper_protocol_train_hours']:.1f} |"
    )
  print(
    f"{result['device']} × {result['device_count']}, {flags.FLAGS.method}, batch 100, PA 1000"
    " replicas"
  )
  print("\n".join(lines))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
