"""Tests of experiments/sharding.py, and that JAX's random draws do not depend on the sharding."""

import os
import pathlib
import subprocess
import sys
import textwrap
import types

import jax
import numpy as np
import pytest

from experiments import sharding

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_put_global_and_replicate_on_one_device():
  mesh = sharding.make_mesh()
  x = np.arange(12.0).reshape(4, 3)
  arr = sharding.put_global(x, sharding.batch_sharded(mesh))
  np.testing.assert_array_equal(sharding.to_host(arr), x)
  # The shardings themselves (on one device every placement holds the whole array, so the values
  # alone cannot tell a batch split from a replica): the leading axis over the mesh's 'data' axis.
  assert arr.sharding.spec == jax.sharding.PartitionSpec(sharding.DATA_AXIS)
  assert arr.sharding.mesh.axis_names == (sharding.DATA_AXIS,)
  tree = sharding.replicate({"a": np.ones(2), "key": jax.random.key(3)}, mesh)
  assert tree["a"].sharding == sharding.replicated(mesh)
  assert tree["a"].sharding.spec == tree["key"].sharding.spec == jax.sharding.PartitionSpec()
  np.testing.assert_array_equal(
    jax.random.key_data(tree["key"]), jax.random.key_data(jax.random.key(3))
  )


def test_divisibility_is_checked():
  sharding.check_divisible("batch_size", 7, sharding.make_mesh())  # one device divides everything
  four = types.SimpleNamespace(devices=np.empty((4,), object))  # a stand-in for a 4-device mesh
  sharding.check_divisible("batch_size", 8, four)
  with pytest.raises(ValueError, match=r"batch_size=6 must be divisible .* devices \(4\)"):
    sharding.check_divisible("batch_size", 6, four)


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

_SPLIT_POPULATION = textwrap.dedent("""
  import jax, jax.numpy as jnp, numpy as np
  from dvae_jax import samplers
  from dvae_jax.priors import rbm
  from experiments import experiment as experiment_lib
  from experiments import sharding
  assert jax.device_count() == 4
  mesh = sharding.make_mesh()
  n1, n2 = 6, 5
  k = jax.random.split(jax.random.key(0), 3)
  m0 = rbm.RBM(b1=jnp.zeros(n1), b2=jnp.zeros(n2), w=0.3 * jax.random.normal(k[0], (n1, n2)))
  m1 = m0._replace(w=m0.w + 0.2 * jax.random.normal(k[1], (n1, n2)), b1=0.1 * jnp.ones(n1))
  sampler = samplers.make_prior_sampler("pa", num_samples=64, num_sweeps=4)

  def state_of(sampler_state):
    step = jnp.zeros((), jnp.int32)
    return experiment_lib.TrainState(step, {"w": m0.w}, {}, (), sampler_state, k[2])

  # 64 chains split 16 per device; 62 do not split: replicated.
  chains = sampler.init(k[2], m0)
  shardings = experiment_lib.state_shardings(state_of(chains), mesh)
  split = sharding.batch_sharded(mesh)
  assert shardings.sampler_state.z == split
  assert shardings.sampler_state.log_z == sharding.replicated(mesh)
  assert shardings.params["w"] == shardings.key == sharding.replicated(mesh)
  odd = samplers.make_prior_sampler("pa", num_samples=62, num_sweeps=4).init(k[2], m0)
  odd_shardings = experiment_lib.state_shardings(state_of(odd), mesh)
  assert odd_shardings.sampler_state.z == sharding.replicated(mesh)

  # One PA step of the population split over 4 devices draws the same chains as on one device
  # (PA's reweighting sums over chains: only their order of summation differs).
  placed = sharding.place(chains, shardings.sampler_state)
  assert [s.data.shape for s in placed.z.addressable_shards] == [(16, n1 + n2)] * 4
  step = jax.jit(sampler.step, out_shardings=(shardings.sampler_state, sharding.replicated(mesh)))
  split_state, split_info = step(k[1], placed, sharding.replicate(m1, mesh))
  one_state, one_info = jax.jit(sampler.step)(k[1], chains, m1)
  assert [s.data.shape for s in split_state.z.addressable_shards] == [(16, n1 + n2)] * 4
  np.testing.assert_array_equal(np.asarray(split_state.z), np.asarray(one_state.z))
  np.testing.assert_allclose(float(split_state.log_z), float(one_state.log_z), rtol=1e-6)
  assert int(split_info.num_stages) == int(one_info.num_stages)
  print("ok")
""")

# Chains of a graph machine split over devices: every device draws its own chains' random bits, so
# a sweep needs no communication at all (the draw once paired chains j and S/2 + j, and XLA moved
# words between devices at every colour: 48 all-to-all and 24 collective-permutes in 50 sweeps of
# Pegasus); the states are those of one device.
_SPLIT_GRAPH_CHAINS = textwrap.dedent("""
  import re
  import jax, numpy as np
  from dvae_jax import priors
  from dvae_jax.graphs import gibbs, topologies
  from experiments import sharding
  mesh = sharding.make_mesh()
  for g in (topologies.chimera(2, 2, 4), topologies.pegasus(2), topologies.zephyr(1, 2)):
    m = priors.graph.init_machine(g)
    m = m.replace(w=0.5 * jax.random.normal(jax.random.key(0), m.w.shape))
    z = gibbs.init(jax.random.key(1), m, 64)
    run = jax.jit(lambda k, z, m: gibbs.run(k, z, m, 5), out_shardings=sharding.batch_sharded(mesh))
    split = sharding.put_global(np.asarray(z), sharding.batch_sharded(mesh))
    hlo = run.lower(jax.random.key(2), split, sharding.replicate(m, mesh)).compile().as_text()
    found = re.findall(r"all-to-all|collective-permute|all-gather|all-reduce|reduce-scatter", hlo)
    assert not found, (g.num_nodes, sorted(set(found)))
    out = run(jax.random.key(2), split, sharding.replicate(m, mesh))
    assert [s.data.shape for s in out.addressable_shards] == [(16, g.num_nodes)] * 4
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jax.jit(gibbs.run, static_argnums=3)(
      jax.random.key(2), z, m, 5)))
  print("ok")
""")


def test_graph_chains_split_over_devices_sweep_without_communication():
  _run_on_four_devices(_SPLIT_GRAPH_CHAINS)


def _run_on_four_devices(script: str) -> None:
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_random_draws_do_not_depend_on_the_sharding():
  _run_on_four_devices(_FOUR_DEVICES)


def test_prior_sampler_chains_are_split_over_devices_and_sample_as_on_one():
  _run_on_four_devices(_SPLIT_POPULATION)
