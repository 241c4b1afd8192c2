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
from experiments import images

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
  params, stats = state.params, state.batch_stats
  # Away from the initial weights (all decoded means near the pixel means): a random decoder.
  params = jax.tree_util.tree_map_with_path(
    lambda path, v: v + 0.3 * jax.random.normal(jax.random.key(len(str(path))), v.shape)
    if "kernel" in jax.tree_util.keystr(path) else v,
    params,
  )
  state = state._replace(params=params)
  key = jax.random.key(5)
  writer = _Writer()
  images.write_images(experiment, images.make_image_fn(experiment), state, key, tmp_path, 3, writer)
  samples_png = np.asarray(Image.open(tmp_path / "samples_00000003.png"))
  recon_png = np.asarray(Image.open(tmp_path / "reconstructions_00000003.png"))
  np.testing.assert_array_equal(writer.images["samples"][1], samples_png)
  np.testing.assert_array_equal(writer.images["reconstructions"][1], recon_png)

  if experiment.sampler is not None:  # the population's first chains
    z = jnp.concatenate([state.sampler_state.z1, state.sampler_state.z2], -1)[:NUM]
  else:
    logits = params["prior"].logits
    z = jax.random.bernoulli(jax.random.fold_in(key, 0), jax.nn.sigmoid(logits), (NUM, len(logits)))
  want = np.asarray(images.decode_means(experiment, params, stats, z))
  # One grey level is 1/255; rounding to it leaves at most half of that.
  np.testing.assert_allclose(cells(samples_png, NUM, 2), want, atol=0.5 / 255 + 1e-6)
  assert want.std() > 0.05  # decoded means that differ from image to image, so the check has teeth

  originals = experiment.dataset.valid[: NUM // 2].astype(np.float64)
  model = nnx.merge(experiment.eval_graphdef, params["model"], stats)
  x = jnp.asarray(originals, jnp.float32)
  post = posterior.sample_hierarchy(
    model, x, jax.random.fold_in(key, 1), 1, posterior.bernoulli_group, use_running_average=True
  )
  recon = np.asarray(images.decode_means(experiment, params, stats, post.zeta[0]))
  got = cells(recon_png, NUM, 2)
  np.testing.assert_array_equal(got[0::2], originals)
  np.testing.assert_allclose(got[1::2], recon, atol=0.5 / 255 + 1e-6)
