"""Helpers of the tests of the user's own data: array files and a tiny tensorflow-datasets dataset
prepared from NumPy arrays, offline and without TensorFlow (a builder with plain tensor features,
written in ArrayRecord format)."""

import pathlib

import numpy as np
import tensorflow_datasets as tfds

# {builder config name: {split: {feature: [n, ...] array}}}, set by `prepare_tfds` before building.
_ARRAYS: dict[str, dict[str, dict[str, np.ndarray]]] = {}


class OwnTiny(tfds.core.GeneratorBasedBuilder):
  """A dataset named 'own_tiny' with configs; each config's splits and features are its arrays."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(name=name) for name in ("grey", "binary", "two_features", "no_test")
  ]

  def _info(self):
    first = _ARRAYS[self.builder_config.name]["train"]
    features = {k: tfds.features.Tensor(shape=v.shape[1:], dtype=v.dtype) for k, v in first.items()}
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in _ARRAYS[self.builder_config.name]}

  def _generate_examples(self, split):
    arrays = _ARRAYS[self.builder_config.name][split]
    n = len(next(iter(arrays.values())))
    for i in range(n):
      yield i, {k: v[i] for k, v in arrays.items()}


def prepare_tfds(data_dir: pathlib.Path, config: str, arrays) -> pathlib.Path:
  """Prepares ``own_tiny/CONFIG`` in ``data_dir`` (ArrayRecord) from ``{split: {feature: array}}``;
  returns its version folder."""
  _ARRAYS[config] = arrays
  builder = OwnTiny(config=config, data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return pathlib.Path(str(builder.data_path))


def rows_sorted(x: np.ndarray) -> np.ndarray:
  """The rows of ``x`` [n, d] in lexicographic order (TFDS stores examples in a hashed order)."""
  x = np.asarray(x).reshape(len(x), -1)
  return x[np.lexsort(x.T[::-1])]


def grey_arrays(seed: int, shape=(3, 5), sizes=(40, 12, 10)) -> dict[str, np.ndarray]:
  """Grey float32 values in [0, 1] of examples of ``shape``: {'train', 'valid', 'test'}."""
  rng = np.random.default_rng(seed)
  return {
    s: rng.random((n, *shape)).astype(np.float32)
    for s, n in zip(("train", "valid", "test"), sizes, strict=True)
  }
