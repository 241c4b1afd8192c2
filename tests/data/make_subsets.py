"""Rebuilds ``subsets.npz``, the small real datasets of the default test suite (see README.md).

  python tests/data/make_subsets.py /path/to/data

Rows are fixed uniform draws without replacement (seed 0, sorted, so the split order is kept) of
each split of the full files. Binary pixels are stored bit-packed along the 784 pixels
(``np.unpackbits(a, axis=-1, count=784)``); OMNIGLOT's grey images (uint8, 255 = ink) as they are,
since its loader binarizes them itself (dynamically for training, once for validation and test).
"""

import hashlib
import pathlib
import sys

import numpy as np

SIZES = {
  "binarized_mnist": {"train": 500, "valid": 300, "test": 300},
  "caltech101_silhouettes": {"train": 300, "valid": 300, "test": 300},
  # OMNIGLOT holds out 1,345 training images for validation, so its training split needs more.
  "omniglot": {"train": 1645, "test": 300},
}
FILES = {
  "binarized_mnist": "binarized_mnist.npz",
  "caltech101_silhouettes": "caltech101_silhouettes_28.npz",
  "omniglot": "omniglot_28x28_rebuilt.npz",
}


def rows(n: int, k: int, stream: int) -> np.ndarray:
  return np.sort(np.random.default_rng([0, stream]).choice(n, size=k, replace=False))


def main(source: str) -> None:
  source = pathlib.Path(source)
  out = {}
  for d, (name, sizes) in enumerate(SIZES.items()):
    path = source / FILES[name]
    out[f"{name}/source_md5"] = np.array(hashlib.md5(path.read_bytes()).hexdigest())
    with np.load(path) as f:
      for s, (split, k) in enumerate(sizes.items()):
        x = f[split]
        idx = rows(len(x), k, 10 * d + s)
        x = x[idx]
        if name == "omniglot":
          out[f"{name}/{split}"] = x
        else:
          assert set(np.unique(x)) <= {0, 1}
          out[f"{name}/{split}"] = np.packbits(x, axis=-1)
        out[f"{name}/{split}_rows"] = idx.astype(np.int32)
        for extra in (f"{split}_labels", f"{split}_alphabet"):
          if extra in f.files:
            out[f"{name}/{extra}"] = f[extra][idx]
      for extra in ("classnames", "alphabet_names"):
        if extra in f.files:
          out[f"{name}/{extra}"] = f[extra]
  target = pathlib.Path(__file__).resolve().parent / "subsets.npz"
  np.savez_compressed(target, **out)
  print(f"wrote {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
  main(sys.argv[1])
