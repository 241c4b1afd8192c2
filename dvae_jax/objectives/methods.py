"""The registry of training methods: DVAE, DVAE++, DVAE#, GumBolt (math.md §4, §6).

| name             | family        | posterior relaxation     | prior term                        |
|------------------|---------------|--------------------------|-----------------------------------|
| dvae             | dvae          | spike-and-exp            | discrete KL (Rolfe 2017 surrogate |
|                  |               |                          | gradient for > 1 group)           |
| dvae_pp_exp      | dvae_pp       | exponential              | discrete KL = CE − H with ν       |
| dvae_pp_power    | dvae_pp       | power function           | discrete KL = CE − H with ν       |
| dvae_sharp_exp   | dvae_sharp    | exponential              | relaxed marginal, mean-field Z_ζ  |
| dvae_sharp_unexp | dvae_sharp    | uniform+exponential      | relaxed marginal, mean-field Z_ζ  |
| dvae_sharp_gauss | dvae_sharp    | Gaussian                 | relaxed marginal, mean-field Z_ζ  |
| dvae_sharp       | dvae_sharp    | power function           | relaxed marginal, mean-field Z_ζ  |
| dvae_sharp_gi    | dvae_sharp_gi | shifted Gaussian mixture | Gaussian-integral marginal        |
| gumbolt          | gumbolt       | binary concrete (τ = β)  | −E(ζ) − log Z, discrete Z (proxy) |
"""

from __future__ import annotations

from typing import Any, NamedTuple

from dvae_jax import priors as priors_lib
from dvae_jax import smoothing as smoothing_lib

FAMILY_DVAE = "dvae"
FAMILY_DVAE_PP = "dvae_pp"
FAMILY_DVAE_SHARP = "dvae_sharp"
FAMILY_DVAE_SHARP_GI = "dvae_sharp_gi"
FAMILY_GUMBOLT = "gumbolt"
# The families trained with the importance-weighted bound on relaxed samples (math.md §4).
_RELAXED_FAMILIES = (FAMILY_DVAE_SHARP, FAMILY_DVAE_SHARP_GI, FAMILY_GUMBOLT)

# Weight decay coefficient of math.md §2 and §6: 1e-4 · ½‖w‖².
WEIGHT_DECAY = 1e-4

_METHOD_TABLE: dict[str, tuple[str, Any]] = {
  "dvae": (FAMILY_DVAE, smoothing_lib.SpikeAndExp),
  "dvae_pp_exp": (FAMILY_DVAE_PP, smoothing_lib.Exponential),
  "dvae_pp_power": (FAMILY_DVAE_PP, smoothing_lib.PowerFunction),
  "dvae_sharp_exp": (FAMILY_DVAE_SHARP, smoothing_lib.Exponential),
  "dvae_sharp_unexp": (FAMILY_DVAE_SHARP, smoothing_lib.UniformExponential),
  "dvae_sharp_gauss": (FAMILY_DVAE_SHARP, smoothing_lib.Gaussian),
  "dvae_sharp": (FAMILY_DVAE_SHARP, smoothing_lib.PowerFunction),
  "dvae_sharp_gi": (FAMILY_DVAE_SHARP_GI, None),
  "gumbolt": (FAMILY_GUMBOLT, None),
}
METHODS: tuple[str, ...] = tuple(_METHOD_TABLE)


class Method(NamedTuple):
  """A training objective (math.md §4).

  Attributes:
    name: one of ``METHODS``.
    family: ``'dvae'``, ``'dvae_pp'``, ``'dvae_sharp'``, ``'dvae_sharp_gi'`` or ``'gumbolt'``.
    smoothing: the smoothing of ``dvae_jax.smoothing`` (``None`` for the Gaussian integral, whose
      posterior is the shifted Gaussian mixture of this module, and for GumBolt, whose relaxation
      is the binary concrete of ``sample_binary_concrete``).
    beta: the method's β of math.md §6: the sharpness of the smoothing (not an inverse
      temperature), or for ``dvae_sharp_gi`` the floor λ_min of the Gaussian integral's shift
      λ = max(σ_max(W) + 5, β) (math.md §4), or for ``gumbolt`` the concrete temperature τ
      (smaller is closer to discrete: the opposite direction to a smoothing's sharpness).
    mean_field_iterations: iterations of the mean-field log Z_ζ (DVAE# overlapping smoothings).
    relaxed_sampler: how relaxed samples of the overlapping smoothings are drawn (math.md §1):
      ``'ancestral'`` (z ~ Bern(q), ζ ~ r(·|z), implicit-gradient surrogate) or ``'inverse_cdf'``
      (ζ = F⁻¹(ρ; q) by the numerical solver with the implicit-gradient custom JVP). Both give the
      same joint law of (ζ, dζ/dq) — the implicit gradient is a function of (ζ, q) only — so the
      gradient estimators are identical in distribution; ancestral is 12–18× faster on CPU
      (benchmarks/smoothing_throughput.py), hence the default.
  """

  name: str
  family: str
  smoothing: Any
  beta: float
  mean_field_iterations: int = priors_lib.MEAN_FIELD_ITERATIONS
  relaxed_sampler: str = "ancestral"


RELAXED_SAMPLERS = ("ancestral", "inverse_cdf")


def get_method(
  name: str,
  beta: float,
  *,
  mean_field_iterations: int = priors_lib.MEAN_FIELD_ITERATIONS,
  relaxed_sampler: str = "ancestral",
) -> Method:
  """The method called ``name`` with its β (``Method.beta``: smoothing sharpness, λ_min for
  ``dvae_sharp_gi``, the concrete temperature τ for ``gumbolt``; math.md §4, §6 for the values)."""
  if name not in _METHOD_TABLE:
    raise ValueError(f"unknown method {name!r}; valid names: {', '.join(METHODS)}")
  if not beta > 0:
    raise ValueError(f"beta must be > 0, got {beta}")
  if mean_field_iterations < 1:
    raise ValueError(f"mean_field_iterations must be >= 1, got {mean_field_iterations}")
  if relaxed_sampler not in RELAXED_SAMPLERS:
    raise ValueError(
      f"unknown relaxed_sampler {relaxed_sampler!r}; valid: {', '.join(RELAXED_SAMPLERS)}"
    )
  family, smoothing_cls = _METHOD_TABLE[name]
  smoothing = None if smoothing_cls is None else smoothing_cls(beta=float(beta))
  return Method(name, family, smoothing, float(beta), mean_field_iterations, relaxed_sampler)
