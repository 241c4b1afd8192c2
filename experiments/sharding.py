"""Data parallelism over all devices (every host): a 1-D mesh ``('data',)``.

Batches are split along their first axis (``P('data')``), and so are the prior sampler's chains
(``experiment.state_shardings``: sampling is 80–90 % of a step, so a replicated population would
cap the speed-up of more devices near 1.1×); parameters, optimiser state and scalars are replicated
(``P()``). Every process builds the same global batch on the host and hands each of its devices its
slice, so the computation (and its randomness: one PRNG key per global batch or population, with
counters over the global shape) does not depend on the number of devices or hosts.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  """A mesh over all devices of all processes, one axis named ``'data'``.

  The axis is ``Auto``: the library's functions are written for global shapes, and the compiler
  propagates the batch sharding through them (``Explicit`` axes, the default of ``jax.make_mesh``,
  would make each reshape of a sharded batch state its output sharding).
  """
  return jax.make_mesh(
    (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(name: str, size: int, mesh: Mesh) -> None:
  """Raises ValueError unless a global batch of ``size`` splits evenly over the mesh's devices."""
  n = mesh.devices.size
  if size % n:
    raise ValueError(f"{name}={size} must be divisible by the number of devices ({n})")


def put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Places a host array holding the GLOBAL value (identical on every process) on the mesh."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def place(tree: Any, shardings: Any) -> Any:
  """Puts every array leaf of ``tree`` (global values, typed PRNG keys included) on the mesh.

  Args:
    tree: a pytree of arrays holding the same global values on every process.
    shardings: one ``NamedSharding`` for all leaves, or a pytree of them matching ``tree``.
  """
  if isinstance(shardings, NamedSharding):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def put(leaf, sharding):
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      impl = jax.random.key_impl(leaf)
      return jax.random.wrap_key_data(put(jax.random.key_data(leaf), sharding), impl=impl)
    return put_global(np.asarray(leaf), sharding)

  return jax.tree.map(put, tree, shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Replicates every array leaf of ``tree`` over the mesh (typed PRNG keys included)."""
  return place(tree, replicated(mesh))


def to_host(x: jax.Array) -> np.ndarray:
  """A replicated or fully addressable array as NumPy, on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.sharding.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
