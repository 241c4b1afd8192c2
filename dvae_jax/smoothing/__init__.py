"""Smoothing transformations r(ζ|z), the relaxed mixture q(ζ) and its reparameterised samplers.

math.md §1. Every smoothing is a small immutable pytree whose ``beta`` (the *sharpness*, not an
inverse temperature) is a pytree leaf: a Python float or an array broadcastable against ζ, so it
can be traced, vmapped and learned. All functions are elementwise and shape-polymorphic; ``q`` is
the Bernoulli mean σ(l) of the encoder.

Smoothings (one module per family, each satisfying the ``Smoothing`` protocol of ``base``):

* ``SpikeAndExp(beta)``: r(ζ|0) = δ(ζ), r(ζ|1) = β e^{βζ}/(e^β − 1) on [0, 1] (DVAE;
  ``spike_and_exp``).
* ``Exponential(beta)``: r(ζ|0) = β e^{−βζ}/(1 − e^{−β}) on [0, 1] (DVAE++/DVAE#; ``exponential``).
* ``UniformExponential(beta, eps=0.05)``: r(ζ|0) = (1 − ε) r_exp(ζ) + ε on [0, 1] (DVAE#;
  ``exponential``).
* ``PowerFunction(beta)``: r(ζ|0) = ζ^{1/β − 1}/β on (0, 1] (DVAE#; ``power_function``).
* ``Gaussian(beta)``: r(ζ|0) = N(ζ; 0, 1/β) on ℝ (DVAE#; ``gaussian``).

The overlapping ones are symmetric, r(ζ|1) = r(1 − ζ|0) (``symmetric``).

Inverse CDF of the mixture F(ζ) = (1 − q) R0(ζ) + q R1(ζ): closed forms for the spike-and-exp and
the exponential; for the power function, Gaussian and uniform+exp the safeguarded Newton–bisection
solver of ``numerical_inverse`` with implicit derivatives (``jax.custom_jvp``).

Numerics common to all (math.md §1 Numerics; the power function's clip is in ``power_function``):

* Outside the support the log densities are −inf and the CDFs 0 or 1.
* The exponential, uniform+exp and Gaussian log densities are finite on the whole support without
  clipping; their b(ζ) evaluates ζ clipped to the support ([0, 1]; none for the Gaussian).
* ``inverse_cdf`` clamps ρ into [finfo.tiny, 1 − finfo.epsneg] for the numerical inverse (inside
  the open interval (0, 1)), so ρ = 0 or 1 gives a finite ζ; ``sample`` draws ρ with
  ``open_uniform``, which never returns 0 or 1.
"""

from dvae_jax.smoothing.base import (
  Smoothing,
  cdf0,
  cdf1,
  inverse_cdf,
  log_r0,
  log_r1,
  log_ratio,
  mixture_cdf,
  mixture_log_prob,
  mixture_log_prob_logits,
  open_uniform,
  sample,
  sample_ancestral,
)
from dvae_jax.smoothing.exponential import Exponential, UniformExponential
from dvae_jax.smoothing.gaussian import Gaussian
from dvae_jax.smoothing.numerical_inverse import DEFAULT_SOLVER_ITERATIONS
from dvae_jax.smoothing.power_function import PowerFunction
from dvae_jax.smoothing.spike_and_exp import SpikeAndExp

_NAMES = {
  "spike_exp": SpikeAndExp,
  "exp": Exponential,
  "power": PowerFunction,
  "gauss": Gaussian,
  "unexp": UniformExponential,
}


def smoothing_from_name(name: str, beta, **kwargs) -> Smoothing:
  """The smoothing called ``name`` ('spike_exp', 'exp', 'power', 'gauss', 'unexp') with sharpness
  ``beta``; ``kwargs`` go to the class (``eps``, ``solver_iterations``)."""
  if name not in _NAMES:
    raise ValueError(f"unknown smoothing {name!r}; valid names: {', '.join(sorted(_NAMES))}")
  return _NAMES[name](beta, **kwargs)


__all__ = [
  "DEFAULT_SOLVER_ITERATIONS",
  "Exponential",
  "Gaussian",
  "PowerFunction",
  "Smoothing",
  "SpikeAndExp",
  "UniformExponential",
  "cdf0",
  "cdf1",
  "inverse_cdf",
  "log_r0",
  "log_r1",
  "log_ratio",
  "mixture_cdf",
  "mixture_log_prob",
  "mixture_log_prob_logits",
  "open_uniform",
  "sample",
  "sample_ancestral",
  "smoothing_from_name",
]
