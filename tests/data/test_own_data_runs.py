"""The runner on the user's own data (experiments.train / evaluate / sample with file:, tfds: and
bars_and_stripes: datasets): every method and a graph prior train, evaluate and write results on
data of another dimension than 784; the struct follows the data; grids only for square images; the
data's identity is recorded and a resume on other data is refused; on bars and stripes the test NLL
approaches the exact entropy (slow)."""

import json
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from own_data_util import grey_arrays, prepare_tfds
from PIL import Image

from dvae_jax import data
from dvae_jax.data import bars_and_stripes
from experiments import checkpointing, config_lib, restore, scoring, train, train_loop

REPO = pathlib.Path(__file__).resolve().parents[2]

# A few steps and tiny evaluations: these tests check that the pieces fit, not the numbers that
# long runs give (the slow test at the end does).
TINY = {
  "num_steps": 2,
  "batch_size": 8,
  "num_prior_samples": 16,
  "num_sweeps": 2,
  "eval_every": 2,
  "val_iw_samples": 4,
  "eval_iw_samples": 4,
  "eval_num_examples": 8,
  "eval_batch_size": 8,
  "ais_num_chains": 8,
  "ais_num_temperatures": 10,
  "sampler_diagnostic_replicas": 0,
  "train_ais_num_chains": 0,
  "log_every": 1,
  "checkpoint_every": 2,
  "num_image_samples": 4,
}


def own_config(dataset, name="dvae_sharp", **overrides):
  config = config_lib.load_config(name)
  for key, value in {**TINY, "dataset": dataset, **overrides}.items():
    config[key] = value
  return config


@pytest.fixture(scope="module")
def own_file(tmp_path_factory) -> pathlib.Path:
  """Grey [n, 3, 5] examples (15 values each: not 784, not a square image) in an .npz."""
  path = tmp_path_factory.mktemp("own") / "grey35.npz"
  np.savez(path, **grey_arrays(0))
  return path


@pytest.fixture(scope="module")
def own_run(own_file, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("own_run")
  return workdir, train.train_and_evaluate(own_config(f"file:{own_file}"), workdir)


def check_run(workdir: pathlib.Path, results: dict, dataset: data.Dataset) -> None:
  """What every run on the user's data must show: its config names the data and its content, the
  model has the data's width, the final scores are consistent, the pictures are arrays."""
  config = json.loads((workdir / "config.json").read_text())
  assert config["dataset"] == dataset.name and config["dataset_md5"] == dataset.identity
  assert len(dataset.identity) == 32
  assert results["num_test_examples"] == TINY["eval_num_examples"]
  # −log mean_k w_k <= −mean_k log w_k example by example (Jensen), with the same samples.
  assert 0 < results["test_nll"] <= results["test_neg_elbo"] + 1e-4
  # Finite only: the value of an AIS log Z is checked against enumeration and independent
  # estimates in tests/samplers; here the own-data path only has to produce one.
  assert math.isfinite(results["test_log_z"])
  weights = restore.restore(workdir, "best").state.params["model"]
  leaves = jax.tree_util.tree_leaves_with_path(weights)
  shapes = {jax.tree_util.keystr(path): leaf.shape for path, leaf in leaves}
  # The first encoder's input and the decoder's output have the data's dimension.
  first_in = [s[0] for k, s in shapes.items() if "encoders'][0]" in k and "kernel" in k]
  decoder_out = [s[1] for k, s in shapes.items() if "decoder'].out" in k and "kernel" in k]
  assert first_in[0] == decoder_out == [dataset.num_pixels] or (first_in, decoder_out)
  images = workdir / train_loop.IMAGES_DIR
  if dataset.example_shape == (3, 5):  # not square images: arrays instead of grids
    assert sorted(p.name for p in images.iterdir()) == ["samples_00000002.npz"]
    with np.load(images / "samples_00000002.npz") as f:
      assert tuple(f["example_shape"]) == (3, 5)
      assert f["samples"].shape == (TINY["num_image_samples"], 15)
      assert 0 <= f["samples"].min() and f["samples"].max() <= 1
      np.testing.assert_array_equal(f["originals"], dataset.valid[:2])
      assert f["reconstructions"].shape == (2, 15)


def test_dvae_sharp_run_on_a_file(own_run, own_file):
  workdir, results = own_run
  ds = data.load_dataset(f"file:{own_file}")
  check_run(workdir, results, ds)
  assert results["data_source"] == own_file.name


# Slow: one method (dvae_sharp in `own_run`) trains on a file by default. The data reaches the
# objective only through the encoder and decoder, which every method shares; one config of each
# method family trains end to end in the default suite on the committed images
# (experiments/test_train.py).
@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in config_lib.METHODS if m != "dvae_sharp"])
def test_every_method_trains_on_a_file(method, own_file, tmp_path):
  results = train.train_and_evaluate(own_config(f"file:{own_file}", method=method), tmp_path)
  check_run(tmp_path, results, data.load_dataset(f"file:{own_file}"))


@pytest.mark.slow  # a file reaches a graph prior as it reaches the RBM (own_run)
def test_chimera_prior_on_a_file(own_file, tmp_path):
  results = train.train_and_evaluate(own_config(f"file:{own_file}", prior="chimera"), tmp_path)
  check_run(tmp_path, results, data.load_dataset(f"file:{own_file}"))
  assert json.loads((tmp_path / "config.json").read_text())["topology"] == "5,5,4"


def test_tfds_run_draws_grids_of_its_square_images(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.setenv(data.OFFLINE_ENV, "1")
  splits = bars_and_stripes.splits(4)
  folder = tmp_path / "tfds"
  prepare_tfds(folder, "binary", {s: {"image": x[:60, :, :, None]} for s, x in splits.items()})
  config = own_config("tfds:own_tiny:binary", "dvae_sharp_factorial", data_dir=str(folder))
  results = train.train_and_evaluate(config, tmp_path / "run")
  ds = data.load_dataset("tfds:own_tiny:binary", folder)
  assert ds.example_shape == (4, 4, 1) and ds.num_pixels == 16
  check_run(tmp_path / "run", results, ds)
  with Image.open(tmp_path / "run" / train_loop.IMAGES_DIR / "samples_00000002.png") as image:
    assert image.size == (2 * 5 + 1, 2 * 5 + 1)  # 2 × 2 cells of 4 × 4 pixels, 1-pixel borders


def test_resume_or_restore_on_changed_data_is_refused(tmp_path):
  path = tmp_path / "data.npz"
  stored = grey_arrays(0)
  np.savez(path, **stored)
  workdir = tmp_path / "run"
  config = own_config(f"file:{path}")
  first = train.train_and_evaluate(config, workdir)
  md5 = json.loads((workdir / "config.json").read_text())["dataset_md5"]
  changed = {**stored, "test": stored["test"].copy()}
  changed["test"][0, 0, 0] = 1 - changed["test"][0, 0, 0]
  np.savez(path, **changed)
  new_md5 = data.load_dataset(f"file:{path}").identity
  changed = f"dataset_md5: '{md5}' -> '{new_md5}'"
  with pytest.raises(checkpointing.WorkdirConfigError, match=changed):
    train.train_and_evaluate(config, workdir)
  with pytest.raises(restore.UsageError, match=f"is not the data of this run: .*{new_md5}.*{md5}"):
    restore.restore(workdir)
  np.savez(path, **stored)  # the run's data again: it resumes (here: it is finished)
  assert train.train_and_evaluate(config, workdir)["test_nll"] == first["test_nll"]
  assert restore.restore(workdir).experiment.config.dataset_md5 == md5


def run_module(module, *args):
  command = [sys.executable, "-m", module, *args]
  proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout


def test_evaluate_and_sample_a_run_on_own_data(own_run, tmp_path):
  """Re-scoring the run's best checkpoint the way experiments.evaluate does (restore, the run's
  examples, its estimators; fresh keys) and experiments.sample's arrays for data that are not
  square images."""
  workdir, results = own_run
  run = restore.restore(workdir, "best")
  assert run.experiment.dataset.num_pixels == 15
  x = restore.split_examples(run.experiment.dataset, "test", TINY["eval_num_examples"])
  eval_fn = scoring.make_eval_fn(run.experiment, TINY["eval_iw_samples"])
  key = jax.random.key(7)
  prior = run.state.params["prior"]
  log_z, _ = scoring.eval_log_partition(run.experiment, prior, jax.random.fold_in(key, 0))
  scores = scoring.evaluate_split(
    run.experiment, eval_fn, run.state, x, log_z, jax.random.fold_in(key, 1), progress=None
  )
  # Fresh importance samples and AIS of the same examples: they differ by less than the spread
  # between examples that nll_stderr measures, plus the AIS error of log Z.
  tolerance = 3 * (scores["nll_stderr"] + results["test_log_z_stderr"])
  assert abs(scores["nll"] - results["test_nll"]) < tolerance
  args = ("--num=5", "--population=32", "--temperatures=10", f"--out={tmp_path / 's.png'}")
  text = run_module("experiments.sample", f"--workdir={workdir}", *args)
  assert "not square images: no grid" in text and not (tmp_path / "s.png").exists()
  with np.load(tmp_path / "s.npz") as f:
    assert tuple(f["example_shape"]) == (3, 5) and f["x"].shape == (5, 15)
    assert f["z"].shape == (5, 200) and 0 <= f["x"].min() and f["x"].max() <= 1


# The README's bars-and-stripes example: its command line and the gap it reports.
README = REPO / "README.md"
BAS_OVERRIDES = {"dataset": "bars_and_stripes:4", "struct": "1-layer-nonlin", "num_steps": 4000}
BAS_README_GAP = 0.24  # nats above the entropy, as measured for the README (seed 0)


@pytest.mark.slow
def test_bars_and_stripes_test_nll_approaches_the_entropy(tmp_path):
  """The README's example: the test NLL of the trained model against the data's exact entropy
  log 30. No model can do better than the entropy in expectation (its NLL is the entropy plus
  KL(data ‖ model) ≥ 0), up to the estimate's noise: the test examples' spread (nll_stderr) and
  AIS's log Z error. The run must reach the README's gap, up to three standard errors."""
  readme = " ".join(README.read_text().replace("\\\n", " ").split())
  flags = " ".join(f"--config.{k}={v}" for k, v in BAS_OVERRIDES.items())
  assert f"--config=dvae_sharp {flags}" in readme and f"{BAS_README_GAP} nats above the" in readme
  config = config_lib.load_config("dvae_sharp")
  for key, value in BAS_OVERRIDES.items():
    config[key] = value
  results = train.train_and_evaluate(config, tmp_path)
  entropy = math.log(30)
  assert bars_and_stripes.entropy(4) == pytest.approx(entropy, abs=1e-12)
  noise = 3 * (results["test_nll_stderr"] + results["test_log_z_stderr"])
  gap = results["test_nll"] - entropy
  assert -noise < gap < BAS_README_GAP + 3 * results["test_nll_stderr"], results["test_nll"]
  # Less than half the NLL of the best model of independent pixels (each on with probability ½).
  assert results["test_nll"] < 16 * math.log(2) / 2
