"""End-to-end tests of python -m experiments.evaluate (and experiments.restore) on a tiny run."""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import chex
import cli_cases
import jax
import numpy as np
import pytest
from flax import nnx

from dvae_jax import data as data_lib
from dvae_jax import evaluation
from experiments import restore, scoring

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_module(module, *args, env=None):
  env = {**os.environ, **(env or {})}
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
  # Paired: both scores are means over the same 32 examples, so their difference carries no
  # across-example spread, only (a) the two AIS log Z's difference, which shifts every NLL alike,
  # and (b) the importance-sampling noise of each example's score, whose standard error for the
  # difference of two means is sd_i(d_i)/√n with d_i the difference of one example's scores under
  # two independent key sets (computed here from the saved model with the run's sizes).
  assert abs(record["log_z"] - results["test_log_z"]) < 5 * np.hypot(
    record["log_z_stderr"], results["test_log_z_stderr"]
  )
  run = restore.restore(workdir, "best")
  x = scoring.eval_subset(run.experiment.dataset.test, 32).astype(np.float32)
  model = nnx.merge(run.experiment.eval_graphdef, run.state.params["model"], run.state.batch_stats)
  pair = [
    np.asarray(
      evaluation.evaluate(jax.random.key(s), model, run.state.params["prior"], 0.0, x, 8)["nll"],
      np.float64,
    )
    for s in (11, 12)
  ]
  paired_se = np.std(pair[0] - pair[1], ddof=1) / np.sqrt(len(x))
  shift = record["log_z"] - results["test_log_z"]
  assert abs(record["nll"] - results["test_nll"] - shift) < 4 * paired_se, (
    record["nll"],
    results["test_nll"],
    shift,
    paired_se,
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


# The refusals of the flags experiments/evaluate.py itself defines (absl's enum, its minimums) need
# the command (run in one process: cli_cases); those decided by experiments.restore are tested
# in-process below. Each case checks the CLI's contract: exit status ≠ 0, the message on stderr, no
# traceback, nothing written.
BAD_FLAGS = [
  (["--split=training"], "value should be one of <test|valid|train>"),
  (["--iw_samples=0"], "invalid --iw_samples=0: must be an integer >= 1"),
  (["--ais_temperatures=1"], "invalid --ais_temperatures=1: must be an integer >= 2"),
  (["--num_examples=-1"], "invalid --num_examples=-1: must be an integer >= 0"),
]


@pytest.fixture(scope="module")
def bad_flag_results(tiny_run):
  """({args: Result} of every BAD_FLAGS case, the run folder's checksums before and after)."""
  workdir, _ = tiny_run
  before = checksums(workdir)
  by_args = cli_cases.run_table("experiments.evaluate", BAD_FLAGS, f"--workdir={workdir}")
  return by_args, before, checksums(workdir)


@pytest.mark.parametrize("args, message", BAD_FLAGS)
def test_evaluate_refuses_bad_flags(bad_flag_results, args, message):
  by_args, before, after = bad_flag_results
  result = by_args[tuple(args)]
  assert result.returncode != 0
  assert message in result.stderr, result.stderr
  assert "Traceback" not in result.stderr
  assert after == before


@pytest.mark.parametrize(
  "step, message",
  [
    ("3", "holds no checkpoint of step 3 (found best-validation checkpoint(s) ["),
    ("last", "invalid --step 'last': 'best', 'latest' or a step number"),
  ],
)
def test_restore_refuses_a_step_it_does_not_hold(tiny_run, step, message):
  before = checksums(tiny_run[0])
  with pytest.raises(restore.RestoreError) as err:
    restore.restore(tiny_run[0], step)
  assert message in str(err.value)
  assert checksums(tiny_run[0]) == before


def test_a_run_written_before_newer_config_keys_restores_as_it_was(tiny_run, tmp_path):
  """A config.json without the keys added since (runs of earlier versions) reads their defaults,
  which are the behaviour those runs had, and restores the same weights."""
  workdir = tmp_path / "older"
  shutil.copytree(tiny_run[0], workdir)
  saved = json.loads((workdir / "config.json").read_text())
  newer = ("binarization", "data_feature", "dataset_md5", "steps_per_dispatch")
  older = {k: v for k, v in saved.items() if k not in newer}
  assert set(saved) - set(older) == set(newer)
  (workdir / "config.json").write_text(json.dumps(older))
  old_run, run = restore.restore(workdir), restore.restore(tiny_run[0])
  config = old_run.experiment.config
  assert (config.binarization, config.data_feature, config.steps_per_dispatch) == ("dynamic", "", 1)
  assert config.dataset_md5 == saved["dataset_md5"]  # the built-in data's identity, found again
  assert old_run.step == run.step
  chex.assert_trees_all_equal(old_run.state, run.state)


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
  """In-process (experiments.restore decides; the command prints its message as one line, the
  contract tested above), except one command for a folder that does not exist."""
  proc = run_module("experiments.evaluate", f"--workdir={tmp_path / 'nothing'}")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert f"error: workdir {tmp_path / 'nothing'} does not exist" in proc.stderr
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("x")
  with pytest.raises(restore.RestoreError, match=r"holds no run: no config.json \(found: notes"):
    restore.restore(tmp_path / "empty")
  # A run that stopped before its first checkpoint: config.json (and metrics) only.
  started = tmp_path / "started"
  started.mkdir()
  (started / "config.json").write_text((tiny_run[0] / "config.json").read_text())
  (started / "checkpoints").mkdir()
  with pytest.raises(restore.RestoreError) as err:
    restore.restore(started)
  assert (
    "holds no checkpoint (found best-validation checkpoint(s) none in checkpoints_best/, "
    "latest checkpoint(s) none in checkpoints/)" in str(err.value)
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
