"""Tests of the command line (python -m experiments.run) in subprocesses: refusals of bad input."""

import os
import pathlib
import subprocess
import sys

import cli_cases
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_cli(*args, env=None):
  full_env = {**os.environ, **(env or {})}
  return subprocess.run(
    [sys.executable, "-m", "experiments.run", *args],
    cwd=REPO,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=300,
  )


BAD_INPUT = [
  (["--config=dvae_sharpp"], "unknown config 'dvae_sharpp'; valid configs: dvae, dvae_pp_exp"),
  (["--config=dvae_sharp", "--config.samplr=pa"], "unknown config key 'samplr'"),
  (["--config=dvae_sharp", "--config.sampler=foo"], "invalid sampler 'foo'; valid values: pa, pcd"),
  (["--config=dvae_sharp", "--config.k=0"], "invalid k 0: must be an integer >= 1"),
]


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory):
  """{args: (Result, its workdir)} of every BAD_INPUT case, run in one process (cli_cases); the
  real process's exit path is checked by test_missing_data_offline_says_where_it_looked."""
  root = tmp_path_factory.mktemp("refused")
  workdirs = [root / f"w{i}" for i in range(len(BAD_INPUT))]
  cases = [[*args, f"--workdir={w}"] for (args, _), w in zip(BAD_INPUT, workdirs, strict=True)]
  results = cli_cases.run_cases("experiments.run", cases)
  return {tuple(args): (r, w) for (args, _), r, w in zip(BAD_INPUT, results, workdirs, strict=True)}


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_bad_input_is_refused_with_a_clear_message(bad_input_results, args, message):
  result, workdir = bad_input_results[tuple(args)]
  assert result.returncode != 0
  assert message in result.stderr, result.stderr
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def test_missing_data_offline_says_where_it_looked(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  proc = run_cli(
    "--config=dvae",
    f"--workdir={tmp_path / 'w'}",
    f"--data_dir={empty}",
    env={"DVAE_JAX_OFFLINE": "1"},
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "dataset 'binarized_mnist' not found" in proc.stderr and str(empty) in proc.stderr
