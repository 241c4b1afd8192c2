"""Tests of experiments/checkpointing.py: exact round trips of arbitrary state pytrees."""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
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
