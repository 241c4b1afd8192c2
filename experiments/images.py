"""Images of a run: model samples and reconstructions (jitted), tiled into PNG grids with pillow.

Grids only for data whose examples are square images (``Dataset.example_shape`` (s, s) or
(s, s, 1), :func:`image_side`); other data (any vectors, non-square images) gets the same values
as arrays in an ``.npz`` instead. ``experiment`` is an ``experiments.experiment.Experiment``,
``state`` a ``TrainState``.
"""

from __future__ import annotations

import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dvae_jax import posterior
from experiments import sharding


def image_side(example_shape: tuple[int, ...]) -> int | None:
  """The side s of examples that are square images (shape (s, s) or (s, s, 1)), else None."""
  shape = tuple(example_shape)
  if len(shape) == 3 and shape[2] == 1:
    shape = shape[:2]
  return shape[0] if len(shape) == 2 and shape[0] == shape[1] else None


def tile(images: np.ndarray, num_cols: int, *, pad: int = 1) -> np.ndarray:
  """Tiles square images into one grid image.

  Args:
    images: [n, s, s] or [n, s * s] (row-major) values in [0, 1]; e.g. [n, 784] for 28 × 28.
    num_cols: images per row.
    pad: pixels of (white) border between and around images.

  Returns:
    [rows * (s + pad) + pad, num_cols * (s + pad) + pad] uint8 grey image (255 = white). Ink
    (value 1) is drawn black on white.
  """
  images = np.asarray(images, dtype=np.float32)
  if images.ndim == 2:
    side = math.isqrt(images.shape[1])
    if side * side != images.shape[1]:
      raise ValueError(f"images of {images.shape[1]} values are not square; give [n, s, s]")
    images = images.reshape(-1, side, side)
  if images.ndim != 3 or images.shape[1] != images.shape[2]:
    raise ValueError(f"need square images [n, s, s] or [n, s * s], got shape {images.shape}")
  if images.shape[0] == 0 or num_cols < 1:
    raise ValueError(
      f"need at least one image and num_cols >= 1, got {images.shape[0]}, {num_cols}"
    )
  n, side = images.shape[0], images.shape[1]
  num_rows = -(-n // num_cols)
  cell = side + pad
  grid = np.ones((num_rows * cell + pad, num_cols * cell + pad), np.float32)
  for i in range(n):
    r, c = divmod(i, num_cols)
    grid[pad + r * cell : pad + r * cell + side, pad + c * cell : pad + c * cell + side] = (
      1.0 - np.clip(images[i], 0.0, 1.0)
    )
  return np.round(255 * grid).astype(np.uint8)


def save_png(path: str | os.PathLike, grid: np.ndarray) -> None:
  """Writes a uint8 [H, W] image as PNG (atomically: temporary file, then rename)."""
  from PIL import Image

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  Image.fromarray(np.ascontiguousarray(grid, np.uint8)).save(tmp, format="PNG")
  os.replace(tmp, path)


def interleave(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
  """[2n, num_pixels]: original i followed by its reconstruction, for side-by-side grids."""
  originals = np.asarray(originals).reshape(originals.shape[0], -1)
  reconstructions = np.asarray(reconstructions).reshape(reconstructions.shape[0], -1)
  if originals.shape != reconstructions.shape:
    raise ValueError(f"shape mismatch: {originals.shape} vs {reconstructions.shape}")
  out = np.empty((2 * originals.shape[0], originals.shape[1]), np.float32)
  out[0::2], out[1::2] = originals, reconstructions
  return out


def model_samples(experiment, params, batch_stats, sampler_state, key, num: int):
  """[num', num_pixels] decoder means p(x|z) of prior samples z: the sampler's population (its first
  ``num``) for the RBM, fresh draws for the factorial prior."""
  prior = params["prior"]
  if experiment.sampler is not None:
    z = sampler_state.z[:num]
  else:
    z = jax.random.bernoulli(key, jax.nn.sigmoid(prior.logits), (num, prior.logits.shape[0]))
  return decode_means(experiment, params, batch_stats, z)


def decode_means(experiment, params, batch_stats, z: jax.Array) -> jax.Array:
  """[n, num_pixels] decoder means sigmoid(logits of p(x|z)) of binary latents ``z``
  [n, num_latent]."""
  model = nnx.merge(experiment.eval_graphdef, params["model"], batch_stats)
  return jax.nn.sigmoid(model.decode(z.astype(jnp.float32), use_running_average=True))


def reconstructions(experiment, params, batch_stats, key, x: jax.Array) -> jax.Array:
  """[n, num_pixels] decoder means of binary z ~ q(z|x) through the encoder hierarchy
  (math.md §5)."""
  model = nnx.merge(experiment.eval_graphdef, params["model"], batch_stats)
  post = posterior.sample_hierarchy(
    key, model, x, 1, posterior.bernoulli_group, use_running_average=True
  )
  return jax.nn.sigmoid(model.decode(post.zeta[0], use_running_average=True))


def make_image_fn(experiment):
  """Jitted ``(state, key, originals [m, P]) -> (samples [n, P], reconstructions [m, P])`` with
  P = num_pixels."""
  num = experiment.config.num_image_samples

  def image_fn(state, key, originals):
    samples = model_samples(
      experiment,
      state.params,
      state.batch_stats,
      state.sampler_state,
      jax.random.fold_in(key, 0),
      num,
    )
    recon = reconstructions(
      experiment, state.params, state.batch_stats, jax.random.fold_in(key, 1), originals
    )
    return samples, recon

  return jax.jit(image_fn, out_shardings=sharding.replicated(experiment.mesh))


def write_images(experiment, image_fn, state, key, workdir, step, writer) -> None:
  """Writes ``samples_STEP.png`` and ``reconstructions_STEP.png`` (and TensorBoard images); for
  data that are not square images, ``samples_STEP.npz`` instead (see :func:`write_arrays`)."""
  num = experiment.config.num_image_samples
  cols = max(1, int(math.sqrt(num)))
  originals = experiment.dataset.valid[: max(1, num // 2)].astype(np.float32)
  samples, recon = image_fn(
    state, key, sharding.put_global(originals, sharding.replicated(experiment.mesh))
  )
  samples, recon = sharding.to_host(samples), sharding.to_host(recon)
  if jax.process_index() != 0:
    return
  shape = experiment.dataset.example_shape
  if image_side(shape) is None:
    write_arrays(
      pathlib.Path(workdir) / f"samples_{step:08d}.npz",
      shape,
      samples=samples,
      originals=originals,
      reconstructions=recon,
    )
    return
  samples_grid = tile(samples, cols)
  recon_grid = tile(interleave(originals, recon), 2 * max(1, cols // 2))
  save_png(pathlib.Path(workdir) / f"samples_{step:08d}.png", samples_grid)
  save_png(pathlib.Path(workdir) / f"reconstructions_{step:08d}.png", recon_grid)
  writer.write_image(step, "samples", samples_grid)
  writer.write_image(step, "reconstructions", recon_grid)


def write_arrays(path: str | os.PathLike, example_shape, **arrays: np.ndarray) -> None:
  """Writes ``arrays`` (rows of examples, [n, num_pixels]) and ``example_shape`` (int64, the shape
  that ``x.reshape(-1, *example_shape)`` restores) to an ``.npz`` (atomically)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "wb") as f:
    np.savez(f, example_shape=np.asarray(example_shape, np.int64), **arrays)
  os.replace(tmp, path)
