"""dvae_jax: discrete VAEs with Boltzmann-machine priors (DVAE, DVAE++, DVAE#, GumBolt) in JAX.

The mathematics is specified in the repository's ``docs/math.md``; docstrings cite its sections
as "math.md §n".
"""

__version__ = "0.1.0"
