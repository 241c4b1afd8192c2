r"""Block Gibbs sweep throughput against the cost of its matmuls; PRNG choices; a NumPy reference.

  python -m benchmarks.sampler_speed            # ≈ 2 minutes on 2 CPU cores
  python -m benchmarks.sampler_speed --quick    # fewer repetitions, for a smoke run

For 1000 chains at 100×100 and 200×200 (float32) it times, per sweep:
  * `matmuls`: the two [S, n1]×[n1, n2] products of a sweep alone, in a jitted `lax.scan` (a
    threshold keeps the sweep-to-sweep dependence, otherwise XLA hoists the loop-invariant product);
  * `library`: `dvae_jax.samplers.gibbs.run` (both words of each threefry hash used, 24-bit
    integer compare) with threefry, rbg and unsafe_rbg keys;
  * alternatives for the Bernoulli draws: `jax.random.uniform < sigmoid` (default partitionable
    threefry), `jax.random.bernoulli`, logistic noise `log u − log(1−u) < logit`;
  * `rng only`: generating the sweep's S·(n1+n2) random words alone (where the other time goes);
  * `numpy`: a plain NumPy float32 sweep (rng.random + sigmoid + two matmuls).
and reports sweeps/s and the ratio matmul-time / sweep-time (1.0 = sampling for free).
Writes benchmarks/results/sampler_speed.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dvae_jax.priors import rbm
from dvae_jax.samplers import gibbs

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
NUM_CHAINS = 1000


def best_time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # compile + warm up
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def make_rbm(n):
  rng = np.random.default_rng(0)
  return rbm.RBM(
    jnp.asarray(rng.normal(0, 0.5, n), jnp.float32),
    jnp.asarray(rng.normal(0, 0.5, n), jnp.float32),
    jnp.asarray(rng.normal(0, 1.0 / np.sqrt(n), (n, n)), jnp.float32),
  )


def matmuls_only(m, z1, num_sweeps):
  def body(z1, _):
    z2 = (z1 @ m.w > 0).astype(z1.dtype)
    return (z2 @ m.w.T > 0).astype(z1.dtype), None

  return lax.scan(body, z1, None, length=num_sweeps)[0]


def alternative_sweeps(kind):
  """Sweeps whose Bernoulli draws use stock jax.random calls instead of the library's."""

  def draw(key, logits):
    if kind == "uniform<sigmoid":
      return (jax.random.uniform(key, logits.shape) < jax.nn.sigmoid(logits)).astype(logits.dtype)
    if kind == "jax.random.bernoulli":
      return jax.random.bernoulli(key, jax.nn.sigmoid(logits)).astype(logits.dtype)
    if kind == "logistic noise":
      u = jax.random.uniform(key, logits.shape, minval=jnp.finfo(logits.dtype).tiny)
      return (jnp.log(u) - jnp.log1p(-u) < logits).astype(logits.dtype)
    raise ValueError(kind)

  def run(key, m, z1, num_sweeps):
    def body(z1, k):
      k2, k1 = jax.random.split(k)
      z2 = draw(k2, m.b2 + z1 @ m.w)
      return draw(k1, m.b1 + z2 @ m.w.T), None

    return lax.scan(body, z1, jax.random.split(key, num_sweeps))[0]

  return run


def rng_only(key, z1, num_sweeps, n1, n2):
  def body(acc, k):
    k2, k1 = jax.random.split(k)
    b2 = gibbs.random_bits(k2, (z1.shape[0], n2))
    b1 = gibbs.random_bits(k1, (z1.shape[0], n1))
    return acc + (b1[:, :1] >> 31) + (b2[:, :1] >> 31), None

  acc = jnp.zeros((z1.shape[0], 1), jnp.uint32)
  return lax.scan(body, acc, jax.random.split(key, num_sweeps))[0]


def numpy_sweeps(m, z1, num_sweeps, rng):
  b1, b2, w = (np.asarray(x) for x in m)
  for _ in range(num_sweeps):
    z2 = rng.random((z1.shape[0], w.shape[1]), np.float32) < 1 / (1 + np.exp(-(b2 + z1 @ w)))
    z2 = z2.astype(np.float32)
    z1 = (rng.random(z1.shape, np.float32) < 1 / (1 + np.exp(-(b1 + z2 @ w.T)))).astype(np.float32)
  return z1


def bench_size(n, num_sweeps, rounds):
  """Times every variant once per round, interleaved, and keeps each one's best round.

  Interleaving matters on a shared machine: contention from other jobs then hits all variants
  alike instead of whichever happened to run during a busy spell.
  """
  m = make_rbm(n)
  z1 = gibbs.init(jax.random.key(0), m, NUM_CHAINS).z1
  state = gibbs.GibbsState(z1, jnp.zeros((NUM_CHAINS, n), jnp.float32))
  run = jax.jit(gibbs.run, static_argnums=3)
  variants = {("matmuls only", "-"): (jax.jit(matmuls_only, static_argnums=2), (m, z1, num_sweeps))}
  for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
    variants[("library gibbs.run", impl)] = (
      run,
      (jax.random.key(1, impl=impl), state, m, num_sweeps),
    )
  for kind in ("uniform<sigmoid", "jax.random.bernoulli", "logistic noise"):
    fn = jax.jit(alternative_sweeps(kind), static_argnums=3)
    variants[(kind, "threefry2x32")] = (fn, (jax.random.key(1), m, z1, num_sweeps))
  fn = jax.jit(rng_only, static_argnums=(2, 3, 4))
  variants[("rng only", "threefry2x32")] = (fn, (jax.random.key(1), z1, num_sweeps, n, n))
  np_sweeps = max(num_sweeps // 10, 5)
  rng = np.random.default_rng(0)
  z1_np = np.asarray(z1)
  variants[("numpy reference", "PCG64")] = (
    lambda: numpy_sweeps(m, z1_np, np_sweeps, rng),
    (),
  )
  scale = {("numpy reference", "PCG64"): num_sweeps / np_sweeps}
  best = {name: float("inf") for name in variants}
  for _ in range(rounds):
    for name, (fn, args) in variants.items():
      best[name] = min(best[name], best_time(fn, *args, repeats=1) * scale.get(name, 1.0))
  t_mm = best[("matmuls only", "-")]
  rows = []
  for (variant, prng), seconds in best.items():
    per_sweep = seconds / num_sweeps
    rows.append(
      {
        "n1": n,
        "n2": n,
        "chains": NUM_CHAINS,
        "variant": variant,
        "prng": prng,
        "sweeps_per_s": 1.0 / per_sweep,
        "ms_per_sweep": 1e3 * per_sweep,
        "matmul_ratio": (t_mm / num_sweeps) / per_sweep,
      }
    )
  return rows


def markdown(rows):
  lines = [
    "| size | variant | PRNG | sweeps/s | ms/sweep | matmul time / sweep time |",
    "|---|---|---|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['n1']}×{r['n2']} | {r['variant']} | {r['prng']} | {r['sweeps_per_s']:.0f} | "
      f"{r['ms_per_sweep']:.3f} | {r['matmul_ratio']:.2f} |"
    )
  return "\n".join(lines)


def summary(rows):
  """The comparisons the choices rest on, per size."""
  lines = []
  for n in sorted({r["n1"] for r in rows}):
    rate = {(r["variant"], r["prng"]): r["sweeps_per_s"] for r in rows if r["n1"] == n}
    lib = rate[("library gibbs.run", "threefry2x32")]
    lines.append(
      f"- {n}×{n}: library sweep = {lib / rate[('matmuls only', '-')]:.0%} of matmul-only speed; "
      f"{lib / rate[('uniform<sigmoid', 'threefry2x32')]:.2f}× `uniform < sigmoid`; threefry "
      f"{lib / rate[('library gibbs.run', 'rbg')]:.2f}× rbg, "
      f"{lib / rate[('library gibbs.run', 'unsafe_rbg')]:.2f}× unsafe_rbg; "
      f"{lib / rate[('numpy reference', 'PCG64')]:.1f}× NumPy."
    )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="fewer sweeps and repetitions")
  parser.add_argument("--out", default=str(RESULTS / "sampler_speed.json"))
  args = parser.parse_args()
  rounds = 2 if args.quick else 6
  rows = []
  for n, sweeps in ((100, 200), (200, 100)):
    rows += bench_size(n, sweeps // (4 if args.quick else 1), rounds)
  table = markdown(rows) + "\n\n" + summary(rows)
  print(table)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = {
    "command": "python -m benchmarks.sampler_speed" + (" --quick" if args.quick else ""),
    "jax": jax.__version__,
    "device": str(jax.devices()[0]),
    "cpu_count": os.cpu_count(),
    "machine": platform.processor() or platform.machine(),
    "dtype": "float32",
    # Other jobs may share the cores: the load average says how contended the timing was.
    "load_average_1min_at_end": os.getloadavg()[0],
  }
  out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
  out.with_suffix(".md").write_text(table + "\n")
  print(f"\nwrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
  main()
