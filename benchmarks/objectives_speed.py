r"""Time of one jitted loss + gradient evaluation of every method (math.md §4), per struct.

The prior samples are fixed random states (the sampler's cost is measured in its own benchmark), so
the numbers are the objectives' and networks' cost alone: forward and backward through the
hierarchical encoder, the relaxed sampler (numerical inverse CDF for power, Gaussian, uniform+exp),
the decoder and the prior term. Compile time is reported separately.

  python -m benchmarks.objectives_speed --structs=1-layer-lin,2-layer-nonlin --batch=100 --k=1

Writes benchmarks/results/objectives_speed.json and prints a Markdown table.
"""

from __future__ import annotations

import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from dvae_jax import models, objectives, priors

_STRUCTS = flags.DEFINE_list("structs", ["1-layer-lin", "2-layer-nonlin"], "Structs to time.")
_METHODS = flags.DEFINE_list("methods", list(objectives.METHODS), "Methods to time.")
_BATCH = flags.DEFINE_integer("batch", 100, "Batch size.")
_K = flags.DEFINE_integer("k", 1, "Posterior samples per example.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed evaluations per configuration.")
_OUT = flags.DEFINE_string(
  "out",
  str(pathlib.Path(__file__).resolve().parent / "results" / "objectives_speed.json"),
  "Output JSON.",
)

BETAS = {
  "dvae": 5.0,
  "dvae_pp_exp": 12.0,
  "dvae_pp_power": 40.0,
  "dvae_sharp_gi": 40.0,
  "dvae_sharp_gauss": 40.0,
  "dvae_sharp_exp": 12.0,
  "dvae_sharp_unexp": 40.0,
  "dvae_sharp": 40.0,
}  # math.md §6 (1-layer-lin column)


def time_one(struct: str, name: str, batch: int, k: int, repeats: int) -> dict:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(batch, 784)) < 0.3, jnp.float32)
  net = models.DVAENet(
    struct, jnp.full((784,), 0.3), gaussian_integral=name == "dvae_sharp_gi", rngs=nnx.Rngs(0)
  )
  spec = net.spec
  prior = priors.init_prior("rbm", spec)
  samples = (
    jnp.asarray(rng.uniform(size=(1000, spec.num_latent)) < 0.5, jnp.float32),
    jnp.float32(spec.num_latent * np.log(2.0)),
  )
  method = objectives.get_method(name, BETAS[name])
  graphdef, params, batch_stats = nnx.split(net, nnx.Param, nnx.BatchStat)

  @jax.jit
  def loss_and_grad(params, prior, key):
    def f(params, prior):
      model = nnx.merge(graphdef, params, batch_stats, copy=True)
      return objectives.loss_fn(key, model, prior, samples, x, method, k, 1.0)

    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, prior)

  t0 = time.perf_counter()
  jax.block_until_ready(loss_and_grad(params, prior, jax.random.key(0)))
  compile_s = time.perf_counter() - t0
  times = []
  for r in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(loss_and_grad(params, prior, jax.random.key(r + 1)))
    times.append(time.perf_counter() - t0)
  return {
    "struct": struct,
    "method": name,
    "batch": batch,
    "k": k,
    "median_ms": 1e3 * float(np.median(times)),
    "min_ms": 1e3 * float(np.min(times)),
    "first_call_s": compile_s,
  }


def main(argv):
  del argv
  rows = [
    time_one(s, m, _BATCH.value, _K.value, _REPEATS.value)
    for s in _STRUCTS.value
    for m in _METHODS.value
  ]
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = {
    "device": str(jax.devices()[0]),
    "machine": platform.machine(),
    "jax": jax.__version__,
    "repeats": _REPEATS.value,
  }
  out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
  print(f"device: {meta['device']}, batch {_BATCH.value}, K = {_K.value}\n")
  print("| struct | method | loss+grad median (ms) | min (ms) | first call incl. compile (s) |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(
      f"| {r['struct']} | {r['method']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
      f"{r['first_call_s']:.1f} |"
    )


if __name__ == "__main__":
  app.run(main)
