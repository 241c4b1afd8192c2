"""dvae_jax: discrete VAEs with Boltzmann-machine priors (DVAE, DVAE++, DVAE#) in JAX.

The mathematics is specified in ``../shared/docs/MATH.md``; docstrings cite its sections (§).
"""

__version__ = "0.1.0"
