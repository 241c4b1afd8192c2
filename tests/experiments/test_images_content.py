"""The runner's image grids (experiments/images.py ``write_images``, as experiments/train.py calls
it) hold the right pictures: each cell equals ``decode_means`` of the model's latents, not merely a
PNG of the right size. For the RBM the samples are the sampler's population (its first chains),
for the factorial prior fresh draws of the prior; the reconstructions follow each validation
original, decoded from z ~ q(z|x) with the grid's key.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from test_train import tiny_config

from dvae_jax import posterior
from experiments import experiment as experiment_lib
from experiments import images, restore, train_loop

NUM = 4  # TINY's num_image_samples: a 2 × 2 grid of samples, 2 originals beside 2 reconstructions


class _Writer:
  def __init__(self):
    self.images = {}

  def write_image(self, step, name, grid):
    self.images[name] = (step, grid)


def cells(grid: np.ndarray, num: int, cols: int) -> np.ndarray:
  """[num, 784] the images of a ``tile`` grid (pad 1), as values in [0, 1] (ink 1)."""
  out = []
  for i in range(num):
    r, c = divmod(i, cols)
    cell = grid[1 + 29 * r : 29 * r + 29, 1 + 29 * c : 29 * c + 29]
    out.append(1.0 - cell.astype(np.float64).reshape(-1) / 255)
  return np.stack(out)


@pytest.mark.parametrize("name", ["dvae_sharp", "dvae_sharp_factorial"])
def test_grids_hold_decoded_means(name, data_dir, tmp_path):
  config = tiny_config(name, data_dir, num_image_samples=NUM)
  experiment, state = experiment_lib.build(config)
  params = state.params
  # Away from the initial weights (all decoded means near the pixel means): a random decoder.
  params = jax.tree_util.tree_map_with_path(
    lambda path, v: v + 0.3 * jax.random.normal(jax.random.key(len(str(path))), v.shape)
    if "kernel" in jax.tree_util.keystr(path) else v,
    params,
  )
  state = state._replace(params=params)
  assert config.num_image_samples == NUM
  key = jax.random.key(5)
  writer = _Writer()
  images.write_images(experiment, images.make_image_fn(experiment), state, key, tmp_path, 3, writer)
  for kind in ("samples", "reconstructions"):  # the PNG and TensorBoard's image are the same grid
    np.testing.assert_array_equal(writer.images[kind][1], png(tmp_path, kind, 3))
  assert_grids_hold_decoded_means(experiment, state, key, tmp_path, 3)


def test_the_runs_grids_hold_decoded_means_of_its_saved_model(tiny_run):
  """The grids a finished run wrote at its last step, against its checkpoint of that step (the
  whole train state: weights and the sampler's chains) and the runner's image key."""
  workdir, _ = tiny_run
  run = restore.restore(workdir, "4")
  assert run.which == "latest" and run.step == 4
  config = run.experiment.config
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed + 1), 4), 2)
  grids = workdir / train_loop.IMAGES_DIR
  assert_grids_hold_decoded_means(run.experiment, run.state, key, grids, 4)


def png(folder, kind: str, step: int) -> np.ndarray:
  with Image.open(folder / f"{kind}_{step:08d}.png") as image:
    return np.asarray(image)


def assert_grids_hold_decoded_means(experiment, state, key, folder, step):
  """The samples and reconstructions PNGs of ``step`` in ``folder`` against ``decode_means``."""
  num = experiment.config.num_image_samples
  cols = max(1, int(np.sqrt(num)))
  params, stats = state.params, state.batch_stats
  if experiment.sampler is not None:  # the population's first chains
    z = state.sampler_state.z[:num]
  else:
    logits = params["prior"].logits
    z = jax.random.bernoulli(jax.random.fold_in(key, 0), jax.nn.sigmoid(logits), (num, len(logits)))
  want = np.asarray(images.decode_means(experiment, params, stats, z))
  # One grey level is 1/255; rounding to it leaves at most half of that.
  got = cells(png(folder, "samples", step), num, cols)
  np.testing.assert_allclose(got, want, atol=0.5 / 255 + 1e-6)
  assert want.std() > 0.01  # decoded means that differ between images, so the check has teeth

  originals = experiment.dataset.valid[: max(1, num // 2)].astype(np.float64)
  model = nnx.merge(experiment.eval_graphdef, params["model"], stats)
  x = jnp.asarray(originals, jnp.float32)
  post = posterior.sample_hierarchy(
    jax.random.fold_in(key, 1), model, x, 1, posterior.bernoulli_group, use_running_average=True
  )
  recon = np.asarray(images.decode_means(experiment, params, stats, post.zeta[0]))
  got = cells(png(folder, "reconstructions", step), 2 * len(originals), 2 * max(1, cols // 2))
  np.testing.assert_array_equal(got[0::2], originals)
  np.testing.assert_allclose(got[1::2], recon, atol=0.5 / 255 + 1e-6)
