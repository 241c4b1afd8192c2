"""Tests of experiments/guards.py: the divergence guard's device flags, its host-side bookkeeping
(runs of large gradients, evaluation values, messages) and its place in the training loop."""

import jax
import jax.numpy as jnp
import pytest
from ml_collections import config_dict
from test_train import tiny_config

from experiments import checkpointing, config_lib, guards, metrics, train


def _config(**overrides):
  c = config_dict.ConfigDict(
    {
      "guard_max_nats": 1e4,
      "guard_max_log_z": 1e3,
      "guard_max_grad_norm": 100.0,
      "guard_grad_norm_steps": 3,
      "learning_rate": 3e-3,
    }
  )
  c.update(overrides)
  return c


def _metrics(loss=250.0, log_z=140.0, grad_norm=20.0, **extra):
  m = {
    "loss": loss,
    "terms/neg_elbo": loss + 4.0,
    "terms/log_z": log_z,
    "sampler/log_z": log_z,
    "grad_norm": grad_norm,
    **extra,
  }
  return {k: jnp.float32(v) for k, v in m.items()}


def _flags(config, **values):
  return int(jax.jit(lambda m: guards.step_flags(m, config))(_metrics(**values)))


def test_step_flags_bits():
  config = _config()
  assert _flags(config) == 0
  assert _flags(config, loss=-1.5e9) == guards.OUT_OF_BOUNDS  # negative values count too
  assert _flags(config, loss=9_990.0) == 0
  assert _flags(config, loss=9_999.0) == guards.OUT_OF_BOUNDS  # its neg_elbo, 10003, is out
  assert _flags(config, log_z=3.8e8) == guards.OUT_OF_BOUNDS
  assert _flags(config, grad_norm=101.0) == guards.GRAD_NORM_OVER
  assert _flags(config, log_z=-2e3, grad_norm=1e9) == guards.OUT_OF_BOUNDS | guards.GRAD_NORM_OVER
  # Non-finite values are the NaN guard's: no bit.
  assert _flags(config, loss=float("nan")) == 0 and _flags(config, loss=float("inf")) == 0
  # An optional term (the IW bound of k > 1) is checked when present.
  m = {**_metrics(), "terms/neg_iw_bound": jnp.float32(2e4)}
  assert int(guards.step_flags(m, config)) == guards.OUT_OF_BOUNDS
  assert _flags(_config(guard_max_nats=float("inf")), loss=1e30) == 0  # inf: no limit


def _observe(guard, config, step, **values):
  m = _metrics(**values)
  m["guard"] = guards.step_flags(m, config)
  guard.observe(step, m)


def test_out_of_bounds_names_step_terms_values_and_checkpoint():
  config = _config(learning_rate=1e6)
  guard = guards.DivergenceGuard(config, last_checkpoint=lambda: 40)
  _observe(guard, config, 41)
  with pytest.raises(guards.DivergenceError) as info:
    _observe(guard, config, 42, loss=-1.5e9, log_z=3.8e8)
  message = str(info.value)
  assert message.startswith("training diverged at step 42: loss = -1.5e+09 is outside ±10000")
  assert "terms/log_z = 3.8e+08 is outside ±1000 (guard_max_log_z)" in message
  assert "the last good checkpoint (step 40) is kept" in message
  assert "learning_rate (now 1e+06)" in message and "--config.guard_max_nats=VALUE" in message
  none_yet = guards.DivergenceGuard(config, last_checkpoint=lambda: None)
  with pytest.raises(guards.DivergenceError, match="no checkpoint had been written yet"):
    _observe(none_yet, config, 1, loss=1e5)


def test_large_gradients_trip_only_after_consecutive_steps():
  config = _config()  # limit 100, 3 steps
  guard = guards.DivergenceGuard(config, last_checkpoint=lambda: None)
  for step, norm in enumerate([500.0, 500.0, 20.0, 500.0, 500.0], start=1):
    _observe(guard, config, step, grad_norm=norm)  # never 3 in a row
    assert guard.clean == (norm <= 100)
  with pytest.raises(
    guards.DivergenceError,
    match=r"step 6: grad_norm = 500 exceeded guard_max_grad_norm = 100 at each of the 3 steps "
    r"4\.\.6 \(guard_grad_norm_steps = 3\)",
  ):
    _observe(guard, config, 6, grad_norm=500.0)


def test_evaluation_values_are_checked():
  guard = guards.DivergenceGuard(_config(), last_checkpoint=lambda: 10)
  guard.check_evaluation(10, {"val/nll": 95.0, "val/neg_elbo": 100.0, "val/log_z": 180.0})
  with pytest.raises(guards.DivergenceError, match=r"step 20: val/nll = 3.783e\+08 is outside"):
    guard.check_evaluation(20, {"val/nll": 378268836.659, "val/log_z": 180.0})
  with pytest.raises(guards.DivergenceError, match=r"val/log_z = 5e\+08 .*\(guard_max_log_z\)"):
    guard.check_evaluation(20, {"val/nll": 95.0, "val/log_z": 5e8})
  with pytest.raises(guards.DivergenceError, match=r"val/nll = nan"):
    guard.check_evaluation(20, {"val/nll": float("nan")})


def test_guard_limits_are_validated_config_keys():
  for key in ("guard_max_nats", "guard_max_log_z", "guard_max_grad_norm"):
    config = config_lib.load_config("dvae")
    config[key] = 0.0
    with pytest.raises(config_lib.ConfigError, match=f"invalid {key} 0.0: must be > 0"):
      config_lib.resolve_config(config)
  config = config_lib.load_config("dvae")
  config.guard_grad_norm_steps = 0
  with pytest.raises(config_lib.ConfigError, match="guard_grad_norm_steps"):
    config_lib.resolve_config(config)


def test_checkpoints_wait_while_gradients_run_large(data_dir, tmp_path):
  """With a gradient-norm limit below healthy values (≈ 50 on this tiny run) every step is over
  it: no checkpoint is written during the run of large gradients, which trips at its 3rd step."""
  config = tiny_config(
    "dvae_pp_exp",
    data_dir,
    num_steps=8,
    eval_every=100,
    checkpoint_every=1,
    guard_max_grad_norm=1.0,
    guard_grad_norm_steps=3,
  )
  with pytest.raises(guards.DivergenceError, match=r"at step 3: grad_norm = .* steps 1\.\.3"):
    train.train_and_evaluate(config, tmp_path)
  assert checkpointing.Checkpointer(tmp_path / "checkpoints", 2).all_steps() == []
  rows = [r for r in metrics.read_metrics(tmp_path) if "loss" in r]  # not the log Z refreshes
  assert [r["step"] for r in rows] == [1, 2] and all(r["grad_norm"] > 1.0 for r in rows)
