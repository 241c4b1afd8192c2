"""The hierarchical posterior q(·|x) = Π_i q(·_i | x, ·_<i), sampled group by group (math.md §4).

One loop serves training, evaluation and the image grids, as Flax's examples/vae has one
encode → reparameterise path for train and eval: ``sample_hierarchy`` runs each group's encoder on
[x − mean_x, samples of the earlier groups] (``models.DVAENet.encode_group``) and hands the
``GroupEncoding`` to a ``sample_group`` function that draws that group:

* training: the relaxed samplers of the method (``objectives.relaxed_group_sampler``);
* evaluation and reconstructions: binary z ~ Bernoulli(σ(l)) (``bernoulli_group``);
* scoring given binary states (``evaluation.exact_log_likelihood``): a function that returns them.

Shapes: x [batch, pixels]; K samples per example; the latent vector [K, batch, num_latent] is the
concatenation of the groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dvae_jax import models
from dvae_jax import priors as priors_lib

Array = jax.Array


class GroupSample(NamedTuple):
  """What ``sample_group`` returns for one group, rows [K·batch].

  Attributes:
    sample: [K·batch, units] the group's sample (relaxed ζ_i in training, binary z_i at
      evaluation): what the later groups' encoders and the decoder read.
    logits: [K·batch, units] the group's Bernoulli logits.
    log_q: [K·batch] log q(sample_i | x, ·_<i) summed over the group's units, or ``None``.
    z: [K·batch, units] the binary states behind a relaxed sample (spike-and-exp), or ``None``.
  """

  sample: Array
  logits: Array
  log_q: Array | None
  z: Array | None


class PosteriorSample(NamedTuple):
  """K samples of the hierarchical posterior, the groups concatenated.

  Attributes:
    zeta: [K, batch, n] the samples (relaxed ζ in training, binary z at evaluation).
    logits: [K, batch, n] Bernoulli logits of each group given the earlier groups' samples.
    log_q: [K, batch] log q(ζ|x) = Σ_i log q(ζ_i | x, ζ_<i), or ``None`` if the sampler gives none.
    z: [K, batch, n] the binary states behind relaxed ζ (spike-and-exp only), or ``None``.
  """

  zeta: Array
  logits: Array
  log_q: Array | None
  z: Array | None


#: ``sample_group(key, group, encoding) -> GroupSample``: draws group ``group`` (a Python int) from
#: its encoder output; ``key`` is that group's PRNG key (``None`` if ``sample_hierarchy`` got none).
SampleGroup = Callable[[Array | None, int, models.GroupEncoding], GroupSample]


def sample_hierarchy(
  key: Array | None,
  model: models.DVAENet,
  x: Array,
  num_samples: int,
  sample_group: SampleGroup,
  *,
  use_running_average: bool | None = None,
) -> PosteriorSample:
  """K samples of the hierarchical posterior, group by group (math.md §4).

  Group 0 sees x only: its encoder runs once on [batch] rows and its output is repeated K times
  (identical batch statistics, K times less work); group i > 0 runs on the K·batch rows
  [x, samples of groups < i].

  Args:
    key: one PRNG key for the whole batch, split into one key per group; ``None`` for a
      ``sample_group`` that draws nothing.
    model: the network.
    x: [batch, pixels] data.
    num_samples: K.
    sample_group: draws one group (``SampleGroup``), e.g. ``bernoulli_group``.
    use_running_average: BatchNorm mode of the encoders (``None``: the module's train/eval mode).

  Returns:
    ``PosteriorSample`` with leading dimensions [K, batch].
  """
  spec = model.spec
  if x.ndim != 2 or x.shape[1] != spec.num_pixels:
    raise ValueError(f"x must have shape [batch, {spec.num_pixels}], got {x.shape}")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  k, batch = num_samples, x.shape[0]
  x_rep = jnp.broadcast_to(x, (k, batch, spec.num_pixels)).reshape(k * batch, spec.num_pixels)
  keys = [None] * spec.num_groups if key is None else jax.random.split(key, spec.num_groups)
  groups: list[GroupSample] = []
  for g in range(spec.num_groups):
    if g == 0:
      out = model.encode_group(0, x, None, use_running_average=use_running_average)
      out = jax.tree.map(
        lambda a: jnp.broadcast_to(a, (k, *a.shape)).reshape(k * batch, a.shape[-1]), out
      )
    else:
      earlier = jnp.concatenate([s.sample for s in groups], axis=-1)
      out = model.encode_group(g, x_rep, earlier, use_running_average=use_running_average)
    groups.append(sample_group(keys[g], g, out))

  def stack(parts):
    return jnp.concatenate(parts, axis=-1).reshape(k, batch, spec.num_latent)

  log_q = None if groups[0].log_q is None else sum(s.log_q for s in groups).reshape(k, batch)
  z = None if groups[0].z is None else stack([s.z for s in groups])
  return PosteriorSample(
    stack([s.sample for s in groups]), stack([s.logits for s in groups]), log_q, z
  )


def bernoulli_group(key: Array, group: int, encoding: models.GroupEncoding) -> GroupSample:
  """Binary z ~ Bernoulli(σ(l)) of one group with log q(z|·) (the discrete posterior, math.md §4).

  A ``SampleGroup`` for evaluation and reconstructions; ``group`` is unused and the shift head of
  the Gaussian-integral posterior is ignored (the discrete model has none).
  """
  del group
  logits = encoding.logits
  u = jax.random.uniform(key, logits.shape, logits.dtype)
  z = (u < jax.nn.sigmoid(logits)).astype(logits.dtype)
  return GroupSample(z, logits, jnp.sum(priors_lib.bernoulli_log_prob(z, logits), -1), None)
