"""Tests of experiments/checkpointing.py: exact round trips of arbitrary state pytrees, fallback
from damaged checkpoints, failed writes."""

import errno
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from experiments import checkpointing, sharding


class _State(NamedTuple):
  step: jax.Array
  params: object
  opt_state: object
  key: jax.Array


def _state(seed):
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(seed))
  params = nnx.state(model, nnx.Param)
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = opt.update(grads, opt_state, params)  # non-trivial moments
  return _State(jnp.array(seed, jnp.int32), params, opt_state, jax.random.key(seed))


def test_roundtrip_is_exact_and_keeps_structure(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path / "c", max_to_keep=2)
  saved = _state(3)
  ckpt.save(5, saved)
  ckpt.wait_until_finished()
  template = _state(9)
  restored = ckpt.restore(5, template)
  ckpt.close()
  assert jax.tree.structure(restored) == jax.tree.structure(saved)
  chex.assert_trees_all_equal(jax.random.key_data(restored.key), jax.random.key_data(saved.key))
  chex.assert_trees_all_equal(restored._replace(key=0), saved._replace(key=0))
  # The restored key is a usable typed key that draws what the saved one draws.
  np.testing.assert_array_equal(
    jax.random.uniform(restored.key, (3,)), jax.random.uniform(saved.key, (3,))
  )


class _TwoPartChains(NamedTuple):
  z1: jax.Array
  z2: jax.Array
  log_z: jax.Array


class _Chains(NamedTuple):
  z: jax.Array
  log_z: jax.Array


@pytest.mark.parametrize("n2", [3, 0])
def test_two_part_chains_restore_as_one_array(tmp_path, n2):
  """A sampler state saved with chains (z1 [S, n1], z2 [S, n2]) (a graph prior's empty z2 is not
  saved) restores into today's one chain array z = [z1, z2]."""
  ckpt = checkpointing.Checkpointer(tmp_path / "c", max_to_keep=2)
  z1 = jnp.arange(20.0).reshape(4, 5)
  z2 = -jnp.arange(4.0 * n2).reshape(4, n2)
  ckpt.save(7, {"sampler_state": _TwoPartChains(z1, z2, jnp.float32(2.5))})
  template = {"sampler_state": _Chains(jnp.zeros((4, 5 + n2)), jnp.float32(0.0))}
  restored = ckpt.restore(7, template)
  np.testing.assert_array_equal(restored["sampler_state"].z, jnp.concatenate([z1, z2], -1))
  assert float(restored["sampler_state"].log_z) == 2.5
  ckpt.close()


def test_keeps_latest_and_takes_template_sharding(tmp_path):
  mesh = sharding.make_mesh()
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, {"w": jnp.full((4,), float(step))})
  ckpt.wait_until_finished()
  assert ckpt.latest_step() == 3 and ckpt.all_steps() == [2, 3]
  template = sharding.replicate({"w": jnp.zeros((4,))}, mesh)
  restored = ckpt.restore(2, template)
  assert restored["w"].sharding == template["w"].sharding
  np.testing.assert_array_equal(restored["w"], 2.0)
  ckpt.delete(3)
  assert ckpt.latest_step() == 2
  ckpt.close()


def test_unfinished_save_is_ignored(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=2)
  ckpt.save(1, {"w": jnp.ones(2)})
  ckpt.close()
  # What a save killed half-way leaves behind: orbax's temporary folder, never renamed.
  (tmp_path / "2.orbax-checkpoint-tmp-123").mkdir()
  again = checkpointing.Checkpointer(tmp_path, max_to_keep=2)
  assert again.latest_step() == 1
  again.close()


def _damage(checkpoint_dir):
  for path in checkpoint_dir.rglob("*"):
    if path.is_file() and path.parent.name == "d":  # OCDBT data files: truncated by a disk error
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _tree_files(directory):
  return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_damaged_checkpoint_falls_back_and_is_set_aside_not_deleted(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path / "c", max_to_keep=2)
  for step in (2, 4):
    ckpt.save(step, {"w": jnp.full((64,), float(step))})
  _damage(tmp_path / "c" / "4")
  damaged = _tree_files(tmp_path / "c" / "4")
  warnings = []
  step, tree = ckpt.restore_newest({"w": jnp.zeros((64,))}, warn=warnings.append)
  assert step == 2 and np.all(np.asarray(tree["w"]) == 2.0)
  assert warnings[0].startswith(f"checkpoint of step 4 ({tmp_path / 'c' / '4'}) could not be")
  kept = tmp_path / "c_unrestorable" / "4"
  assert f"moved to {kept}" in warnings[1] and _tree_files(kept) == damaged
  # The resumed run saves steps 4 and 6 again; orbax's max_to_keep never reaches the damaged one.
  assert ckpt.all_steps() == [2]
  for step in (4, 6):
    ckpt.save(step, {"w": jnp.full((64,), float(step))})
  assert ckpt.all_steps() == [4, 6] and _tree_files(kept) == damaged
  # A second fallback from the same step keeps both damaged copies.
  for _ in range(2):
    _damage(tmp_path / "c" / "6")
    assert ckpt.restore_newest({"w": jnp.zeros((64,))}, warn=warnings.append)[0] == 4
    ckpt.save(6, {"w": jnp.full((64,), 6.0)})
  assert sorted(p.name for p in (tmp_path / "c_unrestorable").iterdir()) == ["4", "6", "6.1"]
  ckpt.close()


def test_no_checkpoint_restores_is_a_clear_error_and_changes_nothing(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path / "c", max_to_keep=2)
  for step in (2, 4):
    ckpt.save(step, {"w": jnp.full((64,), float(step))})
    _damage(tmp_path / "c" / str(step))
  before = _tree_files(tmp_path)
  with pytest.raises(checkpointing.CheckpointRestoreError) as info:
    ckpt.restore_newest({"w": jnp.zeros((64,))}, warn=lambda message: None)
  message = str(info.value)
  assert f"none of the checkpoints in {tmp_path / 'c'} restores: step 4 (" in message
  assert "step 2 (" in message and "Nothing was changed" in message
  assert f"To start over, move {tmp_path} aside (or choose another --workdir)" in message
  assert _tree_files(tmp_path) == before and ckpt.all_steps() == [2, 4]
  ckpt.close()
  # An empty folder is a fresh start, not an error.
  empty = checkpointing.Checkpointer(tmp_path / "e", max_to_keep=2)
  assert empty.restore_newest({"w": 1}) == (None, {"w": 1})
  empty.close()


def test_failed_write_is_reported_and_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
  ckpt = checkpointing.Checkpointer(tmp_path / "c", max_to_keep=1)
  ckpt.save(2, {"w": jnp.full((4,), 2.0)})
  real_save = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(checkpointing.CheckpointWriteError) as info:
    ckpt.save(4, {"w": jnp.full((4,), 4.0)})
  message = str(info.value)
  assert f"could not write the checkpoint of step 4 to {tmp_path / 'c'}" in message
  assert (
    "No space left on device" in message and "earlier checkpoints (steps 2) are intact" in message
  )
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  assert ckpt.all_steps() == [2]
  np.testing.assert_array_equal(ckpt.restore(2, {"w": jnp.zeros((4,))})["w"], 2.0)
  ckpt.close()


def test_silent_damage_is_caught_by_the_checksums_and_orbax_errors_still_count(tmp_path):
  """A flipped bit in the array data restores through orbax without any error, as wrong numbers;
  the checksum record written at save time catches it. Without a record (checkpoints written before
  records existed) orbax's own error is what counts."""
  ckpt = checkpointing.Checkpointer(tmp_path / "c", max_to_keep=3)
  for step in (2, 4, 6):
    ckpt.save(step, {"w": jnp.arange(10_000, dtype=jnp.float32) + step})
  data_files = [p for p in (tmp_path / "c" / "6").rglob("*") if p.parent.name == "d"]
  biggest = max(data_files, key=lambda p: p.stat().st_size)
  raw = bytearray(biggest.read_bytes())
  raw[len(raw) // 2] ^= 0x40
  biggest.write_bytes(bytes(raw))
  template = {"w": jnp.zeros((10_000,))}
  assert not np.array_equal(ckpt.restore(6, template)["w"], np.arange(10_000) + 6.0)  # silently
  assert "differs from what was written (md5" in checkpointing.find_damage(tmp_path / "c" / "6")
  _damage(tmp_path / "c" / "4")
  (tmp_path / "c" / "4" / checkpointing.CHECKSUMS_FILE).unlink()
  warnings = []
  step, tree = ckpt.restore_newest(template, warn=warnings.append)
  assert step == 2 and np.array_equal(tree["w"], np.arange(10_000) + 2.0)
  assert f"({biggest} differs from what was written" in warnings[0]
  assert "could not be restored (ValueError: OUT_OF_RANGE" in warnings[1]  # orbax's own error
  ckpt.close()
