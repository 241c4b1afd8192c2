"""Encoder/decoder networks of the discrete VAEs (math.md §5), as thin Flax NNX modules.

A *struct* names an architecture: the number of latent groups of the hierarchical posterior, the
units per group, and the hidden widths of each group's encoder and of the decoder. The latent vector
is the concatenation of the groups, ``zeta = [group_1, ..., group_G]`` of width ``num_latent``; the
RBM prior sees its first half as ``z1`` and its second half as ``z2``
(``n1 = n2 = num_latent / 2``), which is math.md §5's "group 1 ‖ group 2" for two groups and
"groups 1–2 ‖ 3–4" for four.

The modules only hold parameters and compute logits; sampling and the hierarchy over groups are
pure functions in ``dvae_jax.posterior``, the objectives in ``dvae_jax.objectives`` and
``dvae_jax.evaluation``.

Example::

  net = DVAENet("1-layer-lin", mean_x, rngs=nnx.Rngs(0))
  logits = net.encode_group(0, x, None).logits   # [batch, 200]
  x_logits = net.decode(zeta)                    # [batch, 784]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

# Batch normalisation of the hidden layers (math.md §5). Flax's convention matches the reference:
# running = momentum * running + (1 - momentum) * batch statistic.
BN_MOMENTUM = 0.8
BN_EPSILON = 1e-2
# The decoder's fixed logit offset is logit(clip(mean_x, MEAN_CLIP, 1 - MEAN_CLIP)) (math.md §5).
MEAN_CLIP = 1e-3
# Gaussian-integral posterior (math.md §4): s = |S_SCALE * s_var| + S_FLOOR, shift = SHIFT_SCALE *
# (sigmoid(l') - 0.5).
S_SCALE = 0.2
S_FLOOR = 0.05
SHIFT_SCALE = 0.5


class StructSpec(NamedTuple):
  """An architecture (math.md §5).

  Attributes:
    name: a label.
    num_groups: number of latent groups of the hierarchical posterior.
    units_per_group: latent units per group.
    encoder_hidden: hidden widths of each group's encoder (``()`` for a linear encoder).
    decoder_hidden: hidden widths of the decoder (``()`` for a linear decoder).
    num_pixels: data dimension, values per example (784 for 28x28 images; the runner sets the
      data's, ``get_struct(name, num_pixels)``).
  """

  name: str
  num_groups: int
  units_per_group: int
  encoder_hidden: tuple[int, ...]
  decoder_hidden: tuple[int, ...]
  num_pixels: int = 784

  @property
  def num_latent(self) -> int:
    return self.num_groups * self.units_per_group

  @property
  def n1(self) -> int:
    """Units on the first side of the RBM (the first half of the latent vector)."""
    return self.num_latent // 2

  @property
  def n2(self) -> int:
    """Units on the second side of the RBM (the second half of the latent vector)."""
    return self.num_latent - self.num_latent // 2

  def validate(self) -> StructSpec:
    """Returns self; raises ``ValueError`` naming the problem when the spec is unusable."""
    if self.num_groups < 1 or self.units_per_group < 1 or self.num_pixels < 1:
      raise ValueError(
        f"struct {self.name!r}: num_groups, units_per_group and num_pixels must be "
        f">= 1, got {self.num_groups}, {self.units_per_group}, {self.num_pixels}"
      )
    if self.num_latent % 2:
      raise ValueError(
        f"struct {self.name!r}: num_latent = {self.num_latent} must be even so that "
        "the RBM has two equal sides"
      )
    if any(h < 1 for h in self.encoder_hidden + self.decoder_hidden):
      raise ValueError(f"struct {self.name!r}: hidden widths must be >= 1")
    return self


STRUCTS: dict[str, StructSpec] = {
  "1-layer-lin": StructSpec("1-layer-lin", 1, 200, (), ()),
  "1-layer-nonlin": StructSpec("1-layer-nonlin", 1, 200, (200, 200), (200, 200)),
  "2-layer-nonlin": StructSpec("2-layer-nonlin", 2, 200, (200, 200), (200, 200)),
  "4-layer-nonlin": StructSpec("4-layer-nonlin", 4, 100, (200, 200), (200, 200)),
}


def get_struct(struct: str | StructSpec, num_pixels: int | None = None) -> StructSpec:
  """Looks a struct up by name (math.md §5) or validates a custom ``StructSpec``; with
  ``num_pixels`` (the data's dimension), that struct for data of that many values per example."""
  if isinstance(struct, StructSpec):
    spec = struct
  elif struct not in STRUCTS:
    raise ValueError(f"unknown struct {struct!r}; valid names: {sorted(STRUCTS)}")
  else:
    spec = STRUCTS[struct]
  if num_pixels is not None:
    spec = spec._replace(num_pixels=num_pixels)
  return spec.validate()


class GroupEncoding(NamedTuple):
  """One group's encoder output, q(z_i | x, ζ_<i) (math.md §4, §5).

  Attributes:
    logits: [batch, units_per_group] Bernoulli logits l_i.
    shift_logits: [batch, units_per_group] logits l'_i of the shift Δμ of the Gaussian-integral
      posterior (``gaussian_shift``), or ``None`` for a model without that head.
  """

  logits: jax.Array
  shift_logits: jax.Array | None = None


class DataStat(nnx.BatchStat):
  """Fixed statistics of the training data (pixel means and the derived logit offset).

  A subclass of ``nnx.BatchStat`` so that ``nnx.split(model, nnx.Param, nnx.BatchStat)`` is
  exhaustive and checkpoints carry them; they are never trained and never updated.
  """


class MLP(nnx.Module):
  """Dense → BatchNorm → tanh hidden layers, then a plain Dense output (math.md §5).

  With ``second_head`` a second output Dense reads the same last hidden layer (the shift head of the
  Gaussian-integral posterior). Kernels He-normal, biases zero.
  """

  def __init__(
    self,
    in_features: int,
    hidden: tuple[int, ...],
    out_features: int,
    *,
    second_head: bool = False,
    rngs: nnx.Rngs,
  ):
    init = nnx.initializers.he_normal()
    widths = (in_features, *hidden)
    self.dense = nnx.List(
      [
        nnx.Linear(a, b, kernel_init=init, rngs=rngs)
        for a, b in zip(widths[:-1], widths[1:], strict=True)
      ]
    )
    self.norm = nnx.List(
      [nnx.BatchNorm(b, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs) for b in hidden]
    )
    self.out = nnx.Linear(widths[-1], out_features, kernel_init=init, rngs=rngs)
    self.out2 = (
      nnx.Linear(widths[-1], out_features, kernel_init=init, rngs=rngs) if second_head else None
    )

  def __call__(self, h: jax.Array, *, use_running_average: bool | None = None):
    """Returns the output ``[batch, out]`` (a pair of them with ``second_head``)."""
    for dense, norm in zip(self.dense, self.norm, strict=True):
      h = jnp.tanh(norm(dense(h), use_running_average=use_running_average))
    if self.out2 is None:
      return self.out(h)
    return self.out(h), self.out2(h)


class DVAENet(nnx.Module):
  """Hierarchical encoder and decoder of a discrete VAE (math.md §5).

  Args:
    struct: a name in ``STRUCTS`` or a custom ``StructSpec``.
    mean_x: ``[num_pixels]`` training-set pixel means; the encoder sees ``x - mean_x`` and the
      decoder logits get the offset ``logit(clip(mean_x, 1e-3, 1 - 1e-3))``.
    gaussian_integral: add the second encoder head and the per-unit ``s_var`` of the DVAE# Gaussian-
      integral posterior (math.md §4).
    rngs: parameter initialisation.

  Train/eval mode: ``model.train()`` / ``model.eval()`` switch the BatchNorm layers; every call also
  takes ``use_running_average`` to override the mode (``True`` = running statistics).
  """

  def __init__(
    self,
    struct: str | StructSpec,
    mean_x: jax.Array,
    *,
    gaussian_integral: bool = False,
    rngs: nnx.Rngs,
  ):
    spec = get_struct(struct)
    mean_x = jnp.asarray(mean_x, jnp.float32)
    if mean_x.shape != (spec.num_pixels,):
      raise ValueError(f"mean_x must have shape ({spec.num_pixels},), got {mean_x.shape}")
    self.spec = spec
    self.gaussian_integral = gaussian_integral
    units = spec.units_per_group
    self.encoders = nnx.List(
      [
        MLP(
          spec.num_pixels + i * units,
          spec.encoder_hidden,
          units,
          second_head=gaussian_integral,
          rngs=rngs,
        )
        for i in range(spec.num_groups)
      ]
    )
    self.decoder = MLP(spec.num_latent, spec.decoder_hidden, spec.num_pixels, rngs=rngs)
    self.mean_x = DataStat(mean_x)
    clipped = jnp.clip(mean_x, MEAN_CLIP, 1.0 - MEAN_CLIP)
    self.logit_offset = DataStat(jnp.log(clipped) - jnp.log1p(-clipped))
    self.s_var = nnx.Param(jnp.ones((spec.num_latent,))) if gaussian_integral else None

  def encode_group(
    self,
    group: int,
    x: jax.Array,
    zeta_prev: jax.Array | None,
    *,
    use_running_average: bool | None = None,
  ) -> GroupEncoding:
    """Logits of group ``group`` of the hierarchical posterior, q(z_i | x, ζ_<i) (math.md §4).

    Args:
      group: group index in ``[0, num_groups)`` (a Python int).
      x: ``[batch, num_pixels]`` data.
      zeta_prev: ``[batch, group * units_per_group]`` the earlier groups' samples (relaxed in
        training, binary at evaluation), or ``None`` for group 0.
      use_running_average: BatchNorm mode override.

    Returns:
      ``GroupEncoding(logits, shift_logits)``, each ``[batch, units_per_group]``; ``shift_logits``
      is ``None`` without ``gaussian_integral``.
    """
    if not 0 <= group < self.spec.num_groups:
      raise ValueError(f"group must be in [0, {self.spec.num_groups}), got {group}")
    h = x - self.mean_x[...]
    if group > 0:
      expected = group * self.spec.units_per_group
      if zeta_prev is None or zeta_prev.shape[-1] != expected:
        got = None if zeta_prev is None else zeta_prev.shape
        raise ValueError(f"group {group} needs zeta_prev of width {expected}, got {got}")
      h = jnp.concatenate([h, zeta_prev.astype(h.dtype)], axis=-1)
    out = self.encoders[group](h, use_running_average=use_running_average)
    return GroupEncoding(*out) if self.gaussian_integral else GroupEncoding(out)

  def decode(self, zeta: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
    """Bernoulli logits of p(x|ζ) ``[batch, num_pixels]`` from ``zeta`` ``[batch, num_latent]``."""
    if zeta.shape[-1] != self.spec.num_latent:
      raise ValueError(f"zeta must have {self.spec.num_latent} columns, got shape {zeta.shape}")
    logits = self.decoder(zeta, use_running_average=use_running_average)
    return logits + self.logit_offset[...]

  def gaussian_scale(self) -> jax.Array:
    """Per-unit standard deviation s = |0.2 s_var| + 0.05, ``[num_latent]`` (math.md §4)."""
    if self.s_var is None:
      raise ValueError("gaussian_scale needs a model built with gaussian_integral=True")
    return jnp.abs(S_SCALE * self.s_var[...]) + S_FLOOR


def gaussian_shift(shift_logits: jax.Array) -> jax.Array:
  """Posterior shift Δμ = 0.5 (σ(l') - 0.5) of the Gaussian-integral posterior (math.md §4)."""
  return SHIFT_SCALE * (jax.nn.sigmoid(shift_logits) - 0.5)
