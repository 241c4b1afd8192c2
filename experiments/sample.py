r"""Fresh samples of a trained model's prior, decoded to images.

  python -m experiments.sample --workdir=runs/dvae_sharp --num=100 --out=samples.png \
      [--binary] [--npz=samples.npz] [--step=best|latest|N] [--seed=0] \
      [--population=1024] [--temperatures=1000] [--sweeps=1] \
      [--dimod_sampler=NAME|module.path:Name [--dimod_kwargs=k=v,...] [--dimod_beta=1] \
       [--dimod_vartype=BINARY|SPIN] [--diagnostic_replicas=2048] [--diagnostic_temperatures=1000] \
       [--json=diagnostic.json]]

For an RBM or a graph (chimera / pegasus / zephyr) prior the latents come from a new population-
annealing run (``samplers.pa_log_partition``: a population of ``--population`` replicas annealed
from the uniform distribution over ``--temperatures`` linearly spaced β with ``--sweeps`` block
Gibbs sweeps each, math.md §3), not from the training sampler's persistent population; ``--num``
of the equally weighted final replicas are drawn without replacement. A factorial prior is sampled
exactly. Each z is decoded to the Bernoulli means of p(x|z), or to one binary draw x ~ p(x|z)
with ``--binary``.

With ``--dimod_sampler`` the latents come instead from any ``dimod.Sampler`` (Ocean's simulated
annealing, tabu, a QPU wrapper of the user's): the prior (``Prior.graph_machine``: an RBM as the
complete bipartite graph with nodes (z1; z2)) is exported by ``graphs.dimod_io.to_bqm`` at inverse
temperature ``--dimod_beta`` (``bqm.energy = β E(z)`` exactly, so a Boltzmann sampler at unit
temperature draws p_β), ``--dimod_kwargs`` go to ``.sample`` (``num_reads`` defaults to
``--num``, ``seed`` to ``--seed`` where the sampler takes them), and ``--num`` of the returned reads
are drawn without replacement and decoded. Then the reads are diagnosed as a population of the
trained prior at β = 1 (``samplers.diagnostics.population_moment_error``: their moment error
against two fresh population-annealing references, in units of the noise of as many independent
exact samples; ≈ 1 for Boltzmann samples, and the implied relative bias of the log-Z gradient they
would give), so that heuristic samplers and annealers can be judged before their samples are used.

Writes a PNG grid (ink black on white) to ``--out`` and, with ``--npz``, ``z`` [num, latents]
uint8, ``x`` [num, num_pixels] (float32 means, or uint8 with ``--binary``; 784 for 28 × 28 images)
and ``example_shape`` (``x.reshape(-1, *example_shape)`` gives the examples). A grid needs square
images (the run's data has examples of shape (s, s) or (s, s, 1)); for other data (vectors,
non-square images) no PNG is written and the arrays go to ``--npz`` (default: ``--out`` with the
suffix ``.npz``). With ``--dimod_sampler``
also ``reads`` [S, latents] uint8 (every read, node order) and the diagnostic's numbers
(``prior_sampling.diagnostic_values``, as ``diagnostic_<key>``), which ``--json`` writes too. The
workdir is only read.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys

from absl import app, flags

from experiments import prior_sampling as sampling
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
_DIMOD_SAMPLER = flags.DEFINE_string(
  "dimod_sampler",
  None,
  "Draw the latents with a dimod sampler instead of PA: a name of prior_sampling.DIMOD_SAMPLERS or "
  "module.path:Name of a dimod.Sampler class (constructed without arguments) or instance.",
)
_DIMOD_KWARGS = flags.DEFINE_string(
  "dimod_kwargs",
  None,
  "key=value,... passed to the sampler's .sample (values are Python literals, e.g. "
  "num_reads=1000,num_sweeps=100,beta_range=(0.1,1.0)).",
)
_DIMOD_BETA = flags.DEFINE_float(
  "dimod_beta", 1.0, "Inverse temperature β of the exported BQM: bqm.energy = β E(z)."
)
_DIMOD_VARTYPE = flags.DEFINE_enum(
  "dimod_vartype", "BINARY", ["BINARY", "SPIN"], "The BQM's variables: QUBO {0,1} or Ising ±1."
)
_DIAGNOSTIC_REPLICAS = flags.DEFINE_integer(
  "diagnostic_replicas", 2048, "Replicas of each PA reference of the diagnostic (0: no diagnostic)."
)
_DIAGNOSTIC_TEMPERATURES = flags.DEFINE_integer(
  "diagnostic_temperatures", 1000, "Temperatures of each PA reference of the diagnostic."
)
_JSON = flags.DEFINE_string("json", None, "Optional .json with the dimod reads' diagnostic.")


def check_flags() -> None:
  for flag, minimum in (
    (_NUM, 1),
    (_POPULATION, 1),
    (_TEMPERATURES, 2),
    (_SWEEPS, 1),
    (_COLS, 1),
    (_DIAGNOSTIC_REPLICAS, 0),
    (_DIAGNOSTIC_TEMPERATURES, 2),
  ):
    restore.check_minimum(flag, minimum)
  if not _OUT.value.lower().endswith(".png"):
    raise restore.UsageError(f"invalid --out={_OUT.value!r}: must name a .png file")
  if _NPZ.value is not None and not _NPZ.value.endswith(".npz"):
    raise restore.UsageError(f"invalid --npz={_NPZ.value!r}: must name a .npz file")
  if _JSON.value is not None and not _JSON.value.endswith(".json"):
    raise restore.UsageError(f"invalid --json={_JSON.value!r}: must name a .json file")
  if not (math.isfinite(_DIMOD_BETA.value) and _DIMOD_BETA.value > 0):
    raise restore.UsageError(f"invalid --dimod_beta={_DIMOD_BETA.value}: must be finite and > 0")
  if _DIMOD_SAMPLER.value is None:
    dimod_only = (
      _DIMOD_KWARGS,
      _DIMOD_BETA,
      _DIMOD_VARTYPE,
      _DIAGNOSTIC_REPLICAS,
      _DIAGNOSTIC_TEMPERATURES,
      _JSON,
    )
    for flag in dimod_only:
      if flags.FLAGS[flag.name].present:
        raise restore.UsageError(f"--{flag.name} needs --dimod_sampler")


def write_atomically(path: pathlib.Path, write) -> None:
  """``write(file)`` into a temporary sibling renamed to ``path`` when complete."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "wb") as f:
    write(f)
  os.replace(tmp, path)


def main(argv):
  restore.start_command(argv, _WORKDIR.value)
  import jax
  import jax.numpy as jnp
  import numpy as np

  from dvae_jax import data as data_lib
  from experiments import images

  try:
    check_flags()
    sampler = None
    if _DIMOD_SAMPLER.value:  # before restoring: a missing package or a bad name fails fast
      sampler = sampling.make_dimod_sampler(_DIMOD_SAMPLER.value)
      kwargs = sampling.parse_dimod_kwargs(_DIMOD_KWARGS.value)
      kwargs = sampling.dimod_sample_kwargs(sampler, kwargs, _NUM.value, _SEED.value)
    overrides = {"data_dir": _DATA_DIR.value} if _DATA_DIR.value else {}
    run = restore.restore(_WORKDIR.value, _STEP.value, **overrides)
    prior = run.state.params["prior"]
    machine = sampling.dimod_machine(prior) if sampler is not None else None
  except (
    restore.UsageError,
    restore.RestoreError,
    sampling.DimodConfigError,
    data_lib.DataNotFoundError,
  ) as err:
    sys.exit(f"error: {err}")
  params = run.state.params
  print(restore.describe(_WORKDIR.value, run), flush=True)
  key = jax.random.key(_SEED.value)
  arrays, record = {}, {}
  if sampler is None:
    z, message = sampling.prior_samples(
      jax.random.fold_in(key, 0),
      prior,
      _NUM.value,
      _POPULATION.value,
      _TEMPERATURES.value,
      _SWEEPS.value,
    )
    print(message, flush=True)
  else:
    beta, vartype = _DIMOD_BETA.value, _DIMOD_VARTYPE.value
    try:
      reads, seconds = sampling.dimod_prior_samples(
        sampler, machine, _NUM.value, beta, vartype, kwargs
      )
    except sampling.DimodSampleError as err:
      sys.exit(f"error: --dimod_sampler={_DIMOD_SAMPLER.value}: {err}")
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    print(
      f"dimod sampler {type(sampler).__name__}({shown}): {reads.shape[0]} reads of the prior's "
      f"{vartype} BQM at β = {beta:g} (bqm.energy = {beta:g}·E(z)) in {seconds:.1f} s; "
      f"{_NUM.value} reads drawn",
      flush=True,
    )
    pick = jax.random.choice(jax.random.fold_in(key, 0), reads.shape[0], (_NUM.value,), False)
    z = jnp.asarray(reads[np.asarray(pick)], jnp.float32)
    arrays["reads"] = reads
    record = {
      "workdir": str(_WORKDIR.value),
      "checkpoint": {"which": run.which, "step": run.step},
      "prior": run.experiment.config.prior,
      "dimod_sampler": _DIMOD_SAMPLER.value,
      "sampler_class": f"{type(sampler).__module__}.{type(sampler).__qualname__}",
      "dimod_kwargs": kwargs,
      "dimod_beta": beta,
      "dimod_vartype": vartype,
      "num_reads": int(reads.shape[0]),
      "sampler_seconds": seconds,
    }
    if _DIAGNOSTIC_REPLICAS.value:
      replicas = sampling.whole_groups(_DIAGNOSTIC_REPLICAS.value)
      temperatures = _DIAGNOSTIC_TEMPERATURES.value
      error = sampling.dimod_moment_error(
        jax.random.fold_in(key, 2), prior, reads, replicas, temperatures
      )
      print(
        sampling.describe_moment_error(error, prior, reads.shape[0], replicas, temperatures),
        flush=True,
      )
      values = sampling.diagnostic_values(error)
      arrays.update({f"diagnostic_{k}": np.float64(v) for k, v in values.items()})
      record["diagnostic"] = {
        "replicas": replicas,
        "temperatures": temperatures,
        **{k: v if math.isfinite(v) else None for k, v in values.items()},
      }
  means = images.decode_means(run.experiment, params, run.state.batch_stats, z)
  if _BINARY.value:
    x = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 1), means), np.uint8)
  else:
    x = np.asarray(means, np.float32)
  what = "binary draws" if _BINARY.value else "Bernoulli means"
  shape = run.experiment.dataset.example_shape
  out, npz = pathlib.Path(_OUT.value), _NPZ.value
  if images.image_side(shape) is not None:
    cols = _COLS.value or max(1, round(math.sqrt(_NUM.value)))
    images.save_png(out, images.tile(x.reshape(-1, *shape[:2]), cols))
    print(f"wrote {out} ({_NUM.value} {what})")
  else:
    npz = npz or str(out.with_suffix(".npz"))
    print(f"the run's examples (shape {shape}) are not square images: no grid; {what} in {npz}")
  if npz:
    path = pathlib.Path(npz)
    arrays["example_shape"] = np.asarray(shape, np.int64)
    write_atomically(path, lambda f: np.savez(f, z=np.asarray(z, np.uint8), x=x, **arrays))
    shapes = "".join(
      f", {k} {v.shape}" for k, v in arrays.items() if v.ndim and k != "example_shape"
    )
    print(f"wrote {path} (z {tuple(z.shape)}, x {x.shape}{shapes}; examples of shape {shape})")
  if _JSON.value:
    path = pathlib.Path(_JSON.value)
    text = json.dumps(record, indent=2, default=repr) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
