"""Shared pytest set-up: a persistent XLA compilation cache and where the whole datasets are."""

import os
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# Compiling is most of the suite's time (a first run: ~85% of it in XLA compilation and lowering).
# The persistent cache lets a program built again (by another test module after the caches are
# freed, another worker, or a command-line run in a subprocess) be read instead of compiled. Every
# program is kept, however quick to compile: the suite compiles ~9,000 small ones (single
# operations run eagerly, 30% of its compile time), most of them again in each process. Set in the
# environment, so that every process a test starts inherits it.
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(REPO_ROOT / ".jax_cache")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402  (after the environment it reads)
import pytest  # noqa: E402

# For this process too, should jax have been imported before this file (by a plugin).
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """Frees the compiled programs that JAX's in-memory caches hold once a test module is done.

  Every XLA:CPU executable keeps its code in its own memory mappings (≈ 3–30 each), and the
  jit caches keep every executable compiled for a module-level function alive for the life of the
  process. One pytest process compiling the whole suite passed the kernel's limit on mappings per
  process (vm.max_map_count, 65,530 by default), after which LLVM's code allocation fails and the
  compiler segfaults. Programs a later module needs again come back from the persistent cache.
  """
  yield
  jax.clear_caches()


# The files of the whole datasets (found through $DVAE_JAX_DATA_DIR, which CI sets);
# tests/data/subsets.npz holds a few hundred real images of each split of each (see
# tests/data/README.md).
FULL_DATA_FILES = (
  "binarized_mnist.npz",
  "omniglot_28x28_rebuilt.npz",
  "caltech101_silhouettes_28.npz",
)
SUBSETS = REPO_ROOT / "tests" / "data" / "subsets.npz"


def find_full_data_dir() -> pathlib.Path | None:
  """The first folder of the data search path that holds every whole dataset
  (``dvae_jax.data.data_search_path``: $DVAE_JAX_DATA_DIR alone if set, else the download cache
  and TFDS's folder)."""
  from dvae_jax import data

  for folder, _ in data.data_search_path():
    if all((folder / name).is_file() for name in FULL_DATA_FILES):
      return folder
  return None


def full_data_reason() -> str:
  from dvae_jax import data

  where = ", ".join(str(folder) for folder, _ in data.data_search_path())
  return (
    f"needs the whole datasets ({', '.join(FULL_DATA_FILES)}), not found in {where}; put them in "
    "a folder and set DVAE_JAX_DATA_DIR=FOLDER (or place them in the cache folder)"
  )


def write_subsets(folder: pathlib.Path) -> pathlib.Path:
  """Writes the committed subsets in the loader's formats (the layouts of the whole datasets)."""
  import numpy as np

  folder.mkdir(parents=True, exist_ok=True)
  with np.load(SUBSETS) as f:

    def get(name, split):
      return np.unpackbits(f[f"{name}/{split}"], axis=-1, count=784)

    def extras(name, keys):
      return {k: f[f"{name}/{k}"] for k in keys if f"{name}/{k}" in f.files}

    splits = ("train", "valid", "test")
    np.savez(folder / "binarized_mnist.npz", **{s: get("binarized_mnist", s) for s in splits})
    np.savez(
      folder / "caltech101_silhouettes_28.npz",
      **{s: get("caltech101_silhouettes", s) for s in splits},
      **extras("caltech101_silhouettes", [f"{s}_labels" for s in splits] + ["classnames"]),
    )
    np.savez(
      folder / "omniglot_28x28_rebuilt.npz",
      train=f["omniglot/train"],  # grey, as in the whole file
      test=f["omniglot/test"],
      **extras("omniglot", ["train_alphabet", "test_alphabet", "alphabet_names"]),
    )
  return folder


@pytest.fixture(scope="session")
def full_data_dir() -> pathlib.Path:
  """A folder with the whole datasets; skips the test (saying how to provide them) otherwise."""
  folder = find_full_data_dir()
  if folder is None:
    pytest.skip(full_data_reason())
  return folder


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> pathlib.Path:
  """A folder with all three datasets: the whole ones if on the search path, else the committed
  subsets of tests/data (so that a clone with no data and no network runs the suite)."""
  return find_full_data_dir() or write_subsets(tmp_path_factory.mktemp("subsets"))



def pytest_collection_modifyitems(config, items):
  """Marks ``whole_data`` every test that needs the whole datasets (the ``full_data_dir``
  fixture; they skip without them). CI runs the suite once with the data search path pointed at
  empty folders, where every other test must pass on the committed subsets, then these tests
  again with the whole datasets."""
  del config
  for item in items:
    if "full_data_dir" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.whole_data)
