"""experiments/sampler_monitor.py: the reported training log Z at logged steps (``TrainLogZ``,
``shift_log_z``) against exact enumeration of a small RBM."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvae_jax import objectives
from dvae_jax.priors import rbm
from dvae_jax.samplers import persistent
from experiments import sampler_monitor


def small_rbm(seed=0, n1=6, n2=7, scale=1.5):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return rbm.RBM(
    b1=0.5 * jax.random.normal(k1, (n1,)),
    b2=0.5 * jax.random.normal(k2, (n2,)),
    w=scale * jax.random.normal(k3, (n1, n2)),
  )


def make_state(m, log_z=3.0):
  sampler_state = persistent.zero_state(jax.random.key(1), m, 16)
  sampler_state = persistent.reset_log_z(sampler_state._replace(params=m), log_z, 0.1)
  return types.SimpleNamespace(
    sampler_state=sampler_state,
    _replace=lambda **kw: types.SimpleNamespace(**{"sampler_state": sampler_state, **kw}),
  )


def make_experiment(chains=2048, temperatures=300, sampler=True):
  config = types.SimpleNamespace(
    train_ais_num_chains=chains, train_ais_num_temperatures=temperatures
  )
  return types.SimpleNamespace(config=config, sampler=object() if sampler else None)


ROW = {
  "loss": 110.0,
  "kappa": 0.4,
  "terms/log_z": 3.0,
  "terms/kl": 20.0,
  "terms/neg_elbo": 100.0,
  "terms/neg_iw_bound": 99.0,
  "terms/log_prior": -50.0,
  "terms/log_q": -30.0,
  "terms/recon": 80.0,
  "grad_norm": 7.0,
}


def test_shift_log_z_moves_exactly_the_log_z_terms():
  shifted = sampler_monitor.shift_log_z(ROW, 2.5)
  sensitivity = objectives.log_z_sensitivity(ROW["kappa"])
  assert shifted["loss"] == pytest.approx(110.0 + 0.4 * 2.5)
  for key in ("log_z", "kl", "neg_elbo", "neg_iw_bound", "log_prior"):
    assert shifted[f"terms/{key}"] == pytest.approx(ROW[f"terms/{key}"] + sensitivity[key] * 2.5)
  for key in ("kappa", "terms/log_q", "terms/recon", "grad_norm"):
    assert shifted[key] == ROW[key]
  # A method without the DVAE# terms: nothing is added.
  small = {k: ROW[k] for k in ("loss", "kappa", "terms/log_z", "terms/kl")}
  assert set(sampler_monitor.shift_log_z(small, 1.0)) == set(small)


@pytest.mark.parametrize("seed", [0, 1])
def test_anchor_reports_a_fresh_ais_estimate_within_its_error_of_the_exact_log_z(seed):
  m = small_rbm(seed)
  exact = float(rbm.exact_log_partition(m))
  state = make_state(m, log_z=exact - 4.0)  # a running value 4 nats low, as a drifted one
  train_log_z = sampler_monitor.TrainLogZ(make_experiment(), jax.random.key(seed + 10))
  assert train_log_z.enabled
  row = {**ROW, "terms/log_z": exact - 4.0}
  new_state, new_row = train_log_z.anchor(7, state, row)
  stderr = new_row["terms/log_z_stderr"]
  assert 0 < stderr < 0.05
  assert abs(new_row["terms/log_z"] - exact) < 4 * stderr + 1e-4, (new_row["terms/log_z"], exact)
  delta = new_row["terms/log_z"] - row["terms/log_z"]
  assert new_row["sampler/log_z_ais_drift"] == pytest.approx(-delta)
  expected = sampler_monitor.shift_log_z(row, delta)
  for key, value in expected.items():
    assert new_row[key] == pytest.approx(value, abs=1e-9), key
  # The running log Z is re-anchored to the same estimate and error bar.
  assert float(new_state.sampler_state.log_z) == pytest.approx(new_row["terms/log_z"], abs=1e-4)
  assert float(jnp.sqrt(new_state.sampler_state.log_z_variance)) == pytest.approx(stderr, rel=1e-4)
  # Same key, same estimate; another step, another (independent) one.
  again = train_log_z.anchor(7, state, row)[1]["terms/log_z"]
  other = train_log_z.anchor(8, state, row)[1]["terms/log_z"]
  assert again == new_row["terms/log_z"] and other != again


def test_anchor_is_a_no_op_without_a_sampler_or_with_zero_chains():
  m = small_rbm()
  state = make_state(m)
  for experiment in (make_experiment(chains=0), make_experiment(sampler=False)):
    train_log_z = sampler_monitor.TrainLogZ(experiment, jax.random.key(0))
    assert not train_log_z.enabled
    same_state, same_row = train_log_z.anchor(3, state, dict(ROW))
    assert same_state is state and same_row == ROW
  np.testing.assert_equal(float(state.sampler_state.log_z), 3.0)
