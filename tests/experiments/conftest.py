"""A tiny finished run shared by the tests of experiments.evaluate and experiments.sample."""

import pathlib

import pytest
from test_train import tiny_config

from experiments import train


@pytest.fixture(scope="session")
def tiny_run(data_dir, tmp_path_factory) -> tuple[pathlib.Path, dict]:
  """(workdir, results) of a 4-step dvae_sharp run: checkpoints at steps 2 and 4 (best: the better
  validation step), 32 test examples scored with 8 importance samples."""
  workdir = tmp_path_factory.mktemp("tiny_run")
  config = tiny_config(
    "dvae_sharp", data_dir, eval_num_examples=32, eval_iw_samples=8, ais_num_chains=16
  )
  return workdir, train.train_and_evaluate(config, workdir)
