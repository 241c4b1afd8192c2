"""Scoring a trained model (math.md §6): the importance-weighted NLL and −ELBO of a set of examples
and the evaluation's log Z, shared by the runner (``experiments.train``: validation and the final
test) and ``experiments.evaluate`` (re-scoring a checkpoint).

``experiment`` is an ``experiments.experiment.Experiment``; ``state`` anything with ``params`` and
``batch_stats`` (a ``TrainState``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dvae_jax import evaluation
from dvae_jax import samplers as samplers_lib
from experiments import sharding


def make_eval_fn(experiment, num_samples: int):
  """Jitted ``(params, batch_stats, log_z, x [B, 784], mask [B], key) -> (Σ nll, Σ −ELBO, Σ nll²)``
  of the discrete model with ``num_samples`` importance samples (math.md §6)."""
  graphdef = experiment.eval_graphdef
  chunk = min(num_samples, 100)

  def eval_fn(params, batch_stats, log_z, x, mask, key):
    model = nnx.merge(graphdef, params["model"], batch_stats)
    out = evaluation.evaluate(
      key, model, params["prior"], log_z, x, num_samples, sample_chunk=chunk
    )
    nll = out["nll"] * mask
    return jnp.sum(nll), jnp.sum(out["neg_elbo"] * mask), jnp.sum(nll * nll)

  replicated = sharding.replicated(experiment.mesh)
  batch = sharding.batch_sharded(experiment.mesh)
  return jax.jit(
    eval_fn,
    in_shardings=(replicated, replicated, replicated, batch, batch, replicated),
    out_shardings=replicated,
  )


def eval_log_partition(experiment, prior, key, progress=None) -> tuple[float, float]:
  """The evaluation's (log Z, its standard error): AIS for a prior with a sampler (math.md §3)
  with ``ais_num_chains`` × ``ais_num_temperatures``, exact (0, 0) for one without (the factorial
  prior), whose log-probabilities are normalised. ``progress(temperatures done)``, if given, is
  called as the AIS advances (in one process; with several, AIS stays one program that every
  process runs alike)."""
  config = experiment.config
  if not prior.needs_sampler:
    return 0.0, 0.0
  result = samplers_lib.ais_log_partition(
    key,
    prior,
    num_chains=config.ais_num_chains,
    num_temperatures=config.ais_num_temperatures,
    progress=progress if jax.process_count() == 1 else None,
  )
  return float(sharding.to_host(result.log_z)), float(sharding.to_host(result.stderr))


def evaluate_split(
  experiment,
  eval_fn,
  state,
  x_all: np.ndarray,
  log_z: float,
  key,
  progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
  """Mean NLL and −ELBO (nats) over the examples ``x_all`` [n, 784] (uint8 or float), and the
  standard error of the mean NLL over the examples (``nll_stderr``). Memory is bounded by one batch
  of ``eval_batch_size`` examples; ``progress(examples done)`` is called after each batch."""
  config, mesh = experiment.config, experiment.mesh
  batch_size = config.eval_batch_size
  n = x_all.shape[0]
  total_nll = total_elbo = total_sq = 0.0
  batch_sharding = sharding.batch_sharded(mesh)
  log_z = sharding.put_global(np.float32(log_z), sharding.replicated(mesh))
  for b, start in enumerate(range(0, n, batch_size)):
    x = np.zeros((batch_size, x_all.shape[1]), np.float32)
    mask = np.zeros((batch_size,), np.float32)
    chunk = x_all[start : start + batch_size]
    x[: len(chunk)], mask[: len(chunk)] = chunk, 1.0
    nll, elbo, nll_sq = eval_fn(
      state.params,
      state.batch_stats,
      log_z,
      sharding.put_global(x, batch_sharding),
      sharding.put_global(mask, batch_sharding),
      jax.random.fold_in(key, b),
    )
    total_nll += float(sharding.to_host(nll))
    total_elbo += float(sharding.to_host(elbo))
    total_sq += float(sharding.to_host(nll_sq))
    if progress is not None:
      progress(min(start + batch_size, n))
  mean = total_nll / n
  variance = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
  return {"nll": mean, "neg_elbo": total_elbo / n, "nll_stderr": math.sqrt(variance / n)}


def eval_subset(x: np.ndarray, num: int) -> np.ndarray:
  """``num`` examples of a split drawn uniformly without replacement (all of them for 0).

  A fixed random subset, not the first ``num``: the binarized MNIST test split is ordered (its
  first 2000 images average 96.6 ink pixels against 103.9 over the split), and a prefix gave test
  NLLs ≈ 20 nats below the validation NLL. The subset depends on the split's size only, so every
  run (any seed, any method) is evaluated on the same images.
  """
  if num == 0 or num >= len(x):
    return x
  index = np.random.default_rng(len(x)).choice(len(x), size=num, replace=False)
  return x[np.sort(index)]
