"""Checkpoints of a training state: orbax ``CheckpointManager`` on a flat, pure dict pytree.

Any pytree (NamedTuples, optax states, ``nnx.State``, typed PRNG keys) is flattened to
``{"path.to.leaf": array}`` for saving and rebuilt from a template of the same structure (e.g. a
freshly initialised state, whose shardings the restored arrays take). Orbax writes each step into a
temporary folder and renames it when complete, so a crash mid-save leaves the previous checkpoint
as the latest one.

Each saved step also gets ``CHECKSUMS_FILE``: the size and MD5 of every file orbax wrote. A
checkpoint whose files no longer match it (a disk error, a half-copied workdir: damage orbax may
not notice at all, or notices mid-restore with a burst of asyncio tracebacks) or that fails to
restore is reported, and the next older one is tried (:meth:`Checkpointer.restore_newest`). Once an
older one restores, the newer, unrestorable ones are moved out of the folder into
``DIRECTORY_unrestorable/`` so that the resumed run neither overwrites them (it saves the same step
numbers again) nor lets orbax's ``max_to_keep`` delete them: nothing that was not restored is ever
overwritten or deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from experiments import metrics as metrics_lib
from experiments import sharding
from experiments.configs import base as base_config

UNRESTORABLE_SUFFIX = "_unrestorable"
CHECKSUMS_FILE = "dvae_checksums.json"


class CheckpointRestoreError(RuntimeError):
  """Checkpoints exist but none of them restores."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (the earlier checkpoints are intact)."""


class WorkdirConfigError(ValueError):
  """The workdir holds a run with a different config."""


def _is_empty(leaf) -> bool:
  return getattr(leaf, "size", None) == 0


def _flatten(tree: Any) -> tuple[dict[str, jax.Array], Any]:
  """{path name: leaf} of the tree, without its zero-size leaves (orbax refuses them; they hold
  no data and come from the template on restore)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  flat = {}
  names = set()
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path, simple=True, separator=".")
    names.add(name)
    if _is_empty(leaf):
      continue
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    flat[name] = leaf
  if len(names) != len(leaves):
    raise ValueError("two leaves of the state have the same path name; cannot checkpoint it")
  return flat, treedef


def _unflatten(template: Any, flat: dict[str, jax.Array]) -> Any:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  out = []
  for path, leaf in leaves:
    if _is_empty(leaf):
      out.append(leaf)
      continue
    value = flat[jax.tree_util.keystr(path, simple=True, separator=".")]
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
    out.append(value)
  return jax.tree_util.tree_unflatten(treedef, out)


def _sharding_of(leaf):
  return leaf.sharding if isinstance(leaf, jax.Array) else None


def _two_part_chains(step_dir: pathlib.Path, flat: dict) -> dict[str, list]:
  """{name of a chains leaf ``….z`` of ``flat``: [(saved part name, shape), ...]} for a checkpoint
  that holds the chains as ``….z1`` and ``….z2`` (the layout before one chain array; a graph
  prior's empty ``z2`` was not saved), whose parts are concatenated along the units on restore."""
  if not any(name.endswith(".z") for name in flat):
    return {}
  try:
    saved = ocp.StandardCheckpointer().metadata(step_dir / "default").item_metadata
  except Exception:  # no readable metadata: let the restore itself report the problem
    return {}
  legacy = {}
  for name in flat:
    prefix = name[: -len(".z")]
    if name.endswith(".z") and name not in saved and f"{prefix}.z1" in saved:
      parts = [p for p in (f"{prefix}.z1", f"{prefix}.z2") if p in saved]
      legacy[name] = [(p, tuple(saved[p].shape)) for p in parts]
  return legacy


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
    self.directory = pathlib.Path(os.path.abspath(directory))
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

  def step_path(self, step: int) -> pathlib.Path:
    """The folder of the checkpoint of ``step``."""
    return self.directory / str(step)

  def save(self, step: int, tree: Any) -> None:
    """Writes ``tree`` at ``step`` (into a temporary folder renamed when complete).

    Raises:
      CheckpointWriteError: the write failed (full disk, permissions); earlier checkpoints are kept.
    """
    flat, _ = _flatten(tree)
    try:
      self._manager.save(step, args=ocp.args.StandardSave(flat), force=True)
      self._manager.wait_until_finished()
      if jax.process_index() == 0:
        write_checksums(self.step_path(step))
    except Exception as err:
      kept = [s for s in self.all_steps() if s != step]
      raise CheckpointWriteError(
        f"could not write the checkpoint of step {step} to {self.directory}: "
        f"{type(err).__name__}: {err}. The earlier checkpoints ({_steps(kept)}) are intact; fix "
        "the cause (free space, permissions) and run the same command to resume from the latest."
      ) from err

  def restore(self, step: int, template: Any) -> Any:
    """The tree saved at ``step``, with the structure, dtypes and shardings of ``template``.

    A sampler state saved with two-part chains (``z1`` [S, n1], ``z2`` [S, n2], or ``z1`` alone
    for a graph prior) restores into the one array ``z`` [S, n] of today's states.
    """
    flat, _ = _flatten(template)
    abstract = jax.tree.map(_abstract, flat)
    legacy = _two_part_chains(self.step_path(step), flat)
    for name, parts in legacy.items():
      leaf = abstract.pop(name)
      for part, shape in parts:
        abstract[part] = jax.ShapeDtypeStruct(shape, leaf.dtype, sharding=leaf.sharding)
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    for name, parts in legacy.items():
      chains = jnp.concatenate([restored.pop(part) for part, _ in parts], axis=-1)
      restored[name] = jax.device_put(chains, _sharding_of(flat[name]))
    return _unflatten(template, restored)

  def restore_newest(
    self, template: Any, *, warn: Callable[[str], None] = logging.warning
  ) -> tuple[int | None, Any]:
    """The newest checkpoint that restores: ``(step, tree)``, or ``(None, template)`` if none exist.

    Each checkpoint that fails is reported through ``warn`` (its step, path and the error) and the
    next older one is tried. When one restores, the newer failed ones are moved to
    ``DIRECTORY_unrestorable/STEP`` (never deleted); when none does, nothing is changed.

    Raises:
      CheckpointRestoreError: checkpoints exist but none restores; the message says how to go on.
    """
    failed = []
    for step in sorted(self.all_steps(), reverse=True):
      reason = find_damage(self.step_path(step))
      if reason is None:
        try:
          tree = self.restore(step, template)
        except Exception as err:  # orbax / tensorstore raise plain Exceptions for damaged data
          reason = _first_line(err)
      if reason is not None:
        failed.append((step, reason))
        warn(
          f"checkpoint of step {step} ({self.step_path(step)}) could not be restored ({reason}); "
          "trying the previous one"
        )
        continue
      if failed:
        self._set_aside([s for s, _ in failed], step, warn)
      return step, tree
    if failed:
      details = "; ".join(f"step {s} ({self.step_path(s)}): {r}" for s, r in failed)
      workdir = self.directory.parent
      raise CheckpointRestoreError(
        f"none of the checkpoints in {self.directory} restores: {details}. Nothing was changed. "
        f"To start over, move {workdir} aside (or choose another --workdir); to resume, put back "
        "an intact copy of the checkpoints."
      )
    return None, template

  def _set_aside(self, steps: list[int], restored: int, warn: Callable[[str], None]) -> None:
    """Moves the checkpoints of ``steps`` out of orbax's folder (see the module docstring)."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("checkpointing.set_aside")  # every process has restored
    target = self.directory.with_name(self.directory.name + UNRESTORABLE_SUFFIX)
    if jax.process_index() == 0:
      target.mkdir(exist_ok=True)
      for step in steps:
        dest, n = target / str(step), 1
        while dest.exists():  # an earlier fallback kept the same step: keep both
          dest, n = target / f"{step}.{n}", n + 1
        os.replace(self.step_path(step), dest)
        warn(
          f"resuming from step {restored}; the unrestorable checkpoint of step {step} was moved to "
          f"{dest} (kept for inspection; delete it when no longer needed)"
        )
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("checkpointing.set_aside_done")
    self._manager.reload()

  def delete(self, step: int) -> None:
    self._manager.delete(step)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _md5(path: pathlib.Path) -> str:
  digest = hashlib.md5()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def write_checksums(step_dir: pathlib.Path) -> None:
  """Records the size and MD5 of every file of a saved checkpoint (atomically)."""
  files = {
    str(p.relative_to(step_dir)): [p.stat().st_size, _md5(p)]
    for p in sorted(step_dir.rglob("*"))
    if p.is_file() and not p.name.startswith(CHECKSUMS_FILE)
  }
  tmp = step_dir / f"{CHECKSUMS_FILE}.tmp"
  tmp.write_text(json.dumps({"files": files}, indent=0))
  os.replace(tmp, step_dir / CHECKSUMS_FILE)


def find_damage(step_dir: pathlib.Path) -> str | None:
  """What differs in a checkpoint's files from ``CHECKSUMS_FILE``; None when they match (or when
  there is no record: a checkpoint written before records existed, or a save cut off in between)."""
  record = step_dir / CHECKSUMS_FILE
  if not record.exists():
    return None
  try:
    files = json.loads(record.read_text())["files"]
  except (OSError, ValueError, KeyError) as err:
    return f"its checksum record {record} is unreadable ({type(err).__name__}: {err})"
  for name, (size, md5) in files.items():
    path = step_dir / name
    if not path.is_file():
      return f"{path} is missing"
    if path.stat().st_size != size:
      return f"{path} has {path.stat().st_size} bytes, {size} when written"
    if _md5(path) != md5:
      return f"{path} differs from what was written (md5 {_md5(path)}, written {md5})"
  return None


def _first_line(err: Exception) -> str:
  """``Type: first line of the message``, without TensorStore's long spec dump."""
  text = (str(err).splitlines() or [""])[0].split(" See full TensorStore details")[0]
  return f"{type(err).__name__}: {text[:300]}"


def _steps(steps: list[int]) -> str:
  return "steps " + ", ".join(map(str, steps)) if steps else "none"


# ----------------------------------------------------------------------------------------------
# A training run's record and resumption (experiments.train).


def make_record(
  mesh, *, best_val_nll: float = np.inf, best_step: int = -1, train_seconds: float = 0.0
) -> dict:
  """The run's bookkeeping, saved beside the state (``checkpoints/STEP`` is ``(state, record)``):
  the template to restore (the defaults) and every record saved (the run's values), replicated."""
  record = {
    "best_val_nll": np.float32(best_val_nll),
    "best_step": np.int32(best_step),
    "train_seconds": np.float32(train_seconds),
  }
  return sharding.replicate(record, mesh)


def resume(
  latest: Checkpointer, best: Checkpointer, state: Any, mesh, step: int | None = None
) -> tuple[int, Any, dict]:
  """(start step, state, record as Python scalars) from ``latest``'s newest checkpoint that
  restores, or (0, ``state``, the fresh record) without one. Best-validation checkpoints written
  after the resumed step are deleted: the resumed run writes its own.

  With ``step`` (runs that resume together from their newest common step, ``train.train_seeds``)
  the checkpoint of ``step`` is restored and the newer ones are deleted: the resumed run, which
  computes exactly what they hold, writes them again."""
  if step is None:
    start, (state, record) = latest.restore_newest((state, make_record(mesh)))
  else:
    start, (state, record) = step, latest.restore(step, (state, make_record(mesh)))
    for newer in [s for s in latest.all_steps() if s > step]:
      latest.delete(newer)
  start = start or 0
  if start:
    for stale in [s for s in best.all_steps() if s > start]:
      best.delete(stale)
  return start, state, {k: sharding.to_host(v).item() for k, v in record.items()}


def check_resumable(workdir: pathlib.Path, config, resumable_differences=()) -> None:
  """Raises WorkdirConfigError when ``workdir/config.json`` holds a config that differs from
  ``config`` in a key outside ``resumable_differences`` (keys that do not alter the trajectory)."""
  path = workdir / "config.json"
  if not path.exists():
    return
  old = json.loads(path.read_text())
  new = metrics_lib.to_python(config.to_dict())
  # A key added to the library after the run started holds its default: the run is unchanged.
  defaults = metrics_lib.to_python(base_config.get_config().to_dict())
  old = {**{k: v for k, v in defaults.items() if k not in old and v == new.get(k)}, **old}
  diff = sorted(
    k for k in set(old) | set(new) if k not in resumable_differences and old.get(k) != new.get(k)
  )
  if diff:
    details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
    raise WorkdirConfigError(
      f"workdir {workdir} holds a run with a different config ({details}); resume it with the "
      "same config or choose another --workdir"
    )
