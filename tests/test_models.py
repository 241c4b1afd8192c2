"""Tests of dvae_jax/models.py: the architectures of math.md §5 against a NumPy forward pass."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dvae_jax import models

PIXELS = 784


def _mean_x(seed=0, pixels=PIXELS):
  rng = np.random.default_rng(seed)
  m = rng.uniform(0.0, 1.0, pixels).astype(np.float32)
  m[:3] = [0.0, 1.0, 0.5]  # exercise the clip of the logit offset
  return m


def _kernel_shapes(mlp):
  shapes = [tuple(d.kernel.shape) for d in mlp.dense]
  return shapes + [tuple(mlp.out.kernel.shape)]


# math.md §5, written out by hand.
EXPECTED_SHAPES = {
  "1-layer-lin": ([[(784, 200)]], [(200, 784)]),
  "1-layer-nonlin": ([[(784, 200), (200, 200), (200, 200)]], [(200, 200), (200, 200), (200, 784)]),
  "2-layer-nonlin": (
    [[(784, 200), (200, 200), (200, 200)], [(984, 200), (200, 200), (200, 200)]],
    [(400, 200), (200, 200), (200, 784)],
  ),
  "4-layer-nonlin": (
    [[(784 + 100 * i, 200), (200, 200), (200, 100)] for i in range(4)],
    [(400, 200), (200, 200), (200, 784)],
  ),
}
EXPECTED_RBM = {
  "1-layer-lin": (100, 100),
  "1-layer-nonlin": (100, 100),
  "2-layer-nonlin": (200, 200),
  "4-layer-nonlin": (200, 200),
}


@pytest.mark.parametrize("name", sorted(models.STRUCTS))
def test_struct_layer_shapes_match_math_section5(name):
  net = models.DVAENet(name, _mean_x(), rngs=nnx.Rngs(0))
  enc, dec = EXPECTED_SHAPES[name]
  assert [_kernel_shapes(e) for e in net.encoders] == enc
  assert _kernel_shapes(net.decoder) == dec
  spec = models.STRUCTS[name]
  assert (spec.n1, spec.n2) == EXPECTED_RBM[name]
  assert spec.num_latent == spec.n1 + spec.n2
  for mlp in [*net.encoders, net.decoder]:
    assert len(mlp.norm) == len(mlp.dense)
    for bn in mlp.norm:
      assert bn.momentum == pytest.approx(0.8) and bn.epsilon == pytest.approx(1e-2)


def test_he_normal_kernels_and_zero_biases():
  net = models.DVAENet("1-layer-nonlin", _mean_x(), rngs=nnx.Rngs(1))
  kernel = np.asarray(net.encoders[0].dense[0].kernel[...])
  n = kernel.size
  # He normal: variance 2 / fan_in. The sample variance of n draws has relative standard error
  # sqrt(2 / n) for a normal (smaller for the truncated normal used); allow 5 standard errors.
  rel = kernel.var() / (2.0 / 784) - 1.0
  assert abs(rel) < 5 * math.sqrt(2.0 / n)
  assert abs(kernel.mean()) < 5 * math.sqrt(2.0 / 784 / n)
  for mlp in [*net.encoders, net.decoder]:
    for d in [*mlp.dense, mlp.out]:
      np.testing.assert_array_equal(np.asarray(d.bias[...]), 0.0)


def _np_mlp(mlp, h, *, train):
  """Independent float64 forward pass of models.MLP; returns the output and the batch statistics."""
  stats = []
  for dense, bn in zip(mlp.dense, mlp.norm, strict=True):
    a = h @ np.asarray(dense.kernel[...], np.float64) + np.asarray(dense.bias[...], np.float64)
    if train:
      mean, var = a.mean(0), a.var(0)
      stats.append((mean, var))
    else:
      mean, var = np.asarray(bn.mean[...], np.float64), np.asarray(bn.var[...], np.float64)
    a = (a - mean) / np.sqrt(var + 1e-2) * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...])
    h = np.tanh(a)
  return h @ np.asarray(mlp.out.kernel[...], np.float64) + np.asarray(mlp.out.bias[...]), stats


def test_forward_pass_matches_numpy_in_eval_and_train_mode():
  spec = models.StructSpec("tiny", 2, 3, (5, 4), (6,), num_pixels=7)
  mean_x = np.linspace(0.1, 0.9, 7).astype(np.float32)
  net = models.DVAENet(spec, mean_x, rngs=nnx.Rngs(2))
  rng = np.random.default_rng(3)
  # Non-trivial biases, BN affine parameters and running statistics (vectors other than mean_x).
  for mlp in [*net.encoders, net.decoder]:
    for d in [*mlp.dense, mlp.out]:
      d.bias[...] = jnp.asarray(rng.normal(size=d.bias.shape), jnp.float32)
    for bn in mlp.norm:
      bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, bn.scale.shape), jnp.float32)
      bn.bias[...] = jnp.asarray(rng.normal(size=bn.bias.shape), jnp.float32)
      bn.mean[...] = jnp.asarray(rng.normal(size=bn.mean.shape), jnp.float32)
      bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, bn.var.shape), jnp.float32)
  x = (rng.uniform(size=(9, 7)) < 0.5).astype(np.float32)
  zeta = rng.uniform(size=(9, 3)).astype(np.float32)
  xc = x.astype(np.float64) - mean_x
  offset = np.log(mean_x / (1 - mean_x))
  z6 = rng.uniform(size=(9, 6))

  # Eval mode: running statistics.
  want0, _ = _np_mlp(net.encoders[0], xc, train=False)
  want1, _ = _np_mlp(net.encoders[1], np.concatenate([xc, zeta], 1), train=False)
  want_dec, _ = _np_mlp(net.decoder, z6, train=False)
  np.testing.assert_allclose(
    net.encode_group(0, x, None, use_running_average=True).logits, want0, rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    net.encode_group(1, x, zeta, use_running_average=True).logits, want1, rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    net.decode(jnp.asarray(z6, jnp.float32), use_running_average=True),
    want_dec + offset,
    rtol=1e-5,
    atol=1e-5,
  )

  # Train mode: batch statistics, and the running averages move with momentum 0.8.
  old_mean = np.asarray(net.encoders[0].norm[0].mean[...])
  old_var = np.asarray(net.encoders[0].norm[0].var[...])
  net.train()
  want0, stats = _np_mlp(net.encoders[0], xc, train=True)
  np.testing.assert_allclose(net.encode_group(0, x, None).logits, want0, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
    net.encoders[0].norm[0].mean[...], 0.8 * old_mean + 0.2 * stats[0][0], rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    net.encoders[0].norm[0].var[...], 0.8 * old_var + 0.2 * stats[0][1], rtol=1e-4, atol=1e-5
  )
  net.eval()
  np.testing.assert_allclose(
    net.encode_group(1, x, zeta).logits,
    _np_mlp(net.encoders[1], np.concatenate([xc, zeta], 1), train=False)[0],
    rtol=1e-5,
    atol=1e-5,
  )


def test_centering_and_logit_offset_at_initialisation():
  mean_x = _mean_x(4)
  net = models.DVAENet("1-layer-nonlin", mean_x, rngs=nnx.Rngs(5))
  net.eval()
  # Zero biases and unit running statistics: x = mean_x gives zero logits, and ζ = 0 decodes to the
  # offset logit(clip(mean_x, 1e-3, 1 - 1e-3)).
  np.testing.assert_allclose(net.encode_group(0, mean_x[None], None).logits, 0.0, atol=1e-6)
  clipped = np.clip(mean_x.astype(np.float64), 1e-3, 1 - 1e-3)
  np.testing.assert_allclose(
    net.decode(jnp.zeros((1, 200)))[0], np.log(clipped / (1 - clipped)), rtol=1e-5, atol=1e-5
  )


def test_gaussian_integral_head_and_scale():
  net = models.DVAENet("2-layer-nonlin", _mean_x(), gaussian_integral=True, rngs=nnx.Rngs(6))
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, PIXELS)) < 0.5, jnp.float32)
  logits, shift_logits = net.encode_group(1, x, jnp.zeros((4, 200)))
  chex.assert_shape([logits, shift_logits], (4, 200))
  shift = models.gaussian_shift(shift_logits)
  assert bool(jnp.all(jnp.abs(shift) < 0.25))
  np.testing.assert_allclose(
    models.gaussian_shift(jnp.array([0.0, 1.0])),
    [0.0, 0.5 * (1 / (1 + math.exp(-1)) - 0.5)],
    rtol=1e-6,
  )
  np.testing.assert_allclose(net.gaussian_scale(), np.full(400, 0.25), rtol=1e-6)
  net.s_var[...] = -2.0 * jnp.ones(400)
  np.testing.assert_allclose(net.gaussian_scale(), np.full(400, 0.45), rtol=1e-6)
  plain = models.DVAENet("1-layer-lin", _mean_x(), rngs=nnx.Rngs(6))
  with pytest.raises(ValueError, match="gaussian_integral=True"):
    plain.gaussian_scale()


def test_split_merge_roundtrip_and_hierarchy_dependence():
  net = models.DVAENet("4-layer-nonlin", _mean_x(), rngs=nnx.Rngs(7))
  graphdef, params, batch_stats = nnx.split(net, nnx.Param, nnx.BatchStat)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(5, PIXELS)) < 0.5, jnp.float32)
  zeta = jnp.asarray(np.random.default_rng(2).uniform(size=(5, 300)), jnp.float32)

  def group3(params, zeta):
    model = nnx.merge(graphdef, params, batch_stats)
    return jnp.sum(model.encode_group(3, x, zeta, use_running_average=True).logits)

  grad_zeta = jax.grad(group3, argnums=1)(params, zeta)
  chex.assert_tree_all_finite(grad_zeta)
  # Group 4's encoder reads every earlier group.
  for g in range(3):
    assert float(jnp.max(jnp.abs(grad_zeta[:, 100 * g : 100 * (g + 1)]))) > 0
  merged = nnx.merge(graphdef, params, batch_stats)
  chex.assert_trees_all_close(
    merged.decode(zeta @ jnp.ones((300, 400)) / 300), net.decode(zeta @ jnp.ones((300, 400)) / 300)
  )


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="unknown struct"):
    models.DVAENet("3-layer", _mean_x(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="even"):
    models.get_struct(models.StructSpec("odd", 1, 3, (), ()))
  with pytest.raises(ValueError, match="mean_x"):
    models.DVAENet("1-layer-lin", np.zeros(10), rngs=nnx.Rngs(0))
  net = models.DVAENet(
    models.StructSpec("t", 2, 2, (), (), num_pixels=4), np.full(4, 0.5), rngs=nnx.Rngs(0)
  )
  with pytest.raises(ValueError, match="zeta_prev"):
    net.encode_group(1, jnp.zeros((1, 4)), None)
  with pytest.raises(ValueError, match="group must be"):
    net.encode_group(2, jnp.zeros((1, 4)), jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match="columns"):
    net.decode(jnp.zeros((1, 3)))
