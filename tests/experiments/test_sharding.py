"""Tests of experiments/sharding.py, and that JAX's random draws do not depend on the sharding."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np

from experiments import sharding

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_put_global_and_replicate_on_one_device():
  mesh = sharding.make_mesh()
  x = np.arange(12.0).reshape(4, 3)
  arr = sharding.put_global(x, sharding.batch_sharded(mesh))
  np.testing.assert_array_equal(sharding.to_host(arr), x)
  tree = sharding.replicate({"a": np.ones(2), "key": jax.random.key(3)}, mesh)
  assert tree["a"].sharding == sharding.replicated(mesh)
  np.testing.assert_array_equal(
    jax.random.key_data(tree["key"]), jax.random.key_data(jax.random.key(3))
  )


def test_divisibility_is_checked():
  mesh = sharding.make_mesh()
  sharding.check_divisible("batch_size", 7, mesh)  # one device divides everything


_FOUR_DEVICES = textwrap.dedent("""
  import jax, jax.numpy as jnp, numpy as np
  from dvae_jax import data
  from experiments import sharding
  assert jax.device_count() == 4 and jax.config.jax_threefry_partitionable
  mesh = sharding.make_mesh()
  try:
    sharding.check_divisible("batch_size", 6, mesh)
    raise SystemExit("6 over 4 devices was accepted")
  except ValueError as err:
    assert "batch_size=6 must be divisible by the number of devices (4)" in str(err)
  probs = np.random.default_rng(0).random((8, 784)).astype(np.float32)
  key = jax.random.key(7)
  # One key for the global batch: sharded and unsharded draws must be identical.
  single = np.asarray(jax.jit(data.binarize)(key, jnp.asarray(probs)))
  sharded = jax.jit(data.binarize, out_shardings=sharding.batch_sharded(mesh))(
    key, sharding.put_global(probs, sharding.batch_sharded(mesh)))
  assert len(sharded.sharding.device_set) == 4
  np.testing.assert_array_equal(np.asarray(sharded), single)
  normal = jax.jit(lambda k: jax.random.normal(k, (8, 5)),
                   out_shardings=sharding.batch_sharded(mesh))(key)
  np.testing.assert_array_equal(np.asarray(normal), np.asarray(jax.random.normal(key, (8, 5))))
  print("ok")
""")


def test_random_draws_do_not_depend_on_the_sharding():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = subprocess.run(
    [sys.executable, "-c", _FOUR_DEVICES],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
