"""Batching and binarization (math.md §6). The data order is a pure function of (seed, step), so an
interrupted run resumes it exactly."""

from __future__ import annotations

import functools

import jax
import numpy as np

from dvae_jax.data.base import Dataset


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(seed: int, step: int, batch_size: int, num_examples: int) -> np.ndarray:
  """Indices [batch_size] of the training examples of global batch ``step``.

  The training set is visited epoch by epoch, each in the order of a permutation seeded by
  ``(seed, epoch)``; batch ``step`` holds the consecutive positions ``step * batch_size + i`` of
  that endless sequence (a batch may straddle two epochs).
  """
  return slab_indices(seed, step, 1, batch_size, num_examples)[0]


def slab_indices(
  seed: int, step: int, num_batches: int, batch_size: int, num_examples: int
) -> np.ndarray:
  """Indices [num_batches, batch_size] of the global batches ``step .. step + num_batches - 1``:
  row ``i`` is ``batch_indices(seed, step + i, ...)`` (the same order, one call for a slab of
  batches that fused train steps consume on the device)."""
  if batch_size < 1 or num_examples < 1 or step < 0 or num_batches < 1:
    raise ValueError(
      "need batch_size, num_examples, num_batches >= 1 and step >= 0, got "
      f"{batch_size}, {num_examples}, {num_batches}, {step}"
    )
  positions = step * batch_size + np.arange(num_batches * batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty(positions.shape, dtype=np.int64)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = _epoch_permutation(seed, int(epoch), num_examples)[offsets[sel]]
  return out.reshape(num_batches, batch_size)


def train_batch(dataset: Dataset, seed: int, step: int, batch_size: int) -> np.ndarray:
  """[batch_size, 784] float32 training batch ``step`` (grey values if dynamically binarized)."""
  idx = batch_indices(seed, step, batch_size, dataset.train.shape[0])
  return dataset.train[idx].astype(np.float32)


def binarize(key: jax.Array, probs: jax.Array) -> jax.Array:
  """Dynamic binarization x ~ Bernoulli(probs) (math.md §6); same shape and dtype as ``probs``.

  Use one key for the whole global batch: with JAX's partitionable threefry (the default) the
  draw does not depend on how the batch is sharded across devices.
  """
  return jax.random.bernoulli(key, probs).astype(probs.dtype)


def binarize_once(probs: np.ndarray, seed: int, stream: int) -> np.ndarray:
  """Fixed Bernoulli draw of grey images (OMNIGLOT validation / test, math.md §6): the same
  [n, 784] uint8 for the same ``(seed, stream)``."""
  rng = np.random.default_rng([seed, stream])
  return (rng.random(probs.shape, dtype=np.float32) < probs).astype(np.uint8)
