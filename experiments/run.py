r"""Trains and evaluates a discrete VAE: the project's one entry point.

  python -m experiments.run --config=dvae_sharp [--workdir=runs/dvae_sharp] \
      [--config.dataset=omniglot --config.struct=2-layer-nonlin --config.protocol=paper ...]

``--config`` names a file in ``experiments/configs/`` (or is a path to a config file); every key
of the config can be overridden with ``--config.KEY=VALUE``; ``--config.seeds=0,1,2,3`` trains the
runs of several seeds in one program, each in ``WORKDIR/seed_N/`` (``train.train_seeds``).
Multi-host: pass ``--coordinator_address``, ``--num_processes`` and ``--process_id`` on every host
(``jax.distributed.initialize``); only process 0 writes metrics, images and results.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import config_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  f"Config name ({', '.join(config_lib.CONFIG_NAMES)}) or path to a config file.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Output folder (metrics, checkpoints, images); default runs/<config name>. "
  "An existing workdir of an interrupted run is resumed.",
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset folder (see dvae_jax.data).")
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "Multi-host: host:port of process 0 (jax.distributed.initialize)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError(f"--config is required; one of {', '.join(config_lib.CONFIG_NAMES)}")
  if _COORDINATOR.value:
    import jax

    # CPU hosts (and tests with forced host devices) need a collectives backend; GPUs ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    config = config_lib.resolve_config(_CONFIG.value, data_dir=_DATA_DIR.value)
  except config_lib.ConfigError as err:
    sys.exit(f"error: {err}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; --verbosity=0 shows it
  from dvae_jax import data as data_lib
  from experiments import checkpointing, guards, preemption, train, workdir_lock

  workdir = _WORKDIR.value or f"runs/{_config_name()}"
  print(f"workdir: {workdir}", flush=True)
  # Failures that are the user's to fix get one message and exit code 1, never a traceback
  # (docs/reliability.md); a signal exits with preemption.EXIT_CODE after checkpointing.
  user_errors = (
    data_lib.DataNotFoundError,
    data_lib.DataFileError,
    guards.NonFiniteLossError,
    checkpointing.WorkdirConfigError,
    guards.DivergenceError,
    checkpointing.CheckpointRestoreError,
    checkpointing.CheckpointWriteError,
    workdir_lock.WorkdirBusyError,
    workdir_lock.WorkdirError,
  )
  try:
    with preemption.stop_on_signals():
      train.train_and_evaluate(config, workdir)
  except preemption.Preempted as stopped:
    print(str(stopped), file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_CODE)
  except user_errors as err:
    sys.exit(f"error: {err}")
  except OSError as err:  # a read or write of a workdir file failed (disk full, read-only, ...)
    if not (err.filename and os.path.abspath(err.filename).startswith(os.path.abspath(workdir))):
      raise
    sys.exit(
      f"error: {err}. The run stopped; what was written before (checkpoints, metrics) is intact. "
      "Fix the cause (free space, permissions) and run the same command to resume."
    )


def _config_name() -> str:
  for i, arg in enumerate(sys.argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].rsplit("/", 1)[-1].removesuffix(".py").split(":")[0]
    if arg == "--config" and i + 1 < len(sys.argv):
      return sys.argv[i + 1].rsplit("/", 1)[-1].removesuffix(".py")
  return "run"


def run() -> None:
  try:
    sys.argv = config_lib.expand_config_argv(sys.argv)
  except config_lib.ConfigError as err:
    sys.exit(f"error: {err}")
  app.run(main)


if __name__ == "__main__":
  run()
