r"""log Z error against compute for PA, AIS and PCD-based estimates on 20×20 RBMs (exact answers).

  python -m benchmarks.sampler_accuracy           # ≈ 2–3 minutes on 2 CPU cores
  python -m benchmarks.sampler_accuracy --quick   # one RBM, two budgets

Compute is counted in chain-sweeps (chains × block Gibbs sweeps), the unit that dominates the cost.
For each budget S chains × T sweeps:
  * AIS: S chains, T + 1 linearly spaced temperatures, one sweep each (`ais.run`);
  * PA linear: S replicas in G = clip(S/16, 4, 16) groups, the same schedule
    (`population_annealing.anneal`);
  * PA adaptive: ESS target 0.9 / 0.99 / 0.999, one sweep per temperature; its compute is S × the
    number of steps it chose (reported), not the budget;
  * PCD tracking: the training-time estimator. The parameters move along θ_k = (k/K)·θ, K = T/10
    steps of 10 sweeps, and log Z accumulates log mean exp(−ΔE) (`pcd.step`);
  * PA persistent: the same path with the persistent PA sampler (`persistent_pa.step`).
Each configuration runs on several random RBMs and seeds; the exact log Z comes from enumerating
2^20 states in float64. Reported: RMSE and mean error over runs, and the mean reported stderr.
Writes benchmarks/results/sampler_accuracy.json (+ .md) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from dvae_jax.priors import rbm
from dvae_jax.samplers import ais, pcd, persistent, persistent_pa, tempering
from dvae_jax.samplers import population_annealing as pa

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
N = 20
SWEEPS_PER_PCD_STEP = 10


def random_rbm(seed, w_std):
  rng = np.random.default_rng(seed)
  return rbm.RBM(
    jnp.asarray(rng.normal(0, 0.5, N), jnp.float32),
    jnp.asarray(rng.normal(0, 0.5, N), jnp.float32),
    jnp.asarray(rng.normal(0, w_std, (N, N)), jnp.float32),
  )


def exact_log_z(m):
  with jax.enable_x64(True):
    return float(rbm.exact_log_partition(jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), m)))


def tracking_estimator(kind, chains, sweeps):
  """log Z from a persistent sampler dragged along θ_k = (k/K) θ, as during training."""
  num_steps = max(sweeps // SWEEPS_PER_PCD_STEP, 1)
  frac = jnp.arange(1, num_steps + 1, dtype=jnp.float32) / num_steps
  step = pcd.step if kind == "pcd" else persistent_pa.step

  def run(key, m):
    path = jax.tree.map(lambda x: frac.reshape((-1,) + (1,) * x.ndim) * x, m)
    k0, k1 = jax.random.split(key)
    state = persistent.zero_state(k0, m, chains)

    def body(s, inputs):
      k, params = inputs
      return step(k, s, params, num_sweeps=SWEEPS_PER_PCD_STEP)

    state, info = jax.lax.scan(body, state, (jax.random.split(k1, num_steps), path))
    return state.log_z, info.log_z_stderr[-1], jnp.asarray(num_steps * SWEEPS_PER_PCD_STEP)

  return run


def estimator(method, chains, sweeps):
  """A function (key, m) -> (log_z, stderr, sweeps used) for one method and budget."""
  betas = tempering.linear_schedule(sweeps + 1)
  # At least 16 replicas per group (the ESS of smaller groups is too coarse), at most 16 groups.
  groups = max(4, min(16, chains // 16))
  if method == "AIS":

    def run(key, m):
      r = ais.run(key, m, betas, chains)
      return r.log_z, r.stderr, jnp.asarray(sweeps)

  elif method == "PA linear":

    def run(key, m):
      r = pa.anneal(key, m, betas, chains, num_groups=groups)
      return r.log_z, r.stderr, jnp.asarray(sweeps)

  elif method.startswith("PA adaptive"):
    target = float(method.split()[-1])

    def run(key, m):
      r = pa.anneal_adaptive(key, m, chains, sweeps + 1, target_ess=target, num_groups=groups)
      return r.log_z, r.stderr, r.num_steps

  elif method == "PCD tracking":
    run = tracking_estimator("pcd", chains, sweeps)
  elif method == "PA persistent":
    run = tracking_estimator("pa", chains, sweeps)
  else:
    raise ValueError(method)
  return run


METHODS = (
  "AIS",
  "PA linear",
  "PA adaptive 0.9",
  "PA adaptive 0.99",
  "PA adaptive 0.999",
  "PCD tracking",
  "PA persistent",
)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--seeds", type=int, default=4, help="independent runs per configuration")
  parser.add_argument("--out", default=str(RESULTS / "sampler_accuracy.json"))
  args = parser.parse_args()
  machines = [(0, 0.5), (1, 1.0), (2, 1.5)] if not args.quick else [(1, 1.0)]
  budgets = [(64, 100), (256, 300), (1024, 1000)] if not args.quick else [(64, 100), (256, 300)]
  rows = []
  machines = [(seed, w_std, random_rbm(seed, w_std)) for seed, w_std in machines]
  exact = {seed: exact_log_z(m) for seed, _, m in machines}
  # One compiled program per method and budget: the RBM is an argument, the seeds a vmapped axis.
  for chains, sweeps in budgets:
    for method in METHODS:
      run = jax.jit(jax.vmap(estimator(method, chains, sweeps), in_axes=(0, None)))
      for seed, w_std, m in machines:
        keys = jax.random.split(jax.random.key(100 + seed), args.seeds)
        jax.block_until_ready(run(keys, m))  # compile (first RBM) and warm up
        start = time.perf_counter()
        log_z, stderr, used = jax.block_until_ready(run(keys, m))
        seconds = (time.perf_counter() - start) / args.seeds
        err = np.asarray(log_z, np.float64) - exact[seed]
        rows.append(
          {
            "rbm_seed": seed,
            "w_std": w_std,
            "exact_log_z": exact[seed],
            "method": method,
            "chains": chains,
            "budget_sweeps": sweeps,
            "sweeps_used": float(np.mean(used)),
            "chain_sweeps": float(chains * np.mean(used)),
            "errors": err.tolist(),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "mean_error": float(np.mean(err)),
            "mean_stderr": float(np.nanmean(np.asarray(stderr))),
            "seconds_per_run": seconds,
          }
        )
        r = rows[-1]
        print(
          f"w_std={w_std} {method:18s} S={chains:5d} T={sweeps:5d} used={r['sweeps_used']:7.1f} "
          f"rmse={r['rmse']:.4f} mean={r['mean_error']:+.4f} se={r['mean_stderr']:.4f} "
          f"{seconds:.2f}s",
          flush=True,
        )
  table = markdown(rows, budgets)
  print("\n" + table)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = {
    "command": "python -m benchmarks.sampler_accuracy" + (" --quick" if args.quick else ""),
    "jax": jax.__version__,
    "device": str(jax.devices()[0]),
    "cpu_count": os.cpu_count(),
    "n1": N,
    "n2": N,
    "seeds_per_configuration": args.seeds,
  }
  out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
  out.with_suffix(".md").write_text(table + "\n")
  print(f"\nwrote {out} and {out.with_suffix('.md')}")


def markdown(rows, budgets):
  """RMSE (over RBMs and seeds) per method and budget, with the mean reported stderr."""
  header = "| method | " + " | ".join(f"S={s}, T={t}" for s, t in budgets) + " |"
  lines = [
    "RMSE of log Z in nats (mean reported stderr) [chain-sweeps used], 20×20 RBMs:",
    "",
    header,
    "|---|" + "---:|" * len(budgets),
  ]
  for method in METHODS:
    cells = []
    for s, t in budgets:
      sel = [
        r for r in rows if r["method"] == method and r["chains"] == s and r["budget_sweeps"] == t
      ]
      errs = np.concatenate([r["errors"] for r in sel])
      se = np.mean([r["mean_stderr"] for r in sel])
      used = np.mean([r["chain_sweeps"] for r in sel])
      cells.append(f"{np.sqrt(np.mean(errs**2)):.4f} ({se:.4f}) [{used:.3g}]")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
