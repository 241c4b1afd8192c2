"""Baseline: DVAE# power smoothing with a factorial Bernoulli prior instead of the RBM.

The prior has no couplings, so no sampler and no AIS are needed (log Z is exact); ``sampler`` and
the AIS keys are ignored. β as for ``dvae_sharp``.
"""

from experiments.configs import base


def get_config():
  config = base.get_config()
  config.method = "dvae_sharp"
  config.prior = "factorial"
  return config
