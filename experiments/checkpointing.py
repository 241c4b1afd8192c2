"""Checkpoints of a training state: orbax ``CheckpointManager`` on a flat, pure dict pytree.

Any pytree (NamedTuples, optax states, ``nnx.State``, typed PRNG keys) is flattened to
``{"path.to.leaf": array}`` for saving and rebuilt from a template of the same structure (e.g. a
freshly initialised state, whose shardings the restored arrays take). Orbax writes each step into a
temporary folder and renames it when complete, so a crash mid-save leaves the previous checkpoint
as the latest one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _flatten(tree: Any) -> tuple[dict[str, jax.Array], Any]:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  flat = {}
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path, simple=True, separator=".")
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    flat[name] = leaf
  if len(flat) != len(leaves):
    raise ValueError("two leaves of the state have the same path name; cannot checkpoint it")
  return flat, treedef


def _unflatten(template: Any, flat: dict[str, jax.Array]) -> Any:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  out = []
  for path, leaf in leaves:
    value = flat[jax.tree_util.keystr(path, simple=True, separator=".")]
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
    out.append(value)
  return jax.tree_util.tree_unflatten(treedef, out)


def _abstract(leaf):
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return ocp.utils.to_shape_dtype_struct(leaf)


class Checkpointer:
  """Saves and restores a pytree at integer steps in ``directory``, keeping the latest few.

  Every process must call ``save`` (orbax coordinates multi-host writes; only the primary host
  writes metadata). ``read_only=True`` opens an existing folder for restoring only: nothing is
  created, written or deleted (``experiments.evaluate`` / ``experiments.sample``).
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int, *, read_only: bool = False):
    self._manager = ocp.CheckpointManager(
      os.path.abspath(directory),
      # Synchronous saves: our states are a few MB, and orbax's asynchronous finalisation raced
      # between processes sharing one file system (two CPU processes on one machine).
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, tree: Any) -> None:
    """Writes ``tree`` at ``step`` (into a temporary folder renamed when complete)."""
    flat, _ = _flatten(tree)
    self._manager.save(step, args=ocp.args.StandardSave(flat), force=True)

  def restore(self, step: int, template: Any) -> Any:
    """The tree saved at ``step``, with the structure, dtypes and shardings of ``template``."""
    flat, _ = _flatten(template)
    abstract = jax.tree.map(_abstract, flat)
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return _unflatten(template, restored)

  def delete(self, step: int) -> None:
    self._manager.delete(step)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
