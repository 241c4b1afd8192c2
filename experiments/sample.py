r"""Fresh samples of a trained model's prior, decoded to images.

  python -m experiments.sample --workdir=runs/dvae_sharp --num=100 --out=samples.png \
      [--binary] [--npz=samples.npz] [--step=best|latest|N] [--seed=0] \
      [--population=1024] [--temperatures=1000] [--sweeps=1]

For an RBM prior the latents come from a new population-annealing run
(``samplers.pa_log_partition``: a population of ``--population`` replicas annealed from the uniform
distribution over ``--temperatures`` linearly spaced β with ``--sweeps`` block Gibbs sweeps each,
MATH.md §3), not from the training sampler's persistent population; ``--num`` of the equally
weighted final replicas are drawn without replacement. A factorial prior is sampled exactly. Each
z is decoded to the Bernoulli means of p(x|z), or to one binary draw x ~ p(x|z) with ``--binary``.

Writes a PNG grid (ink black on white) to ``--out`` and, with ``--npz``, ``z`` [num, latents]
uint8 and ``x`` [num, 784] (float32 means, or uint8 with ``--binary``). The workdir is only read.
"""

from __future__ import annotations

import math
import os
import pathlib
import sys

from absl import app, flags

from experiments import restore

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's folder (given to experiments.run).")
_STEP = flags.DEFINE_string(
  "step", "best", "Checkpoint: 'best' (best validation NLL), 'latest', or a step number."
)
_NUM = flags.DEFINE_integer("num", 100, "Number of samples.")
_OUT = flags.DEFINE_string("out", "samples.png", "PNG grid to write.")
_NPZ = flags.DEFINE_string("npz", None, "Optional .npz with z and x.")
_BINARY = flags.DEFINE_bool("binary", False, "Binary draws x ~ p(x|z) instead of the means.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the annealing and the draws.")
_POPULATION = flags.DEFINE_integer(
  "population", 1024, "PA replicas (at least --num; rounded up to a multiple of 16)."
)
_TEMPERATURES = flags.DEFINE_integer("temperatures", 1000, "PA temperatures from β = 0 to 1.")
_SWEEPS = flags.DEFINE_integer("sweeps", 1, "Block Gibbs sweeps per temperature.")
_COLS = flags.DEFINE_integer("cols", None, "Images per row of the grid (default ≈ √num).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset folder (default: the run's).")

PA_GROUPS = 16  # PA's independent sub-populations (they give log Z its standard error)


def prior_samples(key, prior, num: int, population: int, temperatures: int, sweeps: int):
  """``(z [num, latents] float32, message)``: fresh samples of ``prior`` (see the module doc)."""
  import jax
  import jax.numpy as jnp

  from dvae_jax import priors, samplers

  k_anneal, k_pick = jax.random.split(key)
  if isinstance(prior, priors.FactorialBernoulli):
    z = jax.random.bernoulli(k_anneal, jax.nn.sigmoid(prior.logits), (num, prior.logits.shape[0]))
    return z.astype(jnp.float32), "factorial prior: exact independent draws"
  replicas = PA_GROUPS * math.ceil(max(num, population) / PA_GROUPS)
  result = samplers.pa_log_partition(
    prior, k_anneal, num_replicas=replicas, num_temperatures=temperatures, num_sweeps=sweeps
  )
  pick = jax.random.choice(k_pick, replicas, (num,), replace=False)
  z = jnp.concatenate([result.z1, result.z2], axis=-1)[pick]
  message = (
    f"population annealing: {replicas} replicas, {temperatures} temperatures, {sweeps} sweep(s) "
    f"each; log Z = {float(result.log_z):.3f} ± {float(result.stderr):.3f}, "
    f"smallest ESS fraction {float(result.ess_min):.3f}; {num} replicas drawn"
  )
  return z.astype(jnp.float32), message


def check_flags() -> None:
  for flag, minimum in ((_NUM, 1), (_POPULATION, 1), (_TEMPERATURES, 2), (_SWEEPS, 1), (_COLS, 1)):
    restore.check_minimum(flag, minimum)
  if not _OUT.value.lower().endswith(".png"):
    raise restore.UsageError(f"invalid --out={_OUT.value!r}: must name a .png file")
  if _NPZ.value is not None and not _NPZ.value.endswith(".npz"):
    raise restore.UsageError(f"invalid --npz={_NPZ.value!r}: must name a .npz file")


def main(argv):
  restore.start_command(argv, _WORKDIR.value)
  import jax
  import numpy as np

  from dvae_jax import data as data_lib
  from experiments import images

  try:
    check_flags()
    overrides = {"data_dir": _DATA_DIR.value} if _DATA_DIR.value else {}
    run = restore.restore(_WORKDIR.value, _STEP.value, **overrides)
  except (restore.UsageError, restore.RestoreError, data_lib.DataNotFoundError) as err:
    sys.exit(f"error: {err}")
  params = run.state.params
  print(restore.describe(_WORKDIR.value, run), flush=True)
  key = jax.random.key(_SEED.value)
  z, message = prior_samples(
    jax.random.fold_in(key, 0),
    params["prior"],
    _NUM.value,
    _POPULATION.value,
    _TEMPERATURES.value,
    _SWEEPS.value,
  )
  print(message, flush=True)
  means = images.decode_means(run.experiment, params, run.state.batch_stats, z)
  if _BINARY.value:
    x = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 1), means), np.uint8)
  else:
    x = np.asarray(means, np.float32)
  cols = _COLS.value or max(1, round(math.sqrt(_NUM.value)))
  out = pathlib.Path(_OUT.value)
  images.save_png(out, images.tile(x, cols))
  print(f"wrote {out} ({_NUM.value} {'binary draws' if _BINARY.value else 'Bernoulli means'})")
  if _NPZ.value:
    path = pathlib.Path(_NPZ.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
      np.savez(f, z=np.asarray(z, np.uint8), x=x)
    os.replace(tmp, path)
    print(f"wrote {path} (z {tuple(z.shape)}, x {x.shape})")


if __name__ == "__main__":
  app.run(main)
