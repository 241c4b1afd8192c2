"""Relaxed-sample throughput of dvae_jax.smoothing (math.md §1).

For every smoothing at a paper β, on a [100, 200] batch of logits (the 1-layer structs' latent
shape): ``sample`` (inverse CDF: analytic for spike-and-exp / exponential, safeguarded Newton for
power / Gaussian / uniform+exp) and ``sample_ancestral``, forward only and forward+backward
(``value_and_grad`` of a sum with respect to the logits). Each function is jitted, warmed up, then
timed ``--repeats`` times (each timing ``--inner`` calls, ``block_until_ready``); the median is
reported as samples/s. Writes benchmarks/results/smoothing_throughput.json and prints a Markdown
table.

  python benchmarks/smoothing_throughput.py [--repeats 7] [--inner 20]
"""

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from dvae_jax import smoothing as sm

SMOOTHINGS = {
  "spike_exp (β=5)": sm.SpikeAndExp(5.0),
  "exp (β=12)": sm.Exponential(12.0),
  "power (β=40)": sm.PowerFunction(40.0),
  "gauss (β=40)": sm.Gaussian(40.0),
  "unexp (β=40)": sm.UniformExponential(40.0),
}
SHAPE = (100, 200)


def make_fns(s, sampler):
  def forward(key, logits):
    return sampler(key, s, logits)

  def forward_backward(key, logits):
    return jax.value_and_grad(lambda lg: jnp.sum(sampler(key, s, lg)))(logits)

  return {"fwd": jax.jit(forward), "fwd+bwd": jax.jit(forward_backward)}


def time_fn(fn, key, logits, repeats, inner):
  jax.block_until_ready(fn(key, logits))  # compile + warm up
  times = []
  for r in range(repeats):
    keys = jax.random.split(jax.random.fold_in(key, r), inner)
    start = time.perf_counter()
    for k in keys:
      out = fn(k, logits)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / inner)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--inner", type=int, default=20)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
  args = parser.parse_args()

  key = jax.random.key(0)
  logits = 2.0 * jax.random.normal(jax.random.key(1), SHAPE)
  n = logits.size
  rows = []
  for name, s in SMOOTHINGS.items():
    for sampler_name, sampler in (("sample", sm.sample), ("sample_ancestral", sm.sample_ancestral)):
      for mode, fn in make_fns(s, sampler).items():
        seconds = time_fn(fn, key, logits, args.repeats, args.inner)
        rows.append(
          {
            "smoothing": name,
            "sampler": sampler_name,
            "mode": mode,
            "numerical_inverse": bool(getattr(s, "numerical_inverse", False)),
            "seconds_per_call": seconds,
            "samples_per_second": n / seconds,
          }
        )

  result = {
    "benchmark": "smoothing_throughput",
    "shape": list(SHAPE),
    "repeats": args.repeats,
    "inner": args.inner,
    "solver_iterations": sm.DEFAULT_SOLVER_ITERATIONS,
    "device": str(jax.devices()[0]),
    "jax": jax.__version__,
    "machine": platform.machine(),
    "processor": platform.processor(),
    "rows": rows,
  }
  out_dir = pathlib.Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "smoothing_throughput.json").write_text(json.dumps(result, indent=2) + "\n")

  print(
    f"Relaxed samples/s, batch {SHAPE[0]}×{SHAPE[1]}, median of {args.repeats}×{args.inner} "
    f"calls on {result['device']} (jax {jax.__version__})\n"
  )
  print("| smoothing | sampler | fwd (M samples/s) | fwd+bwd (M samples/s) | fwd ms/call |")
  print("|---|---|---|---|---|")
  by_key = {(r["smoothing"], r["sampler"], r["mode"]): r for r in rows}
  for name in SMOOTHINGS:
    for sampler_name in ("sample", "sample_ancestral"):
      fwd = by_key[(name, sampler_name, "fwd")]
      bwd = by_key[(name, sampler_name, "fwd+bwd")]
      print(
        f"| {name} | {sampler_name} | {fwd['samples_per_second'] / 1e6:.2f} | "
        f"{bwd['samples_per_second'] / 1e6:.2f} | {fwd['seconds_per_call'] * 1e3:.3f} |"
      )


if __name__ == "__main__":
  main()
