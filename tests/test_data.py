"""Tests of the dvae_jax.data package: splits, orientation, binarization, search path, download,
batching."""

import hashlib
import io
import os
import sys
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dvae_jax import data


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
  """Tests never touch the network: any real urlopen fails loudly."""

  def forbidden(*args, **kwargs):
    raise AssertionError("a test tried to open a URL")

  monkeypatch.setattr(urllib.request, "urlopen", forbidden)


@pytest.fixture(scope="module")
def mnist(data_dir):
  return data.load_dataset("binarized_mnist", data_dir)


@pytest.fixture(scope="module")
def full_mnist(full_data_dir):
  return data.load_dataset("binarized_mnist", full_data_dir)


@pytest.fixture(scope="module")
def omniglot_raw(data_dir):
  with np.load(data_dir / "omniglot_28x28_rebuilt.npz") as f:
    return f["train"], f["test"]


def test_mnist_splits_match_published_checksums(full_mnist):
  mnist = full_mnist
  assert not mnist.dynamic_binarization
  for split, count in data.MNIST_SPLITS.items():
    x = getattr(mnist, split)
    assert x.shape == (count, 784) and x.dtype == np.uint8
    # The MD5 sums are those of the data folder's README.md (and of the original .amat files).
    assert hashlib.md5(x.tobytes()).hexdigest() == data.MNIST_MD5[split]
  np.testing.assert_allclose(mnist.train_mean, mnist.train.mean(0, dtype=np.float64), atol=1e-6)


def test_mnist_is_upright(mnist):
  # Digits are written in the middle: the centre row of an upright image holds more ink than the
  # top row, and ink is spread over columns near the centre. Row-major order puts row 0 first.
  images = mnist.valid.reshape(-1, 28, 28)
  assert images[:, 0, :].mean() < 0.01 < images[:, 14, :].mean()


def test_a_new_source_is_one_registration(monkeypatch):
  """A kind of data addressed as PREFIX:ARGUMENT is a Source and one registration (the contract of
  dvae_jax.data.base.Source): its factory gets the argument and the data options, load_dataset
  hands the source the folder and the loading options."""
  calls = []

  class ArraySource:
    def __init__(self, argument, *, binarization, feature):
      self.name = f"arrays:{argument}"
      calls.append((argument, binarization, feature))

    def load(self, data_dir, *, allow_download, binarization_seed):
      calls.append((self.name, data_dir, allow_download, binarization_seed))
      x = np.zeros((2, 784), np.uint8)
      return data.Dataset(self.name, x, x, x, False, "memory")

  monkeypatch.setattr(data.registry, "_PREFIXES", dict(data.registry._PREFIXES))
  monkeypatch.setattr(data.registry, "_USAGES", dict(data.registry._USAGES))
  data.register_prefix("arrays", ArraySource)
  ds = data.load_dataset("arrays:a", "folder", binarization_seed=5, binarization="static")
  assert ds.name == "arrays:a"
  assert calls == [("a", "static", ""), ("arrays:a", "folder", None, 5)]
  with pytest.raises(ValueError, match=r"unknown dataset 'other:a'; .*omniglot.*, arrays:\.\.\."):
    data.load_dataset("other:a")


def test_unknown_dataset_is_refused():
  with pytest.raises(ValueError, match=r"unknown dataset 'baz'.*binarized_mnist.*omniglot"):
    data.load_dataset("baz")


def test_omniglot_rebuilt_split_and_binarization(data_dir, omniglot_raw):
  raw_train, raw_test = omniglot_raw
  ds = data.load_dataset("omniglot", data_dir, binarization_seed=3)
  n_valid = data.OMNIGLOT_NUM_VALID
  assert ds.dynamic_binarization
  assert ds.train.shape == (raw_train.shape[0] - n_valid, 784) and ds.train.dtype == np.float32
  assert ds.valid.shape == (n_valid, 784) and ds.valid.dtype == np.uint8
  assert ds.test.shape == (raw_test.shape[0], 784) and ds.test.dtype == np.uint8
  rows = data.omniglot_validation_rows(raw_train.shape[0], from_chardata=False)
  held_out = np.zeros(raw_train.shape[0], bool)
  held_out[rows] = True
  assert held_out.sum() == n_valid
  np.testing.assert_allclose(ds.train, raw_train[~held_out] / 255.0, atol=1e-7)
  assert set(np.unique(ds.valid)) <= {0, 1} and set(np.unique(ds.test)) <= {0, 1}
  # The validation images are those training images, binarized: pixels with no ink are always 0
  # and fully inked pixels always 1.
  grey_valid = raw_train[held_out]
  assert ds.valid[grey_valid == 0].max() == 0 and ds.valid[grey_valid == 255].min() == 1
  # Mean of a Bernoulli draw: over the m = 1345*784 pixels, sd of the mean <= 0.5/sqrt(m) ≈ 5e-4;
  # 5 sd tolerance.
  m = grey_valid.size
  assert abs(ds.valid.mean() - (grey_valid / 255.0).mean()) < 5 * 0.5 / np.sqrt(m)
  # Fixed seed: the same draw each time; another seed, another draw.
  again = data.load_dataset("omniglot", data_dir, binarization_seed=3)
  other = data.load_dataset("omniglot", data_dir, binarization_seed=4)
  np.testing.assert_array_equal(again.valid, ds.valid)
  np.testing.assert_array_equal(again.test, ds.test)
  assert (other.test != ds.test).any()


def test_omniglot_stand_in_validation_spans_the_alphabets(full_data_dir):
  """The rebuilt file is sorted by alphabet: its last 1,345 images are 3 alphabets. The validation
  draw must instead look like the data: every alphabet in it, in proportion to its size."""
  with np.load(full_data_dir / "omniglot_28x28_rebuilt.npz") as f:
    alphabet = f["train_alphabet"]
  assert len(np.unique(alphabet[-data.OMNIGLOT_NUM_VALID :])) <= 3  # why the last rows won't do
  rows = data.omniglot_validation_rows(alphabet.size, from_chardata=False)
  assert len(np.unique(rows)) == data.OMNIGLOT_NUM_VALID
  np.testing.assert_array_equal(rows, data.omniglot_validation_rows(alphabet.size, False))
  counts = np.bincount(alphabet[rows], minlength=alphabet.max() + 1)
  expected = np.bincount(alphabet) * data.OMNIGLOT_NUM_VALID / alphabet.size
  assert (counts > 0).all()
  # Chi-square over the alphabets: a uniform draw gives ≈ df = 49 (sd ≈ 10); 100 is > 5 sd.
  assert ((counts - expected) ** 2 / expected).sum() < 100
  np.testing.assert_array_equal(
    data.omniglot_validation_rows(2000, from_chardata=True), np.arange(655, 2000)
  )
  with pytest.raises(ValueError, match="more than 1345 training images"):
    data.omniglot_validation_rows(1345, from_chardata=False)


def test_omniglot_reads_user_chardata_mat(tmp_path, omniglot_raw):
  """A chardata.mat laid out as Burda's (784 × n, each column a column-major image) is read back
  upright; it is preferred to the rebuilt .npz in the same folder."""
  raw_train, raw_test = omniglot_raw
  train = raw_train[:1500].reshape(-1, 28, 28) / 255.0
  test = raw_test[:50].reshape(-1, 28, 28) / 255.0

  def to_chardata(images):  # Fortran-order flattening of each image, one image per column.
    return np.stack([img.flatten(order="F") for img in images], axis=1)

  scipy.io.savemat(
    tmp_path / "chardata.mat", {"data": to_chardata(train), "testdata": to_chardata(test)}
  )
  np.savez(
    tmp_path / "omniglot_28x28_rebuilt.npz",
    train=np.zeros((2000, 784), np.uint8),
    test=np.zeros((10, 784), np.uint8),
  )
  ds = data.load_dataset("omniglot", tmp_path)
  assert ds.source.endswith("chardata.mat")
  np.testing.assert_allclose(
    ds.train, train[: -data.OMNIGLOT_NUM_VALID].reshape(-1, 784), atol=1e-6
  )
  assert ds.test.shape == (50, 784)
  assert ds.test[test.reshape(-1, 784) == 0].max() == 0


def test_caltech_is_upright_and_flipped(full_data_dir):
  data_dir = full_data_dir
  ds = data.load_dataset("caltech101_silhouettes", data_dir)
  assert ds.train.shape == (4100, 784) and ds.valid.shape == (2264, 784)
  assert ds.test.shape == (2307, 784) and not ds.dynamic_binarization
  # Object = 1 on a background of 0: the image border is nearly all background.
  images = ds.train.reshape(-1, 28, 28)
  border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1)
  assert border.mean() < 0.1 < images[:, 10:18, 10:18].mean()
  # Upright: side views of airplanes are wider than tall, faces taller than wide. The spread of
  # ink along columns (x) vs rows (y) tells the orientation (a transposed image swaps them).
  with np.load(data_dir / "caltech101_silhouettes_28.npz") as f:
    names, labels = list(f["classnames"]), f["train_labels"]

  def wider_fraction(class_name):
    x = images[labels == names.index(class_name) + 1].astype(float)
    coords = np.arange(28.0)

    def spread(profile):
      mass = profile.sum(1, keepdims=True)
      mean = (profile * coords).sum(1, keepdims=True) / mass
      return (profile * (coords - mean) ** 2).sum(1) / mass[:, 0]

    return (spread(x.sum(1)) > spread(x.sum(2))).mean()

  assert wider_fraction("Airplanes Side 2") > 0.9
  assert wider_fraction("Faces 2") < 0.3


def test_caltech_reads_marlin_mat(tmp_path, data_dir):
  with np.load(data_dir / "caltech101_silhouettes_28.npz") as f:
    raw = {s: f[s][:20] for s in ("train", "valid", "test")}
  scipy.io.savemat(
    tmp_path / "caltech101_silhouettes_28_split1.mat",
    {"train_data": raw["train"], "val_data": raw["valid"], "test_data": raw["test"]},
  )
  ds = data.load_dataset("caltech101_silhouettes", tmp_path)
  full = data.load_dataset("caltech101_silhouettes", data_dir)
  np.testing.assert_array_equal(ds.train, full.train[:20])
  np.testing.assert_array_equal(ds.test, full.test[:20])


def test_search_path_order(monkeypatch, tmp_path):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  # Without a named folder: the download cache and TFDS's folder, nothing relative to the working
  # directory or the repository.
  default = [p for p, _ in data.data_search_path()]
  assert default == [tmp_path / "xdg" / "dvae_jax", tmp_path / "tfds"]
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
  assert [p for p, _ in data.data_search_path()] == [tmp_path / "env"]
  assert [p for p, _ in data.data_search_path(tmp_path / "flag")] == [tmp_path / "flag"]


@pytest.mark.parametrize("how", ["argument", "env"])
def test_offline_error_names_places_and_remedy(tmp_path, monkeypatch, how):
  empty = tmp_path / "empty"
  empty.mkdir()
  kwargs = {"allow_download": False}
  if how == "env":
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    kwargs = {}
  with pytest.raises(data.DataNotFoundError) as info:
    data.load_dataset("binarized_mnist", empty, **kwargs)
  message = str(info.value)
  for expected in (
    str(empty),
    "binarized_mnist.npz",
    ".amat",
    "--data_dir",
    data.DATA_DIR_ENV,
    "forbidden",
  ):
    assert expected in message
  assert list(empty.iterdir()) == []


def test_omniglot_missing_says_how_to_provide(tmp_path):
  with pytest.raises(data.DataNotFoundError, match=r"chardata\.mat.*\n.*" + str(tmp_path)):
    data.load_dataset("omniglot", tmp_path)


class _FakeResponse(io.BytesIO):
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _amat(x):
  return "".join(" ".join(map(str, row)) + "\n" for row in x).encode()


@pytest.fixture
def fake_mnist_server(monkeypatch):
  """Small fake .amat splits served by a stand-in urlopen; checksums adjusted to match."""
  rng = np.random.default_rng(0)
  splits = {
    s: (rng.random((n, 784)) < 0.3).astype(np.uint8)
    for s, n in zip(data.MNIST_SPLITS, (7, 3, 4), strict=True)
  }
  monkeypatch.setattr(data.mnist, "MNIST_SPLITS", {s: x.shape[0] for s, x in splits.items()})
  monkeypatch.setattr(
    data.mnist, "MNIST_MD5", {s: hashlib.md5(x.tobytes()).hexdigest() for s, x in splits.items()}
  )
  requested = []

  def urlopen(url, timeout):
    requested.append(url)
    split = url.rsplit("_", 1)[1].removesuffix(".amat")
    return _FakeResponse(_amat(splits[split]))

  monkeypatch.setattr(urllib.request, "urlopen", urlopen)
  return splits, requested


def test_download_writes_atomically_and_loads(tmp_path, fake_mnist_server):
  splits, requested = fake_mnist_server
  target = tmp_path / "cache"
  ds = data.load_dataset("binarized_mnist", target, allow_download=True)
  assert requested == [f"{data.MNIST_URL}binarized_mnist_{s}.amat" for s in data.MNIST_SPLITS]
  for split, x in splits.items():
    np.testing.assert_array_equal(getattr(ds, split), x)
  names = sorted(p.name for p in target.iterdir())
  assert names == sorted(
    ["binarized_mnist.npz"] + [f"binarized_mnist_{s}.amat" for s in data.MNIST_SPLITS]
  )
  # The .amat files alone are a valid source too.
  (target / "binarized_mnist.npz").unlink()
  again = data.load_dataset("binarized_mnist", target, allow_download=False)
  np.testing.assert_array_equal(again.test, splits["test"])


def test_download_checksum_mismatch_writes_nothing(tmp_path, fake_mnist_server, monkeypatch):
  monkeypatch.setitem(data.mnist.MNIST_MD5, "test", "0" * 32)
  with pytest.raises(ValueError, match="md5"):
    data.download_binarized_mnist(tmp_path)
  assert list(tmp_path.iterdir()) == []


def test_download_failure_is_a_clear_not_found_error(tmp_path, monkeypatch):
  def urlopen(url, timeout):
    raise urllib.error.URLError("no route to host")

  monkeypatch.setattr(urllib.request, "urlopen", urlopen)
  with pytest.raises(data.DataNotFoundError, match="download failed.*no route to host"):
    data.load_dataset("binarized_mnist", tmp_path, allow_download=True)


def test_parse_amat_roundtrip_on_real_rows(mnist):
  x = mnist.test[:300]
  np.testing.assert_array_equal(data.parse_amat(_amat(x)), x)
  with pytest.raises(ValueError, match="amat"):
    data.parse_amat(b"0 1 2\n")


@settings(max_examples=40, deadline=None)
@given(
  seed=st.integers(0, 2**31 - 1),
  batch_size=st.integers(1, 40),
  num_examples=st.integers(1, 97),
  epochs=st.integers(1, 3),
)
def test_batches_visit_each_example_once_per_epoch(seed, batch_size, num_examples, epochs):
  total = epochs * num_examples * batch_size  # a whole number of epochs and of batches
  steps = total // batch_size
  idx = np.concatenate(
    [data.batch_indices(seed, t, batch_size, num_examples) for t in range(steps)]
  )
  assert idx.shape == (total,)
  for e in range(epochs * batch_size):
    epoch = idx[e * num_examples : (e + 1) * num_examples]
    np.testing.assert_array_equal(np.sort(epoch), np.arange(num_examples))
  # Pure function of (seed, step): recomputing in another order gives the same batches.
  for t in reversed(range(steps)):
    np.testing.assert_array_equal(
      data.batch_indices(seed, t, batch_size, num_examples),
      idx[t * batch_size : (t + 1) * batch_size],
    )


def test_batches_depend_on_seed_and_reject_bad_sizes():
  a = data.batch_indices(0, 5, 100, 50_000)
  b = data.batch_indices(1, 5, 100, 50_000)
  assert (a != b).any()
  with pytest.raises(ValueError, match="batch_size"):
    data.batch_indices(0, 0, 0, 10)


def test_train_batch_dtype_and_values(mnist):
  x = data.train_batch(mnist, seed=0, step=3, batch_size=16)
  assert x.shape == (16, 784) and x.dtype == np.float32
  np.testing.assert_array_equal(x, mnist.train[data.batch_indices(0, 3, 16, len(mnist.train))])


def test_binarize_mean_matches_probabilities():
  probs = jnp.linspace(0.0, 1.0, 784, dtype=jnp.float32)[None].repeat(2000, 0)
  x = data.binarize(jax.random.key(0), probs)
  assert x.dtype == jnp.float32 and set(np.unique(np.asarray(x))) <= {0.0, 1.0}
  # Per pixel: the mean of 2000 Bernoulli(p) draws has sd sqrt(p(1-p)/2000) <= 0.0112; 5 sd, plus
  # exact 0/1 at p = 0 and p = 1.
  mean = np.asarray(x).mean(0)
  p = np.asarray(probs[0])
  assert np.all(np.abs(mean - p) <= 5 * np.sqrt(p * (1 - p) / 2000) + 1e-7)


def test_environment_variable_locates_data(monkeypatch, data_dir):
  monkeypatch.setenv(data.DATA_DIR_ENV, os.fspath(data_dir))
  assert data.load_dataset("caltech101_silhouettes").source.startswith(os.fspath(data_dir))


# ----------------------------------------------------------------------------------------------
# Checks of the files found: a bad file is one paragraph naming it, never a traceback.


def _binary(n, seed=0):
  return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.uint8)


def _mnist_arrays():
  return {"train": _binary(7), "valid": _binary(3, 1), "test": _binary(4, 2)}


def _bad_file_error(folder, name="binarized_mnist"):
  with pytest.raises(data.DataFileError) as info:
    data.load_dataset(name, folder, allow_download=False)
  message = str(info.value)
  assert "\n" not in message and "Loading stopped there" in message and "Replace it" in message
  return message


def _truncated(path):
  raw = path.read_bytes()
  path.write_bytes(raw[: len(raw) // 2])


def _bit_flip(path):
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 2] ^= 1  # in the middle of an array's bytes
  path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
  "damage, problem",
  [
    (_truncated, "it cannot be read (BadZipFile: File is not a zip file)"),
    (_bit_flip, "it cannot be read (BadZipFile: Bad CRC-32"),
  ],
)
def test_damaged_npz_is_a_data_file_error(tmp_path, damage, problem):
  path = tmp_path / "binarized_mnist.npz"
  np.savez(path, **_mnist_arrays())
  damage(path)
  message = _bad_file_error(tmp_path)
  assert message.startswith(f"data file {path} (binarized_mnist) is unusable: {problem}")
  assert "the published binarized_mnist.npz has md5 6a167d58bf86f02bdbe2f558ff907ce0" in message
  assert "or delete it to have it downloaded again" in message


@pytest.mark.parametrize(
  "arrays, problem",
  [
    ({"train": _binary(7), "test": _binary(4)}, "it lacks the arrays ['valid']"),
    (
      {**_mnist_arrays(), "train": _binary(10).reshape(10, 28, 28)},
      "array 'train' has shape (10, 28, 28); expected [n, 784] images",
    ),
    (
      {**_mnist_arrays(), "valid": _binary(3) * 255},
      "array 'valid' holds values other than 0 and 1 (range 0..255)",
    ),
    (
      {**_mnist_arrays(), "test": np.full((4, 784), "0")},
      "array 'test' has dtype <U1; expected uint8 pixels",
    ),
    (
      {**_mnist_arrays(), "test": np.array([{"a": 1}] * 4, dtype=object)},
      "it cannot be read (ValueError: Object arrays cannot be loaded when allow_pickle=False)",
    ),
  ],
)
def test_npz_with_wrong_arrays_is_a_data_file_error(tmp_path, arrays, problem):
  np.savez(tmp_path / "binarized_mnist.npz", **arrays)
  assert f"is unusable: {problem}" in _bad_file_error(tmp_path)


def test_published_shape_with_other_data_is_refused_other_shapes_are_user_data(
  tmp_path, full_data_dir
):
  with np.load(full_data_dir / "caltech101_silhouettes_28.npz") as f:
    arrays = {s: f[s].copy() for s in ("train", "valid", "test")}
  arrays["valid"][5, 300] ^= 1  # one pixel
  np.savez(tmp_path / "caltech101_silhouettes_28.npz", **arrays)
  message = _bad_file_error(tmp_path, "caltech101_silhouettes")
  assert "array 'valid' has the published shape (2264, 784) but not the published data" in message
  assert "expected 23edf155ca2bad268a36e717e6d0021c" in message
  # The same data, a subset: the user's own file, checked for structure and values only.
  np.savez(tmp_path / "caltech101_silhouettes_28.npz", **{s: x[:50] for s, x in arrays.items()})
  ds = data.load_dataset("caltech101_silhouettes", tmp_path)
  assert ds.valid.shape == (50, 784)


def test_grey_omniglot_must_be_uint8(tmp_path):
  np.savez(
    tmp_path / "omniglot_28x28_rebuilt.npz",
    train=np.zeros((2000, 784), np.float32),
    test=np.zeros((10, 784), np.uint8),
  )
  message = _bad_file_error(tmp_path, "omniglot")
  assert "array 'train' has dtype float32; expected uint8 grey values 0..255" in message


def test_published_files_pass_the_checks(full_data_dir):
  for name in (
    "binarized_mnist.npz",
    "caltech101_silhouettes_28.npz",
    "omniglot_28x28_rebuilt.npz",
  ):
    path = full_data_dir / name
    data.check_npz(path)
    assert hashlib.md5(path.read_bytes()).hexdigest() == data.PUBLISHED_FILE_MD5[name]


def test_bad_file_stops_the_search_even_with_another_form_beside_it(tmp_path):
  """The .npz is preferred to the .amat files in a folder; a bad .npz is reported, not skipped."""
  arrays = _mnist_arrays()
  for split, x in arrays.items():
    (tmp_path / f"binarized_mnist_{split}.amat").write_bytes(_amat(x))
  (tmp_path / "binarized_mnist.npz").write_bytes(b"not a zip file")
  assert "binarized_mnist.npz (binarized_mnist) is unusable" in _bad_file_error(tmp_path)
  (tmp_path / "binarized_mnist.npz").unlink()
  np.testing.assert_array_equal(data.load_dataset("binarized_mnist", tmp_path).test, arrays["test"])
  # A malformed .amat file names the files it was read with.
  (tmp_path / "binarized_mnist_valid.amat").write_bytes(b"0 1 2\n")
  message = _bad_file_error(tmp_path)
  assert str(tmp_path / "binarized_mnist_valid.amat") in message
  assert "ValueError: not a binarized MNIST .amat file" in message


def test_tfds_prepared_binarized_mnist_is_read_without_tensorflow(tmp_path, monkeypatch):
  """A binarized_mnist prepared by tensorflow-datasets in ArrayRecord format (here a tiny one that
  the test prepares with TFDS's own builder, offline: examples given as PNG bytes so that no
  TensorFlow is needed) is found on the search path and read back in Larochelle's row order."""
  tfds = pytest.importorskip("tensorflow_datasets")
  rng = np.random.default_rng(0)
  splits = {
    s: (rng.random((n, 784)) < 0.3).astype(np.uint8)
    for s, n in zip(data.MNIST_SPLITS, (9, 4, 5), strict=True)
  }
  builder = tfds.builder("binarized_mnist", data_dir=tmp_path, file_format="array_record")
  names = {"train": "train", "validation": "valid", "test": "test"}

  def split_generators(self, dl_manager):
    return [tfds.core.SplitGenerator(name=n, gen_kwargs={"split": s}) for n, s in names.items()]

  def generate_examples(self, split):  # TFDS's builder keys example i of each .amat file by i
    for i, row in enumerate(splits[split]):
      png = io.BytesIO()
      Image.fromarray(row.reshape(28, 28)).save(png, format="PNG")
      yield i, {"image": png.getvalue()}

  monkeypatch.setattr(type(builder), "_split_generators", split_generators)
  monkeypatch.setattr(type(builder), "_generate_examples", generate_examples)
  builder.download_and_prepare()
  assert "tensorflow" not in sys.modules
  monkeypatch.setattr(data.mnist, "MNIST_SPLITS", {s: x.shape[0] for s, x in splits.items()})
  monkeypatch.setattr(
    data.mnist, "MNIST_MD5", {s: hashlib.md5(x.tobytes()).hexdigest() for s, x in splits.items()}
  )
  # Found in its own folder on the search path ($TFDS_DATA_DIR, after the usual places).
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  assert (tmp_path, "tensorflow-datasets folder") in data.data_search_path()
  ds = data.load_dataset("binarized_mnist", allow_download=False)
  for split, x in splits.items():
    np.testing.assert_array_equal(getattr(ds, split), x)  # same rows, same order
  assert ds.source.endswith("binarized_mnist/1.0.0")
  assert data.provenance(ds)["data_source"] == "binarized_mnist/1.0.0 (TFDS)"
  assert "tensorflow" not in sys.modules
  # Pixels that differ from the published ones are refused, not used.
  monkeypatch.setitem(data.mnist.MNIST_MD5, "test", "0" * 32)
  with pytest.raises(ValueError, match="differs from Larochelle's test split"):
    data.load_dataset("binarized_mnist", tmp_path, allow_download=False)


def test_provenance_names_files_and_their_md5_without_paths(data_dir):
  ds = data.load_dataset("caltech101_silhouettes", data_dir)
  record = data.provenance(ds)
  assert record["data_source"] == "caltech101_silhouettes_28.npz" and "/" not in str(record)
  path = data_dir / "caltech101_silhouettes_28.npz"
  assert record["data_md5"] == {path.name: hashlib.md5(path.read_bytes()).hexdigest()}
