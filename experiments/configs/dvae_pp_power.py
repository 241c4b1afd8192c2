"""DVAE++ objective with power-function smoothing (math.md §4, §6).

β defaults to the "DVAE++ power" column of the math.md §6 table for the dataset and struct
(see ``experiments.config_lib.BETA_TABLE``).
"""

from experiments.configs import base


def get_config():
  config = base.get_config()
  config.method = "dvae_pp_power"
  return config
