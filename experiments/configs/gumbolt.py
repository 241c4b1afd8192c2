"""GumBolt (Khoshaman & Amin 2018): binary concrete posterior, the Boltzmann energy at the relaxed ζ
with the discrete log Z, importance-weighted bound (math.md §4 conventions).

β is the concrete temperature τ (not a smoothing sharpness: smaller τ is closer to discrete); it
defaults to ``experiments.config_lib.GUMBOLT_TEMPERATURE`` for every dataset and struct.
"""

from experiments.configs import base


def get_config():
  config = base.get_config()
  config.method = "gumbolt"
  return config
