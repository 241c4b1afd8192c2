"""A dataset from the user's arrays: the one path of every source outside the papers' datasets (an
array file ``file:PATH``, a tensorflow-datasets dataset ``tfds:NAME``, the generated
``bars_and_stripes:SIDE``). The conventions, math.md §6 extended to any data:

* **Shape.** Examples of any shape: a split is ``[n, *example_shape]``, flattened to rows of
  ``prod(example_shape)`` values in row-major order; every split has the same shape, which the
  ``Dataset`` records (``example_shape``), so that images can be drawn as images.
* **Values.** In {0, 1} (integers, booleans or floats), or grey values in [0, 1] (floats). Grey
  values are binarized, x ~ Bernoulli(value): ``'dynamic'`` (the default, as OMNIGLOT): the
  training split anew at every batch (``batching.binarize``), validation and test once with a
  fixed seed; ``'static'``: every split once with a fixed seed (as Larochelle's binarized MNIST).
  A split already in {0, 1} is the same under both.
* **Splits.** ``train`` is needed. A missing ``test``, and then a missing ``valid``, are each
  ``HELD_OUT_FRACTION`` (10 %, at least one example) of the examples given as ``train``: one fixed
  uniform permutation (seed ``SPLIT_SEED``) gives test its first rows and validation the next, so
  every run on the same data holds out the same examples.

Bad arrays raise ``DataFileError`` through the caller's ``bad_file`` (problem → message naming the
file: ``checks.bad_file_message``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from dvae_jax.data import checks
from dvae_jax.data.base import DataFileError, Dataset
from dvae_jax.data.batching import binarize_once

SPLITS = ("train", "valid", "test")
BINARIZATIONS = ("dynamic", "static")
HELD_OUT_FRACTION = 0.1
SPLIT_SEED = 0
# Streams of the one-off binarizations (``batching.binarize_once``): validation 0 and test 1 as
# OMNIGLOT's, a statically binarized training split 2 (as restore's one-off draw of a dynamic one).
_STREAMS = {"valid": 0, "test": 1, "train": 2}


def check_binarization(binarization: str) -> str:
  """``binarization`` if it is one of :data:`BINARIZATIONS`; ValueError naming them otherwise."""
  if binarization not in BINARIZATIONS:
    raise ValueError(
      f"invalid binarization {binarization!r}; valid values: {', '.join(BINARIZATIONS)}"
    )
  return binarization


def held_out_rows(num_examples: int, missing: tuple[str, ...]) -> dict[str, np.ndarray]:
  """Sorted row indices of the training examples held out as each ``missing`` split.

  Args:
    num_examples: rows of the array given as ``train``.
    missing: the splits to draw, of ('test', 'valid'), in that order.

  Returns:
    ``{split: [k] int64}``, disjoint, k = max(1, round(HELD_OUT_FRACTION * num_examples)): test
    takes the first k of the permutation seeded by ``SPLIT_SEED``, validation the next k.

  Raises:
    ValueError: fewer than k + 1 rows per split drawn (training would be left empty).
  """
  k = max(1, round(HELD_OUT_FRACTION * num_examples))
  if num_examples < k * len(missing) + 1:
    raise ValueError(
      f"has {num_examples} examples: too few to hold out {' and '.join(missing)} "
      f"({HELD_OUT_FRACTION:.0%} each, at least one) and keep training examples; give those "
      "splits as arrays"
    )
  order = np.random.default_rng(SPLIT_SEED).permutation(num_examples)
  return {split: np.sort(order[i * k : (i + 1) * k]) for i, split in enumerate(missing)}


def _split_problem(x: np.ndarray) -> str | None:
  problem = checks.dtype_problem(x, "unit")
  if problem:
    return problem
  if x.ndim >= 1 and x.shape[0] == 0:
    return f"is empty (shape {x.shape}): every split needs at least one example"
  if x.ndim < 2 or x[0].size < 1:
    return f"has shape {x.shape}; expected [n, ...]: one example of at least one value per row"
  return checks.values_problem(x, "unit")


def dataset_from_arrays(
  name: str,
  raw: Mapping[str, np.ndarray],
  *,
  binarization: str,
  binarization_seed: int,
  source: str,
  files: tuple[str, ...],
  bad_file: Callable[[str], str],
  describe: Callable[[str], str] = lambda split: f"array {split!r}",
) -> Dataset:
  """Checks the user's splits, completes them and binarizes them (see the module doc).

  Args:
    name: the dataset's name (``PREFIX:ARGUMENT``).
    raw: ``{'train': [n, *shape], 'valid'?: [m, *shape], 'test'?: [l, *shape]}`` of values in
      {0, 1} or [0, 1].
    binarization: 'dynamic' or 'static' (for grey values).
    binarization_seed: seed of the one-off binarizations.
    source, files: as ``Dataset``'s.
    bad_file: ``problem -> message`` of the DataFileError raised for bad arrays.
    describe: ``split -> how the message names its array`` (default ``array 'train'``).

  Returns:
    A ``Dataset`` with ``example_shape`` and ``identity`` (``checks.content_md5`` of the splits,
    the shape and the binarization) set.

  Raises:
    DataFileError: no training array, an array of a wrong dtype, shape or values (NaN, outside
      [0, 1]), an empty split, splits of different example shapes, too few examples to hold out.
  """
  check_binarization(binarization)
  if "train" not in raw:
    raise DataFileError(bad_file(f"it has no training array (found {sorted(raw)})"))
  arrays = {split: np.asarray(raw[split]) for split in SPLITS if split in raw}
  for split, x in arrays.items():
    problem = _split_problem(x)
    if problem:
      raise DataFileError(bad_file(f"{describe(split)} {problem}"))
  shape = tuple(int(d) for d in arrays["train"].shape[1:])
  for split, x in arrays.items():
    if x.shape[1:] != shape:
      raise DataFileError(
        bad_file(
          f"{describe(split)} has examples of shape {x.shape[1:]} but {describe('train')} has "
          f"{shape}: every split needs the same shape"
        )
      )
  missing = tuple(s for s in ("test", "valid") if s not in arrays)
  if missing:
    train = arrays["train"]
    try:
      rows = held_out_rows(train.shape[0], missing)
    except ValueError as err:
      raise DataFileError(bad_file(f"{describe('train')} {err}")) from None
    keep = np.ones(train.shape[0], bool)
    for split, idx in rows.items():
      arrays[split] = train[idx]
      keep[idx] = False
    arrays["train"] = train[keep]
  splits = {}
  for split in SPLITS:
    x = arrays[split].reshape(arrays[split].shape[0], -1)
    if checks.is_binary(x):
      splits[split] = np.ascontiguousarray(x, np.uint8)
    elif split == "train" and binarization == "dynamic":
      splits[split] = np.ascontiguousarray(x, np.float32)
    else:
      splits[split] = binarize_once(x.astype(np.float32), binarization_seed, _STREAMS[split])
  dynamic = splits["train"].dtype != np.uint8
  return Dataset(
    name,
    **splits,
    dynamic_binarization=dynamic,
    source=source,
    files=files,
    example_shape=shape,
    identity=checks.content_md5(splits, shape, dynamic),
  )
