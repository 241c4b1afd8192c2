"""DVAE# Gaussian integral (β is the lower bound λ_min of λ) (math.md §4, §6).

β defaults to the "DVAE# GI" column of the math.md §6 table for the dataset and struct
(see ``experiments.config_lib.BETA_TABLE``).
"""

from experiments.configs import base


def get_config():
  config = base.get_config()
  config.method = "dvae_sharp_gi"
  return config
