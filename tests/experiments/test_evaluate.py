"""End-to-end tests of python -m experiments.evaluate (and experiments.restore) on a tiny run."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from dvae_jax import data as data_lib
from dvae_jax import evaluation
from experiments import restore, scoring

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_module(module, *args, env=None):
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(REPO / ".jax_cache"), **(env or {})}
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def checksums(folder: pathlib.Path) -> dict[str, str]:
  """{relative path: md5} of every file under ``folder`` (and the empty folders, as None)."""
  out = {}
  for path in sorted(folder.rglob("*")):
    rel = str(path.relative_to(folder))
    out[rel] = hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None
  return out


def test_evaluate_reproduces_the_run_and_leaves_it_untouched(tiny_run):
  workdir, results = tiny_run
  before = checksums(workdir)
  proc = run_module("experiments.evaluate", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr
  out = workdir / "eval_test_8.json"
  after = checksums(workdir)
  assert after.pop("eval_test_8.json") is not None
  assert after == before  # nothing of the run created, changed or deleted
  record = json.loads(out.read_text())
  # The run's own settings: the same checkpoint, examples, sample sizes; fresh random numbers.
  assert record["step"] == results["best_step"] and record["checkpoint"] == "best"
  assert record["num_examples"] == results["num_test_examples"] == 32
  assert (record["iw_samples"], record["ais_chains"]) == (8, 16)
  assert record["data_source"] == results["data_source"] == "binarized_mnist.npz"
  assert record["data_md5"] == results["data_md5"]
  assert abs(record["nll"] - results["test_nll"]) < record["nll_stderr"]
  assert abs(record["log_z"] - results["test_log_z"]) < 5 * np.hypot(
    record["log_z_stderr"], results["test_log_z_stderr"]
  )
  assert record["nll"] <= record["neg_elbo"]
  text = proc.stdout
  for expected in (
    f"step {results['best_step']}",
    f"NLL = {record['nll']:.3f} ± {record['nll_stderr']:.3f} nats",
    f"−ELBO = {record['neg_elbo']:.3f}",
    f"log Z = {record['log_z']:.3f} ± {record['log_z_stderr']:.3f}",
    "example 32/32 (100.0%)",
    "time: ",
    f"wrote {out}",
  ):
    assert expected in text, (expected, text)


def test_evaluate_other_checkpoint_split_and_sizes(tiny_run, tmp_path):
  workdir, _ = tiny_run
  out = tmp_path / "e.json"
  proc = run_module(
    "experiments.evaluate",
    f"--workdir={workdir}",
    "--step=2",
    "--split=valid",
    "--iw_samples=3",
    "--num_examples=10",
    "--ais_chains=4",
    "--ais_temperatures=5",
    "--batch_size=4",
    f"--out={out}",
  )
  assert proc.returncode == 0, proc.stderr
  record = json.loads(out.read_text())
  assert (record["step"], record["checkpoint"], record["split"]) == (2, "latest", "valid")
  assert (record["iw_samples"], record["num_examples"]) == (3, 10)
  assert (record["ais_chains"], record["ais_temperatures"]) == (4, 5)
  assert not (workdir / "eval_valid_3.json").exists()


@pytest.mark.parametrize(
  "args, message",
  [
    (["--split=training"], "value should be one of <test|valid|train>"),
    (["--iw_samples=0"], "invalid --iw_samples=0: must be an integer >= 1"),
    (["--ais_temperatures=1"], "invalid --ais_temperatures=1: must be an integer >= 2"),
    (["--num_examples=-1"], "invalid --num_examples=-1: must be an integer >= 0"),
    (["--num_examples=100000"], "invalid --num_examples=100000: the test split has"),
    (["--step=3"], "holds no checkpoint of step 3 (found best-validation checkpoint(s) ["),
    (["--step=last"], "invalid --step 'last': 'best', 'latest' or a step number"),
  ],
)
def test_evaluate_refuses_bad_flags(tiny_run, args, message):
  workdir, _ = tiny_run
  before = checksums(workdir)
  proc = run_module("experiments.evaluate", f"--workdir={workdir}", *args)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr
  assert checksums(workdir) == before


def test_evaluate_refuses_a_batch_that_does_not_split_over_the_devices(tiny_run):
  proc = run_module(
    "experiments.evaluate",
    f"--workdir={tiny_run[0]}",
    "--batch_size=3",
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "eval_batch_size=3 must be divisible by the number of devices (2)" in proc.stderr


def test_evaluate_refuses_a_folder_without_run_or_checkpoint(tiny_run, tmp_path):
  proc = run_module("experiments.evaluate", f"--workdir={tmp_path / 'nothing'}")
  assert proc.returncode != 0 and "does not exist" in proc.stderr
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("x")
  proc = run_module("experiments.evaluate", f"--workdir={tmp_path / 'empty'}")
  assert "holds no run: no config.json (found: notes.txt)" in proc.stderr
  # A run that stopped before its first checkpoint: config.json (and metrics) only.
  started = tmp_path / "started"
  started.mkdir()
  (started / "config.json").write_text((tiny_run[0] / "config.json").read_text())
  (started / "checkpoints").mkdir()
  proc = run_module("experiments.evaluate", f"--workdir={started}")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert (
    "holds no checkpoint (found best-validation checkpoint(s) none in checkpoints_best/, "
    "latest checkpoint(s) none in checkpoints/)" in proc.stderr
  )
  assert sorted(p.name for p in started.iterdir()) == ["checkpoints", "config.json"]


def test_evaluate_split_standard_error_matches_per_example_scores(tiny_run):
  """The NLL mean and its standard error from evaluate_split's running sums equal those of the
  per-example NLLs computed batch by batch with evaluation.evaluate and the same keys."""
  run = restore.restore(tiny_run[0], "best")
  experiment, state = run.experiment, run.state
  x = scoring.eval_subset(experiment.dataset.test, 20)  # 3 batches of 8, the last one padded
  key = jax.random.key(3)
  scores = scoring.evaluate_split(
    experiment, scoring.make_eval_fn(experiment, 5), state, x, 1.5, key, progress=None
  )
  model = nnx.merge(experiment.eval_graphdef, state.params["model"], state.batch_stats)
  per_example = []
  for b, start in enumerate(range(0, len(x), 8)):
    batch = np.zeros((8, 784), np.float32)
    batch[: len(x[start : start + 8])] = x[start : start + 8]
    out = evaluation.evaluate(
      jax.random.fold_in(key, b), model, state.params["prior"], 1.5, batch, 5, sample_chunk=5
    )
    per_example.extend(np.asarray(out["nll"], np.float64)[: len(x[start : start + 8])])
  per_example = np.array(per_example)
  np.testing.assert_allclose(scores["nll"], per_example.mean(), rtol=1e-5)
  np.testing.assert_allclose(
    scores["nll_stderr"], per_example.std(ddof=1) / np.sqrt(len(x)), rtol=1e-3
  )


def test_restore_latest_gives_the_whole_train_state(tiny_run):
  run = restore.restore(tiny_run[0], "latest")
  assert (run.which, run.step, int(run.state.step)) == ("latest", 4, 4)
  best = restore.restore(tiny_run[0], "best")
  assert best.step == json.loads((tiny_run[0] / "results.json").read_text())["best_step"]


def test_split_examples_binarizes_grey_training_images_once():
  # (restore, not evaluate: the CLI modules define absl flags, which are global, and other test
  # modules import benchmarks that define flags of the same names.)
  grey = np.random.default_rng(0).random((50, 784)).astype(np.float32)
  binary = (grey > 0.5).astype(np.uint8)
  ds = data_lib.Dataset("omniglot", grey, binary, binary, True, "x", ("x",))
  x = restore.split_examples(ds, "train", 20)
  assert x.shape == (20, 784) and x.dtype == np.uint8 and set(np.unique(x)) <= {0, 1}
  np.testing.assert_array_equal(x, restore.split_examples(ds, "train", 20))  # a fixed draw
  # Mean of 20 × 784 Bernoulli draws of the chosen rows: sd ≤ 0.5 / √15680 ≈ 0.004; 5 sd.
  rows = scoring.eval_subset(grey, 20)
  assert abs(x.mean() - rows.mean()) < 0.02
  assert restore.split_examples(ds, "test", 0) is binary
  with pytest.raises(restore.UsageError, match="--num_examples=51: the valid split has 50"):
    restore.split_examples(ds, "valid", 51)
