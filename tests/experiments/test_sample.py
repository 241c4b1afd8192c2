"""End-to-end tests of python -m experiments.sample on a tiny run."""

import numpy as np
import pytest
from PIL import Image
from test_evaluate import checksums, run_module

from experiments import images, restore


def sample(workdir, out_dir, *args, name="s"):
  png, npz = out_dir / f"{name}.png", out_dir / f"{name}.npz"
  proc = run_module(
    "experiments.sample",
    f"--workdir={workdir}",
    "--num=6",
    "--population=32",
    "--temperatures=20",
    f"--out={png}",
    f"--npz={npz}",
    *args,
  )
  assert proc.returncode == 0, proc.stderr
  return proc.stdout, np.asarray(Image.open(png)), dict(np.load(npz))


def test_sample_writes_grid_and_npz_of_fresh_prior_samples(tiny_run, tmp_path):
  workdir, _ = tiny_run
  before = checksums(workdir)
  text, grid, arrays = sample(workdir, tmp_path, "--seed=1", "--step=latest")
  assert checksums(workdir) == before
  assert "population annealing: 32 replicas, 20 temperatures" in text
  assert "wrote" in text and "6 Bernoulli means" in text
  z, x = arrays["z"], arrays["x"]
  run = restore.restore(workdir, "latest")
  num_latent = run.state.params["prior"].w.shape[0] + run.state.params["prior"].w.shape[1]
  assert z.shape == (6, num_latent) and z.dtype == np.uint8 and set(np.unique(z)) <= {0, 1}
  assert x.shape == (6, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
  # x are the decoder means of z (an independent decode of the saved z).
  means = images.decode_means(run.experiment, run.state.params, run.state.batch_stats, z)
  np.testing.assert_allclose(x, np.asarray(means), atol=1e-6)
  # A fresh anneal, not the training population (16 chains of 200 bits: a repeat is implausible).
  population = np.concatenate(
    [np.asarray(run.state.sampler_state.z1), np.asarray(run.state.sampler_state.z2)], axis=-1
  )
  assert not any((population == row).all(1).any() for row in z)
  # Grid: round(√6) = 2 columns of 28-pixel images with 1-pixel borders; ink black on white.
  assert grid.shape == (3 * 29 + 1, 2 * 29 + 1) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[1:29, 1:29], np.round(255 * (1 - x[0].reshape(28, 28))))
  # The seed fixes the draw; another seed draws others.
  _, _, again = sample(workdir, tmp_path, "--seed=1", "--step=latest", name="again")
  np.testing.assert_array_equal(again["z"], z)
  _, _, other = sample(workdir, tmp_path, "--seed=2", "--step=latest", name="other")
  assert (other["z"] != z).any()


def test_sample_binary_draws(tiny_run, tmp_path):
  text, grid, arrays = sample(tiny_run[0], tmp_path, "--binary")
  assert "6 binary draws" in text
  assert arrays["x"].dtype == np.uint8 and set(np.unique(arrays["x"])) <= {0, 1}
  assert set(np.unique(grid)) <= {0, 255}


@pytest.mark.parametrize(
  "args, message",
  [
    (["--num=0"], "invalid --num=0: must be an integer >= 1"),
    (["--temperatures=1"], "invalid --temperatures=1: must be an integer >= 2"),
    (["--out=s.jpg"], "invalid --out='s.jpg': must name a .png file"),
    (["--step=7"], "holds no checkpoint of step 7"),
  ],
)
def test_sample_refuses_bad_flags(tiny_run, tmp_path, args, message):
  proc = run_module("experiments.sample", f"--workdir={tiny_run[0]}", *args)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert message in proc.stderr, proc.stderr
