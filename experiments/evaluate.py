r"""Re-scores a trained run: importance-weighted NLL, −ELBO and AIS log Z of one checkpoint.

  python -m experiments.evaluate --workdir=runs/dvae_sharp [--step=best|latest|N] \
      [--split=test|valid|train] [--iw_samples=5000] [--ais_chains=1024] \
      [--ais_temperatures=1000] [--num_examples=0] [--batch_size=100] [--seed=0]

Every size defaults to the run's own config (``eval_iw_samples``, ``ais_num_chains``,
``ais_num_temperatures``, ``eval_num_examples``, ``eval_batch_size``), so that with no flags it
repeats the run's final test evaluation (math.md §6) with fresh random numbers: the same examples
(``scoring.eval_subset``), the same estimators (``scoring.make_eval_fn``,
``scoring.eval_log_partition``), independent keys. Memory is bounded by one batch
(``--batch_size`` examples × at most 100 importance samples at a time), whatever ``--iw_samples``
and the split's size.

Prints the mean NLL with its standard error over the examples, −ELBO, log Z ± its AIS standard error
and the time taken, and writes them to ``WORKDIR/eval_<split>_<iw_samples>.json`` (atomically;
``--out`` names another file). Nothing else in the workdir is created, changed or deleted.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from absl import app, flags

from experiments import restore

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's folder (given to experiments.run).")
_STEP = flags.DEFINE_string(
  "step", "best", "Checkpoint: 'best' (best validation NLL), 'latest', or a step number."
)
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "valid", "train"], "Data split.")
_IW = flags.DEFINE_integer("iw_samples", None, "Importance samples per example (run's default).")
_AIS_CHAINS = flags.DEFINE_integer("ais_chains", None, "AIS chains for log Z (run's default).")
_AIS_TEMPS = flags.DEFINE_integer("ais_temperatures", None, "AIS temperatures (run's default).")
_NUM_EXAMPLES = flags.DEFINE_integer(
  "num_examples", None, "Examples (a fixed uniform subset; 0 = the whole split; run's default)."
)
_BATCH = flags.DEFINE_integer("batch_size", None, "Examples per batch (run's eval_batch_size).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the importance samples and AIS.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset folder (default: the run's).")
_OUT = flags.DEFINE_string("out", None, "Output JSON (default WORKDIR/eval_<split>_<iw>.json).")

# (flag, config key, smallest valid value)
_SIZES = (
  (_IW, "eval_iw_samples", 1),
  (_AIS_CHAINS, "ais_num_chains", 1),
  (_AIS_TEMPS, "ais_num_temperatures", 2),
  (_NUM_EXAMPLES, "eval_num_examples", 0),
  (_BATCH, "eval_batch_size", 1),
)


def check_sizes() -> dict:
  """The size flags as config overrides; refuses values below their minimum."""
  overrides = {}
  for flag, key, minimum in _SIZES:
    restore.check_minimum(flag, minimum)
    overrides[key] = flag.value
  return overrides


def evaluate_run(workdir, step: str, split: str, seed: int, overrides: dict, stream=None) -> dict:
  """Evaluates checkpoint ``step`` of the run in ``workdir``; returns the JSON record."""
  import jax

  from dvae_jax import data as data_lib
  from experiments import metrics as metrics_lib
  from experiments import scoring, sharding

  stream = stream or sys.stdout
  t_start = time.perf_counter()
  run = restore.restore(workdir, step, **overrides)
  experiment, state = run.experiment, run.state
  config = experiment.config
  sharding.check_divisible("batch_size", config.eval_batch_size, experiment.mesh)
  x = restore.split_examples(experiment.dataset, split, config.eval_num_examples)
  prior = state.params["prior"]
  print(restore.describe(workdir, run), file=stream, flush=True)
  key = jax.random.key(seed)
  t0 = time.perf_counter()
  log_z, log_z_err = scoring.eval_log_partition(experiment, prior, jax.random.fold_in(key, 0))
  log_z_seconds = time.perf_counter() - t0
  if not prior.needs_sampler:
    print("log Z = 0 (factorial prior: normalised)", file=stream, flush=True)
  else:
    print(
      f"log Z = {log_z:.3f} ± {log_z_err:.3f} (AIS, {config.ais_num_chains} chains, "
      f"{config.ais_num_temperatures} temperatures, {log_z_seconds:.1f} s)",
      file=stream,
      flush=True,
    )
  n = len(x)
  print(
    f"{split}: {n} examples × {config.eval_iw_samples} importance samples, batches of "
    f"{config.eval_batch_size}",
    file=stream,
    flush=True,
  )
  bar = metrics_lib.Progress(n, 0, stream=stream, unit="example")
  batch = config.eval_batch_size

  def progress(done):  # a log line at every tenth of the split (a live bar on a terminal)
    bar.update(done, log_line=done == n or done * 10 // n != (done - batch) * 10 // n)

  eval_fn = scoring.make_eval_fn(experiment, config.eval_iw_samples)
  t0 = time.perf_counter()
  scores = scoring.evaluate_split(
    experiment,
    eval_fn,
    state,
    x,
    log_z,
    jax.random.fold_in(key, 1),
    progress=progress,
  )
  eval_seconds = time.perf_counter() - t0
  seconds = time.perf_counter() - t_start
  bar.message(
    f"NLL = {scores['nll']:.3f} ± {scores['nll_stderr']:.3f} nats (standard error over the "
    f"{n} examples)\n−ELBO = {scores['neg_elbo']:.3f} nats\n"
    f"time: {seconds:.1f} s ({eval_seconds:.1f} s importance sampling, {log_z_seconds:.1f} s log Z)"
  )
  return metrics_lib.to_python(
    {
      "split": split,
      "checkpoint": run.which,
      "step": run.step,
      "nll": scores["nll"],
      "nll_stderr": scores["nll_stderr"],
      "neg_elbo": scores["neg_elbo"],
      "log_z": log_z,
      "log_z_stderr": log_z_err,
      "iw_samples": config.eval_iw_samples,
      "ais_chains": config.ais_num_chains,
      "ais_temperatures": config.ais_num_temperatures,
      "num_examples": n,
      "seed": seed,
      "seconds": seconds,
      "num_devices": jax.device_count(),
      **data_lib.provenance(experiment.dataset),
    }
  )


def main(argv):
  restore.start_command(argv, _WORKDIR.value)
  from dvae_jax import data as data_lib

  workdir = pathlib.Path(_WORKDIR.value)
  try:
    overrides = check_sizes()
    if _DATA_DIR.value:
      overrides["data_dir"] = _DATA_DIR.value
    record = evaluate_run(workdir, _STEP.value, _SPLIT.value, _SEED.value, overrides)
  except (restore.UsageError, restore.RestoreError, data_lib.DataNotFoundError) as err:
    sys.exit(f"error: {err}")
  out = pathlib.Path(_OUT.value or workdir / f"eval_{_SPLIT.value}_{record['iw_samples']}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.tmp")
  tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
  os.replace(tmp, out)
  print(f"wrote {out}", flush=True)


if __name__ == "__main__":
  app.run(main)
