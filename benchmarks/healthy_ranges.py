r"""The largest values of the divergence guard's quantities in healthy runs.

  python -m benchmarks.healthy_ranges [--num_steps=300] [--data_dir=DIR]   # ≈ 25 min on 2 CPU cores

Trains every named config (1-layer-lin, binarized MNIST), the nonlinear structs, K = 5 and 25,
OMNIGLOT and Caltech-101 for ``num_steps`` steps each with the per-step work of the CPU protocol
(batch 100, PA 1000 × 40; small evaluations), logging every step, and records for each run the
largest |loss|, |−ELBO|, |log Z| (the sampler's) and gradient norm, with the validation NLL and the
test AIS log Z. The early steps hold the largest values (losses fall as training goes on). Writes
benchmarks/results/healthy_ranges.json; experiments/guards.py's default limits are set against it
(docs/reliability.md, "Divergence guard").
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

from experiments import config_lib, metrics, train

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
KEYS = ("loss", "terms/neg_elbo", "terms/log_z", "grad_norm")
CASES = (
  [(name, {}) for name in config_lib.CONFIG_NAMES]
  + [("dvae_sharp", {"struct": s}) for s in ("1-layer-nonlin", "2-layer-nonlin", "4-layer-nonlin")]
  + [
    ("dvae", {"struct": "2-layer-nonlin"}),
    ("dvae_sharp", {"k": 25}),
    ("dvae_pp_power", {"k": 5, "struct": "1-layer-nonlin"}),
    ("dvae_sharp", {"dataset": "omniglot"}),
    ("dvae", {"dataset": "caltech101_silhouettes", "struct": "1-layer-nonlin"}),
  ]
)


def survey(name: str, overrides: dict, num_steps: int, data_dir: str, workdir: pathlib.Path):
  config = config_lib.load_config(name)
  settings = {
    "num_steps": num_steps,
    "eval_every": 10**6,  # one evaluation, at the end
    "log_every": 1,
    "checkpoint_every": 10**6,
    "val_iw_samples": 4,
    "eval_iw_samples": 4,
    "eval_num_examples": 50,
    "ais_num_chains": 16,
    "ais_num_temperatures": 20,
    "num_prior_samples": 1000,
    "num_sweeps": 40,
    "num_image_samples": 4,
    "data_dir": data_dir,
  }
  for key, value in {**settings, **overrides}.items():
    config[key] = value
  results = train.train_and_evaluate(config, workdir)
  rows = [r for r in metrics.read_metrics(workdir) if "loss" in r]
  out = {k: max(abs(r[k]) for r in rows) for k in KEYS}
  out.update(
    val_nll=results["val_nll"],
    test_log_z=results["test_log_z"],
    argmax_grad_step=max(rows, key=lambda r: r["grad_norm"])["step"],
  )
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_steps", type=int, default=300)
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--out", default=str(RESULTS / "healthy_ranges.json"))
  args = parser.parse_args()
  runs = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, overrides in CASES:
      tag = name + "".join(f"_{k}{v}" for k, v in overrides.items())
      t0 = time.time()
      runs[tag] = survey(name, overrides, args.num_steps, args.data_dir, pathlib.Path(tmp) / tag)
      print(tag, json.dumps(runs[tag]), f"{time.time() - t0:.0f} s", flush=True)
  largest = {k: max(abs(r[k]) for r in runs.values()) for k in (*KEYS, "val_nll", "test_log_z")}
  out = {"num_steps": args.num_steps, "largest": largest, "runs": runs}
  pathlib.Path(args.out).write_text(json.dumps(out, indent=1, sort_keys=True))
  print("largest:", json.dumps(largest))


if __name__ == "__main__":
  main()
