"""Datasets: those of the DVAE papers (binarized MNIST, OMNIGLOT 28×28, Caltech-101 Silhouettes)
and the user's own binary or [0, 1] data of any shape.

Splits and binarization follow math.md §6 (each dataset's module says how: ``mnist``, ``omniglot``,
``caltech``); the papers' images are returned as rows of 784 pixels in row-major 28×28 order. The
user's data (``arrays``: shapes, values, splits, binarization) comes from an array file
(``file:PATH``, ``array_file``), a dataset prepared by tensorflow-datasets
(``tfds:NAME[:CONFIG]``, ``tfds``) or the generated bars and stripes (``bars_and_stripes:SIDE``),
its examples flattened to rows of ``Dataset.num_pixels`` values (shape in ``example_shape``).

  ds = load_dataset("binarized_mnist", data_dir=None)   # a Dataset: train / valid / test arrays
  ds = load_dataset("file:my.npz", binarization="static")
  x = train_batch(ds, seed, step, batch_size)           # [batch, num_pixels] float32, by step

Modules, one concern each: ``base`` (``Dataset``, the errors, the ``Source`` contract),
``locate`` (the search path: ``data_dir`` / ``--data_dir``, else ``$DVAE_JAX_DATA_DIR``, else the
download cache and TensorFlow Datasets' folder), ``checks`` (file checks, checksums, provenance),
``download`` (atomic downloads), ``tfds`` (datasets prepared by tensorflow-datasets, read without
TensorFlow), ``files`` (the search → check → read → download sequence of a dataset stored as
files), the datasets ``mnist``, ``omniglot`` and ``caltech``, ``arrays`` (the user's arrays to a
``Dataset``), ``array_file`` and ``bars_and_stripes``, ``registry`` (the sources by name and
``load_dataset``) and ``batching`` (the data order and binarization). A new kind of data is one
module with a ``Source``, registered in ``registry``.
"""

from dvae_jax.data.arrays import BINARIZATIONS
from dvae_jax.data.base import (
  IMAGE_SIDE,
  NUM_PIXELS,
  DataFileError,
  DataNotFoundError,
  Dataset,
  Source,
)
from dvae_jax.data.batching import batch_indices, binarize, binarize_once, train_batch
from dvae_jax.data.checks import file_md5, provenance
from dvae_jax.data.locate import (
  DATA_DIR_ENV,
  OFFLINE_ENV,
  cache_dir,
  data_search_path,
  downloads_allowed,
  tfds_data_dir,
)
from dvae_jax.data.mnist import (
  MNIST_MD5,
  MNIST_SPLITS,
  MNIST_URL,
  download_binarized_mnist,
  parse_amat,
  read_tfds_binarized_mnist,
)
from dvae_jax.data.omniglot import OMNIGLOT_NUM_VALID, omniglot_validation_rows
from dvae_jax.data.registry import (
  DATA_FILES,
  DATASETS,
  PUBLISHED_FILE_MD5,
  check_npz,
  dataset_forms,
  get_source,
  is_known,
  load_dataset,
  register,
  register_prefix,
)

__all__ = [
  "BINARIZATIONS",
  "DATASETS",
  "DATA_DIR_ENV",
  "DATA_FILES",
  "IMAGE_SIDE",
  "MNIST_MD5",
  "MNIST_SPLITS",
  "MNIST_URL",
  "NUM_PIXELS",
  "OFFLINE_ENV",
  "OMNIGLOT_NUM_VALID",
  "PUBLISHED_FILE_MD5",
  "DataFileError",
  "DataNotFoundError",
  "Dataset",
  "Source",
  "batch_indices",
  "binarize",
  "binarize_once",
  "cache_dir",
  "check_npz",
  "data_search_path",
  "dataset_forms",
  "download_binarized_mnist",
  "downloads_allowed",
  "file_md5",
  "get_source",
  "is_known",
  "load_dataset",
  "omniglot_validation_rows",
  "parse_amat",
  "provenance",
  "read_tfds_binarized_mnist",
  "register",
  "register_prefix",
  "tfds_data_dir",
  "train_batch",
]
