"""Shared pytest set-up: a persistent XLA compilation cache and where the shared datasets are."""

import os
import pathlib

import jax
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# Compiling dominates the run time of small tests; the persistent cache lets repeated runs (and
# tests that build the same program) skip it.
jax.config.update("jax_compilation_cache_dir", str(REPO_ROOT / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def shared_data_dir() -> pathlib.Path:
  """The datasets folder of the tests: $DVAE_JAX_DATA_DIR, else ../shared/data beside the repo."""
  env = os.environ.get("DVAE_JAX_DATA_DIR")
  return pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  path = shared_data_dir()
  if not (path / "binarized_mnist.npz").exists():
    pytest.fail(f"test data not found in {path}; set DVAE_JAX_DATA_DIR to the shared data folder")
  return path
