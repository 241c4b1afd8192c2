"""The user's own data (dvae_jax.data: arrays, array_file, tfds, bars_and_stripes): what is read
equals what was stored, the documented split and binarizations, the generated set against an
exact enumeration, and a clear error for every kind of bad file."""

import hashlib
import itertools
import math
import sys

import numpy as np
import pytest
from own_data_util import grey_arrays, prepare_tfds, rows_sorted

from dvae_jax import data
from dvae_jax.data import arrays, bars_and_stripes
from experiments import config_lib


def _binary(seed, n, shape=(3, 5)):
  return (np.random.default_rng(seed).random((n, *shape)) < 0.3).astype(np.uint8)


def _load(path, **options):
  return data.load_dataset(f"file:{path}", **options)


def test_npz_splits_are_read_as_stored(tmp_path):
  stored = {"train": _binary(0, 30), "valid": _binary(1, 7), "test": _binary(2, 9)}
  path = tmp_path / "mine.npz"
  np.savez(path, **stored, labels=np.arange(30))  # other arrays are ignored
  ds = _load(path)
  assert ds.name == f"file:{path}" and ds.example_shape == (3, 5) and ds.num_pixels == 15
  for split, x in stored.items():
    got = getattr(ds, split)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, x.reshape(len(x), 15))  # row-major, in the file's order
  assert not ds.dynamic_binarization
  np.testing.assert_allclose(ds.train_mean, stored["train"].reshape(30, 15).mean(0), rtol=1e-6)
  flat = {s: x.reshape(len(x), 15) for s, x in stored.items()}
  assert ds.identity == data.checks.content_md5(flat, (3, 5), False)
  record = data.provenance(ds)
  assert record == {
    "data_source": "mine.npz",
    "data_md5": {"mine.npz": hashlib.md5(path.read_bytes()).hexdigest()},
  }
  # Booleans and floats in {0, 1} are the same data: the same identity.
  np.savez(path, **{s: x.astype(bool if s == "train" else np.float64) for s, x in stored.items()})
  assert _load(path).identity == ds.identity


def test_one_array_is_split_by_the_documented_fixed_draw(tmp_path):
  x = _binary(3, 53, shape=(6,))
  np.save(tmp_path / "all.npy", x)
  np.savez(tmp_path / "all.npz", examples=x)
  ds = _load(tmp_path / "all.npy")
  k = round(0.1 * 53)  # HELD_OUT_FRACTION of the examples, for each of test and valid
  order = np.random.default_rng(arrays.SPLIT_SEED).permutation(53)
  test_rows, valid_rows = np.sort(order[:k]), np.sort(order[k : 2 * k])
  train_rows = np.setdiff1d(np.arange(53), order[: 2 * k])
  np.testing.assert_array_equal(ds.test, x[test_rows])
  np.testing.assert_array_equal(ds.valid, x[valid_rows])
  np.testing.assert_array_equal(ds.train, x[train_rows])  # the rest, in the file's order
  assert ds.example_shape == (6,)
  same = _load(tmp_path / "all.npz")  # a single array of any name in an .npz: the same split
  for split in arrays.SPLITS:
    np.testing.assert_array_equal(getattr(same, split), getattr(ds, split))
  # Only test given: validation is held out of train (k of its 30 rows).
  np.savez(tmp_path / "two.npz", train=x[:30], test=x[30:])
  ds = _load(tmp_path / "two.npz")
  valid_rows = np.sort(np.random.default_rng(arrays.SPLIT_SEED).permutation(30)[:3])
  np.testing.assert_array_equal(ds.valid, x[valid_rows])
  np.testing.assert_array_equal(ds.test, x[30:])
  assert len(ds.train) == 27


def test_grey_values_binarized_dynamically_or_statically(tmp_path):
  grey = grey_arrays(0, sizes=(400, 300, 300))
  np.savez(tmp_path / "grey.npz", **grey)
  ds = _load(tmp_path / "grey.npz")  # 'dynamic', the default: as OMNIGLOT
  assert ds.dynamic_binarization and ds.train.dtype == np.float32
  np.testing.assert_array_equal(ds.train, grey["train"].reshape(400, 15))
  for split, stream in (("valid", 0), ("test", 1)):
    want = data.binarize_once(grey[split].reshape(-1, 15), 0, stream)
    np.testing.assert_array_equal(getattr(ds, split), want)
  static = _load(tmp_path / "grey.npz", binarization="static")
  assert not static.dynamic_binarization and static.train.dtype == np.uint8
  np.testing.assert_array_equal(static.valid, ds.valid)
  np.testing.assert_array_equal(static.train, data.binarize_once(ds.train, 0, 2))
  assert static.identity != ds.identity
  # The draws follow the grey values: 400 × 15 Bernoulli draws, sd of the mean ≤ 0.5 / √6000.
  assert abs(static.train.mean() - grey["train"].mean()) < 5 * 0.5 / math.sqrt(6000)
  # The seed of the one-off draws is the loader's binarization seed.
  other = data.load_dataset(f"file:{tmp_path / 'grey.npz'}", binarization_seed=1)
  assert (other.valid != ds.valid).any()


def _bad(tmp_path, write, **options):
  path = tmp_path / "bad.npz"
  write(path)
  with pytest.raises(data.DataFileError) as info:
    _load(path, **options)
  message = str(info.value)
  assert message.startswith(f"data file {path} (file:{path}) is unusable: ") and "Fix it" in message
  assert "Loading stopped there" not in message  # no search: the user named the file
  return message


def _npz(**stored):
  return lambda path: np.savez(path, **stored)


B = _binary(0, 20)


@pytest.mark.parametrize(
  "write, problem",
  [
    (
      _npz(x_train=B, x_test=B),
      "it holds the arrays ['x_train', 'x_test']; expected 'train' (with optional 'valid' and "
      "'test') or a single array",
    ),
    (_npz(train=B, validation=B), "it holds the array(s) 'validation' (name it 'valid')"),
    (_npz(train=np.full((4, 3), "0")), "array 'train' has dtype <U1; expected numbers"),
    (_npz(train=B, test=B * 1j), "array 'test' has dtype complex128; expected numbers"),
    (
      _npz(train=B, valid=B * 1.5),
      "array 'valid' holds values outside [0, 1] (range 0..1.5)",
    ),
    (
      _npz(train=B * 255),
      "array 'train' holds integers other than 0 and 1 (range 0..255); store grey levels as "
      "floats in [0, 1] (e.g. x / 255)",
    ),
    (_npz(train=np.where(B, np.nan, 0.5)), f"array 'train' holds {B.sum()} NaN values"),
    (
      _npz(train=B, test=np.where(B, np.inf, np.nan)[:2]),
      f"array 'test' holds {30 - B[:2].sum()} NaN and {B[:2].sum()} infinite values",
    ),
    (_npz(train=B, valid=B[:0]), "array 'valid' is empty (shape (0, 3, 5)): every split needs"),
    (
      _npz(train=B, test=_binary(1, 4, shape=(5, 3))),
      "array 'test' has examples of shape (5, 3) but array 'train' has (3, 5): every split needs "
      "the same shape",
    ),
    (_npz(train=B.reshape(-1)), "array 'train' has shape (300,); expected [n, ...]"),
    (
      _npz(only=B[:2]),
      "array 'only' has 2 examples: too few to hold out test and valid (10% each, at least one)",
    ),
    (
      lambda path: path.write_bytes(b"not an array file"),
      "it is neither an .npz nor an .npy file (it starts with b'not an')",
    ),
    (lambda path: path.write_bytes(b"PK\x03\x04 truncated"), "it cannot be read (BadZipFile"),
    (
      lambda path: np.savez(path, train=np.array([{"a": 1}] * 3, dtype=object)),
      "it cannot be read (ValueError: Object arrays cannot be loaded when allow_pickle=False)",
    ),
  ],
)
def test_bad_file_is_a_clear_error_naming_file_and_problem(tmp_path, write, problem):
  assert problem in _bad(tmp_path, write)


def test_missing_file_and_bad_options(tmp_path):
  with pytest.raises(data.DataNotFoundError, match=f"data file {tmp_path / 'no.npz'} not found"):
    _load(tmp_path / "no.npz")
  for name, options, message in [
    ("file:", {}, "file:PATH needs the path"),
    ("file:a.npz", {"binarization": "sometimes"}, "invalid binarization 'sometimes'; valid"),
    ("file:a.npz", {"feature": "image"}, "data_feature 'image' is for tfds: datasets"),
    ("tfds:", {}, "tfds: is not of the form tfds:NAME[:CONFIG]"),
    ("tfds:a:b:c", {}, "is not of the form tfds:NAME[:CONFIG]"),
    ("bars_and_stripes:x", {}, "is not of the form bars_and_stripes:SIDE"),
    ("bars_and_stripes:1", {}, "needs SIDE in 2..10, got 1"),
    ("omniglot", {"binarization": "static"}, "omniglot keeps its papers' binarization"),
    ("binarized_mnist", {"feature": "image"}, "keeps its papers' binarization"),
  ]:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
      data.get_source(name, **options)


def test_config_resolves_the_dataset_name_and_refuses_bad_options(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = config_lib.load_config("dvae_sharp")
  config.dataset = "file:mine.npz"  # relative to the working directory: recorded absolute
  resolved = config_lib.resolve_config(config)
  assert resolved.dataset == f"file:{tmp_path / 'mine.npz'}"
  assert resolved.beta == config_lib.BETA_TABLE["binarized_mnist"]["1-layer-lin"]["dvae_sharp"]
  config.dataset = "bars_and_stripes:4"
  config.data_feature = "x"
  with pytest.raises(config_lib.ConfigError, match="invalid dataset 'bars_and_stripes:4': data_"):
    config_lib.resolve_config(config)
  config.dataset, config.data_feature = "nope:4", ""
  with pytest.raises(
    config_lib.ConfigError,
    match=r"invalid dataset 'nope:4'; valid values: binarized_mnist, omniglot, "
    r"caltech101_silhouettes, file:PATH, tfds:NAME\[:CONFIG\], bars_and_stripes:SIDE",
  ):
    config_lib.resolve_config(config)


@pytest.mark.parametrize("side", [2, 3, 4])
def test_bars_and_stripes_patterns_match_an_exhaustive_enumeration(side):
  """Every side × side binary image whose rows are all constant or columns all constant, found by
  enumerating all 2^(side²) images: the same set as ``patterns``, 2^(side+1) − 2 of them."""
  found = []
  for bits in itertools.product((0, 1), repeat=side * side):
    image = np.array(bits, np.uint8).reshape(side, side)
    rows_const = (image == image[:, :1]).all()
    cols_const = (image == image[:1, :]).all()
    if rows_const or cols_const:
      found.append(image)
  want = rows_sorted(np.array(found))
  got = bars_and_stripes.patterns(side)
  np.testing.assert_array_equal(rows_sorted(got), want)
  assert len(got) == bars_and_stripes.num_patterns(side) == 2 ** (side + 1) - 2
  assert bars_and_stripes.entropy(side) == pytest.approx(math.log(len(want)), abs=1e-12)


def test_bars_and_stripes_draws_are_uniform_and_the_file_route_is_the_same(tmp_path):
  ds = data.load_dataset("bars_and_stripes:4")
  assert ds.example_shape == (4, 4) and ds.num_pixels == 16 and not ds.dynamic_binarization
  table = bars_and_stripes.patterns(4).reshape(30, 16)
  for split, n in bars_and_stripes.SIZES.items():
    x = getattr(ds, split)
    assert x.shape == (n, 16)
    index = {row.tobytes(): i for i, row in enumerate(table)}
    counts = np.bincount([index[row.tobytes()] for row in x], minlength=30)  # KeyError: not BAS
    # Multinomial(n, 1/30) counts: Pearson's statistic ~ χ²(29), mean 29, sd √58 ≈ 7.6; 29 + 6 sd.
    chi2 = ((counts - n / 30) ** 2 / (n / 30)).sum()
    assert chi2 < 29 + 6 * math.sqrt(58), (split, chi2)
  assert "entropy 3.4012 nats" in data.provenance(ds)["data_source"]
  # The same arrays written to a file and read back: the same data, the same identity.
  bars_and_stripes.save_npz(tmp_path / "bas4.npz", 4)
  same = _load(tmp_path / "bas4.npz")
  assert same.identity == ds.identity
  for split in arrays.SPLITS:
    np.testing.assert_array_equal(getattr(same, split), getattr(ds, split))


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
  """No network, and no folder of this machine's user: HOME, the caches and TFDS's folder are in
  tmp_path."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_home"))
  monkeypatch.setenv(data.OFFLINE_ENV, "1")
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  return tmp_path


def test_tfds_dataset_is_read_without_tensorflow(offline_home):
  folder = offline_home / "tfds"
  grey = {s: (x * 255).round().astype(np.uint8) for s, x in grey_arrays(1, (4, 4)).items()}
  prepare_tfds(
    folder,
    "grey",
    {
      "train": {"image": grey["train"]},
      "validation": {"image": grey["valid"]},
      "test": {"image": grey["test"]},
    },
  )
  ds = data.load_dataset("tfds:own_tiny:grey", folder)
  assert "tensorflow" not in sys.modules
  assert ds.name == "tfds:own_tiny:grey" and ds.example_shape == (4, 4)
  assert ds.source.endswith("own_tiny/grey/1.0.0") and ds.dynamic_binarization
  # uint8 grey levels scaled by 1/255; the same examples (in TFDS's storage order).
  np.testing.assert_allclose(
    rows_sorted(ds.train), rows_sorted(grey["train"] / np.float32(255)), rtol=1e-6
  )
  assert ds.valid.shape == (12, 16) and ds.test.shape == (10, 16) and ds.valid.dtype == np.uint8
  # Found through $TFDS_DATA_DIR when no folder is named.
  offline_home.joinpath("tfds_home").symlink_to(folder)
  assert data.load_dataset("tfds:own_tiny:grey").identity == ds.identity


def test_tfds_feature_is_chosen_by_a_flag_and_missing_splits_are_held_out(offline_home):
  folder = offline_home / "tfds"
  x = _binary(4, 30, shape=(2, 3)).astype(bool)
  labels = np.arange(30, dtype=np.int64)
  prepare_tfds(folder, "two_features", {"train": {"x": x, "label": labels}})
  with pytest.raises(data.DataFileError, match=r"no feature 'image'; its features: label, x; "):
    data.load_dataset("tfds:own_tiny:two_features", folder)
  with pytest.raises(data.DataFileError, match="no feature 'y'; its features: label, x"):
    data.load_dataset("tfds:own_tiny:two_features", folder, feature="y")
  ds = data.load_dataset("tfds:own_tiny:two_features", folder, feature="x")
  assert ds.example_shape == (2, 3) and (len(ds.train), len(ds.valid), len(ds.test)) == (24, 3, 3)
  every = np.concatenate([ds.train, ds.valid, ds.test])
  np.testing.assert_array_equal(rows_sorted(every), rows_sorted(x.astype(np.uint8)))
  # The labels, one scalar per example: refused with the split and the feature named.
  with pytest.raises(
    data.DataFileError, match=r"split 'train' \(feature 'label'\) has shape \(30,\); expected"
  ):
    data.load_dataset("tfds:own_tiny:two_features", folder, feature="label")


def test_tfds_not_prepared_says_how_to_prepare(offline_home):
  with pytest.raises(data.DataNotFoundError) as info:
    data.load_dataset("tfds:own_tiny:grey", offline_home / "empty")
  message = str(info.value)
  assert "dataset 'tfds:own_tiny:grey' is not prepared in ArrayRecord format in:" in message
  assert str(offline_home / "empty") in message
  assert "tfds build own_tiny/grey --file_format=array_record --data_dir=FOLDER" in message
  # Without a folder named: the search path and TFDS's own folder are listed.
  with pytest.raises(data.DataNotFoundError, match="tfds_home"):
    data.load_dataset("tfds:mnist")
