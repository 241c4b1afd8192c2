"""Tests of the command line (python -m experiments.run) in subprocesses: refusals of bad input."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_cli(*args, env=None):
  full_env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(REPO / ".jax_cache"), **(env or {})}
  return subprocess.run(
    [sys.executable, "-m", "experiments.run", *args],
    cwd=REPO,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize(
  "args, message",
  [
    (["--config=dvae_sharpp"], "unknown config 'dvae_sharpp'; valid configs: dvae, dvae_pp_exp"),
    (["--config=dvae_sharp", "--config.samplr=pa"], "unknown config key 'samplr'"),
    (
      ["--config=dvae_sharp", "--config.sampler=foo"],
      "invalid sampler 'foo'; valid values: pa, pcd",
    ),
    (["--config=dvae_sharp", "--config.k=0"], "invalid k 0: must be an integer >= 1"),
  ],
)
def test_bad_input_is_refused_with_a_clear_message(args, message, tmp_path):
  proc = run_cli(*args, f"--workdir={tmp_path / 'w'}")
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()


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
