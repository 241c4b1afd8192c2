"""End-to-end tests of experiments/train.py: every config, resume after a crash, the NaN guard,
1 vs 4 devices, schedules. Runs are tiny (a few steps, small batches, few samples)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dvae_jax import objectives
from dvae_jax.data import batching
from experiments import (
  checkpointing,
  config_lib,
  guards,
  metrics,
  scoring,
  train,
  train_loop,
  train_step,
)
from experiments import experiment as experiment_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
# Timing columns differ between runs by nature; every other column must match.
TIMING_KEYS = (
  "steps_per_second",
  "eval_seconds",
  "val/sampler_diagnostic_seconds",
  "sampler/log_z_ais_seconds",
)

TINY = {
  "num_steps": 4,
  "batch_size": 8,
  "num_prior_samples": 16,
  "num_sweeps": 2,
  "eval_every": 2,
  "val_iw_samples": 4,
  "eval_iw_samples": 4,
  "eval_num_examples": 16,
  "eval_batch_size": 8,
  "ais_num_chains": 8,
  "ais_num_temperatures": 10,
  "sampler_diagnostic_replicas": 32,
  "sampler_diagnostic_temperatures": 10,
  "log_z_refresh_every": 1,
  "log_z_tracker_replicas": 8,
  "log_z_tracker_sweeps": 2,
  "train_ais_num_chains": 8,
  "train_ais_num_temperatures": 10,
  "log_every": 1,
  "checkpoint_every": 2,
  "num_image_samples": 4,
}


# The evaluation sizes of the runs that tests share (tests/experiments/conftest.py, finished_run):
# 32 test examples with 8 importance samples, an AIS of 16 chains.
SHARED_EVAL = {"eval_num_examples": 32, "eval_iw_samples": 8, "ais_num_chains": 16}


def tiny_config(name, data_dir, **overrides):
  config = config_lib.load_config(name)
  for key, value in {**TINY, "data_dir": str(data_dir), **overrides}.items():
    config[key] = value
  return config


def cli_overrides(**overrides):
  return [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]


def subprocess_env(num_devices=1, **extra):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env.update(extra)
  return env


def run_cli(workdir, data_dir, *extra, config="dvae_sharp", num_devices=1, **overrides):
  """``python -m experiments.run`` of ``tiny_config``'s run with ``overrides`` in a subprocess on
  ``num_devices`` forced host devices (XLA_FLAGS must precede jax's import)."""
  command = [
    sys.executable,
    "-m",
    "experiments.run",
    f"--config={config}",
    f"--workdir={workdir}",
    f"--data_dir={data_dir}",
    *cli_overrides(**overrides),
    *extra,
  ]
  return subprocess.run(
    command, cwd=REPO, env=subprocess_env(num_devices), capture_output=True, text=True, timeout=600
  )


def without_timing(rows):
  return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


# Columns that are differences of two large numbers: their rounding error is relative to the size
# of the terms, not of the difference (kl = log_q − log_prior ≈ 2e3 − 2e3 nats; the PA log Z
# increment and the log Z drifts are differences of two log Z ≈ 140; the sampler's drift is written
# in its own row of the evaluation step). The first of the named columns present at that step is
# the scale.
DIFFERENCE_SCALES = {
  "terms/kl": ("terms/log_q",),
  "sampler/log_z_increment": ("sampler/log_z",),
  "sampler/log_z_refresh_drift": ("sampler/log_z_refreshed",),
  "sampler/log_z_ais_drift": ("terms/log_z",),
  "val/sampler_log_z_drift": ("val/sampler_reference_log_z", "val/log_z"),
}


STDERR_KEYS = ("sampler/log_z_refresh_stderr", "sampler/log_z_stderr")


def assert_rows_close(rows_a, rows_b, rtol):
  """Rows equal key by key; numbers to ``rtol`` (see DIFFERENCE_SCALES: the scale is looked up in
  the rows of the same step; STDERR_KEYS: scaled by the latest tracker refresh's stages)."""
  assert len(rows_a) == len(rows_b)
  by_step = {}
  for row in rows_a:
    by_step.setdefault(row["step"], {}).update(row)
  refresh_terms = 0.0
  for a, b in zip(without_timing(rows_a), without_timing(rows_b), strict=True):
    assert a.keys() == b.keys()
    for key in a:
      at_step = by_step[a["step"]]
      scales = [at_step[c] for c in DIFFERENCE_SCALES.get(key, ()) if c in at_step]
      scale = abs(scales[0]) if scales else 0.0
      if "sampler/log_z_refresh_stages" in at_step:
        refresh_terms = (
          at_step["sampler/log_z_refresh_stages"] / at_step["sampler/log_z_refresh_ess"]
        )
      if key in STDERR_KEYS and a[key] > 0:
        # stderr² = Σ over the tracker's stages of (1/ESS − 1/R), each term a difference of two
        # ≈ 1/R: its rounding is relative to stages / smallest ESS of the latest refresh, halved
        # by the square root (the sampler's stderr holds that refresh's variance).
        scale = max(scale, refresh_terms / (2.0 * a[key]))
      np.testing.assert_allclose(
        b[key], a[key], rtol=rtol, atol=rtol * scale, err_msg=f"step {a['step']} {key}"
      )


# ----------------------------------------------------------------------------------------------
# Pure helpers.


def test_learning_rate_schedule_is_math_section_6():
  schedule = experiment_lib.learning_rate_schedule(3e-3, 1_000_000)
  # Steps just inside each piece of math.md §6: [0, 2%) 3e-4, [2%, 60%) 3e-3, [60%, 75%) 1e-3,
  # [75%, 95%) 3e-4, [95%, 100%] 9.1e-5.
  for step, expected in [
    (0, 3e-4),
    (19_999, 3e-4),
    (20_000, 3e-3),
    (599_999, 3e-3),
    (600_000, 1e-3),
    (749_999, 1e-3),
    (750_000, 3e-4),
    (949_999, 3e-4),
    (950_000, 9.1e-5),
    (999_999, 9.1e-5),
  ]:
    np.testing.assert_allclose(schedule(jnp.array(step)), expected, rtol=1e-6, err_msg=str(step))
  np.testing.assert_allclose(
    experiment_lib.learning_rate_schedule(1.0, 100)(jnp.array(70)), 1 / 3, rtol=1e-6
  )


def test_kl_warmup():
  for step, expected in [(0, 0.0), (150, 0.5), (300, 1.0), (999, 1.0)]:
    kappa = train_step.kl_warmup(jnp.array(step), 1000, 0.3)
    np.testing.assert_allclose(kappa, expected, rtol=1e-6)
  assert train_step.kl_warmup(jnp.array(0), 1000, 0.0) == 1.0


# ----------------------------------------------------------------------------------------------
# End to end.


# Every named config, plus the PCD sampler and hierarchical posteriors (2 and 4 latent groups; the
# 4-group one compiles slowly, so it is a slow test). The configs that differ from another of their
# family only by the smoothing (whose terms test_objectives.py checks for every method by default)
# train end to end in the slow set.
_SAME_FAMILY_CONFIGS = ("dvae_pp_power", "dvae_sharp_exp", "dvae_sharp_gauss", "dvae_sharp_unexp")
_E2E_CASES = [
  pytest.param(name, {}, id=name, marks=[pytest.mark.slow] if name in _SAME_FAMILY_CONFIGS else [])
  for name in config_lib.CONFIG_NAMES
] + [
  pytest.param("dvae", {"struct": "2-layer-nonlin", "sampler": "pcd"}, id="dvae-2-layer-pcd"),
  pytest.param(
    "dvae_sharp",
    {"rao_blackwell": "symmetric", "sampler_diagnostic_replicas": 0},
    id="rao-blackwell-no-diagnostic",
  ),
  pytest.param(
    "dvae_sharp_gi",
    {"struct": "4-layer-nonlin", "k": 2},
    id="gi-4-layer-k2",
    marks=pytest.mark.slow,
  ),
]


def schedule_reference(config, t: int) -> tuple[float, float]:
  """(learning rate, κ) of step t from their definitions (test_train_step.py writes them out)."""
  from test_train_step import kappa, learning_rate

  return (
    learning_rate(t, config.num_steps, config.learning_rate),
    kappa(t, config.num_steps, config.kl_warmup_fraction),
  )


@pytest.mark.parametrize("name, overrides", _E2E_CASES)
def test_every_config_trains_evaluates_and_checkpoints(name, overrides, data_dir, finished_run):
  run = finished_run(name, **SHARED_EVAL, **overrides)
  workdir, results = run.workdir, run.results
  config = config_lib.resolve_config(tiny_config(name, data_dir, **SHARED_EVAL, **overrides))

  rows = metrics.read_metrics(workdir)
  train_rows = [r for r in rows if "loss" in r]
  val_rows = [r for r in rows if "val/nll" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  assert [r["step"] for r in val_rows] == [2, 4]
  for row in train_rows:
    t = row["step"] - 1  # the row of step t + 1 holds the metrics of the step run at t
    lr, kappa = schedule_reference(config, t)
    np.testing.assert_allclose([row["lr"], row["kappa"]], [lr, kappa], rtol=1e-6)
    # The terms' definitions (math.md §4): −ELBO = recon + KL; DVAE, DVAE++ (no IW bound) and any
    # K = 1: the loss is recon + κ·KL; DVAE#, GumBolt with K > 1: the softmax-weighted mean of
    # log w is at least the plain mean, so the loss is at most that. KL is a difference of terms of
    # ≈ 2e3 nats: float32 rounding relative to them.
    scale = abs(row["terms/recon"]) + abs(row.get("terms/log_q", row["terms/kl"]))
    np.testing.assert_allclose(
      row["terms/neg_elbo"], row["terms/recon"] + row["terms/kl"], rtol=0, atol=1e-5 * scale
    )
    single_sample = row["terms/recon"] + row["kappa"] * row["terms/kl"]
    if config.k == 1 or "terms/neg_iw_bound" not in row:
      np.testing.assert_allclose(row["loss"], single_sample, rtol=0, atol=1e-5 * scale)
    else:
      assert row["loss"] <= single_sample + 1e-5 * scale, row
    # Finite only: the time and the gradient norm of one tiny step have no independent value here
    # (test_train_step.py checks the gradient norm against jax.grad).
    assert np.isfinite(row["steps_per_second"]) and np.isfinite(row["grad_norm"]), row
    assert row["weight_decay"] > 0, row  # He-normal kernels: never all zero
    if config.prior == "rbm":
      assert 0 < row["sampler/ess"] <= config.num_prior_samples and "sampler/log_z" in row
  assert not any({"finite", "guard"} & row.keys() for row in rows)  # flags are read, not logged
  assert not (workdir / "lock").exists()  # the workdir lock is released at the end
  if config.prior == "rbm":
    # Each evaluation re-anchors the sampler's tracked log Z to the diagnostic's fresh estimate for
    # the sampler's own parameters (and logs the drift it removed): the next step starts from that
    # value plus its increment to the prior (one step ahead, whose log Z is the AIS val/log_z).
    drift_rows = [r for r in rows if "val/sampler_log_z_drift" in r]
    assert [r["step"] for r in drift_rows] == [2, 4]
    after_eval = next(r for r in train_rows if r["step"] == 3)
    anchored = after_eval["sampler/log_z"] - after_eval["sampler/log_z_increment"]
    # scoring.eval_log_partition: per evaluation the prior's AIS (val/log_z), then, without the
    # diagnostic, the AIS of the sampler's parameters that re-anchors it; last the test's.
    per_eval = 1 if config.sampler_diagnostic_replicas else 2
    assert len(run.log_partitions) == 2 * per_eval + 1
    for i, row in enumerate(val_rows):
      assert row["val/log_z"] == pytest.approx(run.log_partitions[i * per_eval][0], rel=1e-6)
    if config.sampler_diagnostic_replicas:
      np.testing.assert_allclose(anchored, drift_rows[0]["val/sampler_reference_log_z"], rtol=1e-5)
    else:  # anchored to AIS of the sampler's parameters, one step behind the prior's val/log_z
      np.testing.assert_allclose(anchored, run.log_partitions[1][0], rtol=1e-5)
    # The log Z tracker re-anchors the sampler's log Z at every step that is not an evaluation.
    refresh_rows = [r for r in rows if "sampler/log_z_refresh_drift" in r]
    assert [r["step"] for r in refresh_rows] == [1, 3]
    # Finite only: a drift of the tracker over one tiny step has no reference value here
    # (tests/samplers/test_log_z_tracking.py calibrates the tracker against enumeration).
    assert all(np.isfinite(r["sampler/log_z_refresh_drift"]) for r in refresh_rows)
    # Every logged step reports a fresh training AIS's log Z and its delta-method standard error
    # std(w)/(√S w̄) (math.md §3), recomputed here from that AIS's own weights; the drift it removed
    # is what the row's log Z moved by (each log-Z-dependent value moved with it).
    assert [e[0] for e in run.train_log_z] == [1, 2, 3, 4]
    for row, (_, log_z, stderr, log_w) in zip(train_rows, run.train_log_z, strict=True):
      ratio = np.exp(log_w - log_w.max())
      ratio /= ratio.mean()
      want = np.sqrt(np.sum((ratio - 1) ** 2) / (len(log_w) - 1) / len(log_w))
      assert row["terms/log_z"] == pytest.approx(log_z, rel=1e-6), row
      np.testing.assert_allclose([row["terms/log_z_stderr"], stderr], want, rtol=1e-4, atol=1e-6)
      # Finite only: the drift is the step's running log Z minus the fresh one, and the running
      # value is not logged (the shift it caused is checked above, value by value).
      assert np.isfinite(row["sampler/log_z_ais_drift"]), row
    # The sampler diagnostic is logged at every evaluation and summarised in results.json.
    diag_rows = [r for r in rows if "val/sampler_error" in r]
    assert [r["step"] for r in diag_rows] == ([2, 4] if config.sampler_diagnostic_replicas else [])
    # ≥ 0 and finite only: ratios of a 4-step run's population have no reference value here
    # (tests/samplers/test_diagnostics.py tests them against their exact expectations).
    for key in ("z1_error", "z2_error", "z1z2_error", "error", "grad_relative_bias"):
      assert all(
        np.isfinite(r[f"val/sampler_{key}"]) and r[f"val/sampler_{key}"] >= 0 for r in diag_rows
      ), key

  saved = json.loads((workdir / "results.json").read_text())
  if config.prior == "rbm" and config.sampler_diagnostic_replicas:
    history = saved["sampler_diagnostic"]
    assert history["steps"] == [2, 4]
    assert history["max_error"] == max(
      r[f"val/sampler_{k}"]
      for r in diag_rows
      for k in ("error", "z1_error", "z2_error", "z1z2_error")
    )
  else:
    assert saved["sampler_diagnostic"] == {}
  for key in ("test_nll", "val_nll", "test_neg_elbo", "train_seconds"):
    assert saved[key] == pytest.approx(results[key])
  # results.json against the metrics and the recorded log Z: the test row, the best step.
  (test_row,) = [r for r in rows if "test/nll" in r]
  assert (test_row["test/nll"], test_row["test/neg_elbo"]) == pytest.approx(
    (saved["test_nll"], saved["test_neg_elbo"]), rel=1e-6
  )
  assert (saved["test_log_z"], saved["test_log_z_stderr"]) == pytest.approx(
    run.log_partitions[-1] if run.log_partitions else (0.0, 0.0), rel=1e-6
  )
  # The IW bound is never above the single-sample bound it averages (on the same draws).
  assert saved["test_nll"] <= saved["test_neg_elbo"] + 1e-3
  best = min(val_rows, key=lambda r: r["val/nll"])
  assert saved["config"]["method"] == config.method and saved["best_step"] == best["step"]
  assert saved["val_nll"] == best["val/nll"]
  assert saved["num_test_examples"] == SHARED_EVAL["eval_num_examples"]

  assert checkpointing.Checkpointer(workdir / "checkpoints", 2).all_steps() == [2, 4]
  for step in (2, 4):
    for kind in ("samples", "reconstructions"):
      with Image.open(workdir / train_loop.IMAGES_DIR / f"{kind}_{step:08d}.png") as image:
        assert image.mode == "L" and min(image.size) > 28
  assert list((workdir / metrics.TENSORBOARD_DIR).glob("events.out.tfevents.*"))


@pytest.mark.parametrize("name", ["dvae", "dvae_sharp"])
def test_training_ais_changes_the_reported_values_only(name, finished_run):
  # Same seed with and without the training AIS: the trajectory (everything that does not contain
  # log Z, and the evaluations) is identical; each log-Z-dependent value differs by exactly its
  # sensitivity × the difference of the reported log Z.
  overrides = {"k": 3} if name == "dvae_sharp" else {}
  runs = {}
  for chains in (0, 8):  # dvae with 8 chains: test_every_config's run, shared
    run = finished_run(name, train_ais_num_chains=chains, **SHARED_EVAL, **overrides)
    runs[chains] = (without_timing(metrics.read_metrics(run.workdir)), run.results)
  (off, off_results), (on, on_results) = runs[0], runs[8]
  assert on_results["test_nll"] == off_results["test_nll"]
  assert on_results["val_nll"] == off_results["val_nll"]
  train_off = {r["step"]: r for r in off if "loss" in r}
  train_on = {r["step"]: r for r in on if "loss" in r}
  assert train_on.keys() == train_off.keys() == {1, 2, 3, 4}
  sensitive = {"loss", *(f"terms/{k}" for k in objectives.log_z_sensitivity(1.0) if k != "loss")}
  for step, a in train_off.items():
    b = train_on[step]
    delta = b["terms/log_z"] - a["terms/log_z"]
    sensitivity = objectives.log_z_sensitivity(a["kappa"])
    for key, value in a.items():
      if key in sensitive:
        expected = value + sensitivity[key.removeprefix("terms/")] * delta
        np.testing.assert_allclose(b[key], expected, atol=1e-4 * (1 + abs(value)), err_msg=key)
      elif not key.startswith("sampler/log_z"):  # the running value's bookkeeping differs
        assert b[key] == value, (step, key)


class SimulatedCrash(Exception):
  pass


@pytest.mark.parametrize("eval_every", [3, 6], ids=["checkpoint-at-eval", "checkpoint-between"])
def test_resume_after_a_crash_matches_an_uninterrupted_run(
  data_dir, tmp_path, monkeypatch, eval_every
):
  # Omniglot: the dynamic binarization must resume too. PA: the sampler state must resume. A
  # checkpoint between evaluations: the log Z tracker (not checkpointed) must resume too.
  overrides = {
    "num_steps": 6,
    "checkpoint_every": 3,
    "eval_every": eval_every,
    "dataset": "omniglot",
  }
  config = tiny_config("dvae_sharp", data_dir, **overrides)
  straight = train.train_and_evaluate(config, tmp_path / "straight")

  real_slab = batching.slab_indices

  def crashing_slab(seed, step, *args):
    if step == 5:  # steps 1..5 done, last checkpoint at 3: steps 4 and 5 are redone
      raise SimulatedCrash
    return real_slab(seed, step, *args)

  monkeypatch.setattr(batching, "slab_indices", crashing_slab)
  with pytest.raises(SimulatedCrash):
    train.train_and_evaluate(config, tmp_path / "resumed")
  assert max(r["step"] for r in metrics.read_metrics(tmp_path / "resumed")) == 5
  monkeypatch.setattr(batching, "slab_indices", real_slab)
  resumed = train.train_and_evaluate(config, tmp_path / "resumed")

  assert_rows_close(
    metrics.read_metrics(tmp_path / "straight"),
    metrics.read_metrics(tmp_path / "resumed"),
    rtol=1e-6,
  )
  for key in ("test_nll", "test_neg_elbo", "val_nll", "best_step", "test_log_z"):
    assert resumed[key] == pytest.approx(straight[key], rel=1e-6), key

  # A finished run is not redone; a different config is refused.
  again = train.train_and_evaluate(config, tmp_path / "resumed")
  assert again["test_nll"] == pytest.approx(resumed["test_nll"])
  config.k = 2
  with pytest.raises(checkpointing.WorkdirConfigError, match=r"k: 1 -> 2"):
    train.train_and_evaluate(config, tmp_path / "resumed")


def test_nan_stops_training_naming_step_and_term_and_keeps_last_good_checkpoint(data_dir, tmp_path):
  config = tiny_config("dvae_pp_exp", data_dir, num_steps=8, eval_every=100, debug_nan_step=5)
  with pytest.raises(
    guards.NonFiniteLossError, match=r"non-finite value at training step 5: .*terms/recon=nan"
  ):
    train.train_and_evaluate(config, tmp_path)
  ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", 2)
  assert ckpt.latest_step() == 4
  experiment, template = experiment_lib.build(config)
  state, record = ckpt.restore(4, (template, checkpointing.make_record(experiment.mesh)))
  ckpt.close()
  assert int(state.step) == 4 and int(record["best_step"]) == -1
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))
  rows = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
  assert max(r["step"] for r in rows) == 4  # (also the log Z refresh rows)


def test_nan_between_host_syncs_is_reported_at_its_own_step(data_dir, tmp_path, monkeypatch):
  """The runner reads the finite flags only at log / checkpoint / eval steps (here 3, 4, 6, 8): the
  NaN of step 5, first seen at step 6, must still be named as step 5, and nothing after it saved."""
  config = tiny_config(
    "dvae_pp_exp",
    data_dir,
    num_steps=8,
    eval_every=100,
    log_every=4,
    checkpoint_every=3,
    debug_nan_step=5,
  )
  checked = []
  check = guards.check_pending

  def recording_check(pending, guard):
    checked.append([step for step, _ in pending])
    check(pending, guard)

  monkeypatch.setattr(guards, "check_pending", recording_check)
  with pytest.raises(
    guards.NonFiniteLossError, match=r"non-finite value at training step 5: .*terms/recon=nan"
  ):
    train.train_and_evaluate(config, tmp_path)
  assert checked == [[1, 2, 3], [4], [5, 6]]  # one host sync per log / checkpoint step
  ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", 2)
  assert ckpt.all_steps() == [3]  # step 6's checkpoint would have held the NaN
  ckpt.close()
  rows = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in rows if "loss" in r] == [4]
  assert max(r["step"] for r in rows) == 4  # (also the log Z refresh rows)


def test_one_and_four_devices_give_the_same_run(data_dir, tmp_path):
  """The CLI on 4 forced host devices (a subprocess: XLA_FLAGS must precede jax's import) against
  this process's single device. Omniglot exercises the dynamic binarization under sharding."""
  assert jax.device_count() == 1
  overrides = {"dataset": "omniglot"}
  one = train.train_and_evaluate(tiny_config("dvae_sharp", data_dir, **overrides), tmp_path / "one")
  proc = run_cli(tmp_path / "four", data_dir, num_devices=4, **overrides)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test NLL" in proc.stdout and "4 device(s)" in proc.stdout
  four = json.loads((tmp_path / "four" / "results.json").read_text())
  assert four["num_devices"] == 4 and one["num_devices"] == 1
  # Float32 sums over a batch split 4 ways round differently: agreement to ~1e-5 relative.
  assert_rows_close(
    metrics.read_metrics(tmp_path / "one"), metrics.read_metrics(tmp_path / "four"), rtol=2e-5
  )
  assert four["test_nll"] == pytest.approx(one["test_nll"], rel=2e-5)


# ----------------------------------------------------------------------------------------------
# Slow: a real kill, and two processes (multi-host) against one.


def _wait_for_step(workdir, step, proc, timeout_s=300):
  import time

  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    rows = metrics.read_metrics(workdir) if (workdir / metrics.METRICS_FILE).exists() else []
    if rows and max(r["step"] for r in rows) >= step:
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended before step {step}: {proc.stderr.read()[-3000:]}")
    time.sleep(0.01)
  raise AssertionError(f"step {step} not reached in {timeout_s} s")


@pytest.mark.slow
def test_sigkill_and_resume_from_the_command_line(data_dir, tmp_path):
  import signal

  overrides = {
    "num_steps": 400,
    "checkpoint_every": 50,
    "eval_every": 200,
    "log_every": 1,
    "num_prior_samples": 128,
    "num_sweeps": 10,
  }
  straight = train.train_and_evaluate(
    tiny_config("dvae_sharp", data_dir, **overrides), tmp_path / "straight"
  )
  command = [
    sys.executable,
    "-m",
    "experiments.run",
    "--config=dvae_sharp",
    f"--workdir={tmp_path / 'killed'}",
    f"--data_dir={data_dir}",
    *cli_overrides(**overrides),
  ]
  proc = subprocess.Popen(
    command,
    cwd=REPO,
    env=subprocess_env(1),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  _wait_for_step(tmp_path / "killed", 120, proc)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  killed_at = max(r["step"] for r in metrics.read_metrics(tmp_path / "killed"))
  assert killed_at < 400
  done = subprocess.run(
    command, cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resuming" in done.stdout
  assert_rows_close(
    metrics.read_metrics(tmp_path / "straight"),
    metrics.read_metrics(tmp_path / "killed"),
    rtol=1e-6,
  )
  resumed = json.loads((tmp_path / "killed" / "results.json").read_text())
  assert resumed["test_nll"] == pytest.approx(straight["test_nll"], rel=1e-6)


def run_two_processes(workdir, data_dir, logs_dir, **overrides):
  """The command line as two processes with 2 CPU devices each (gloo collectives) on ``workdir``;
  returns [(exit status, stdout, stderr)] of processes 0 and 1."""
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  logs = [(logs_dir / f"out{i}.txt", logs_dir / f"err{i}.txt") for i in range(2)]
  procs = []
  try:
    for i, (out, err) in enumerate(logs):
      # Files, not pipes: a full pipe would block one process while the other waits for it.
      with out.open("w") as out_file, err.open("w") as err_file:
        procs.append(
          subprocess.Popen(
            [
              sys.executable,
              "-m",
              "experiments.run",
              "--config=dvae_sharp",
              f"--workdir={workdir}",
              f"--data_dir={data_dir}",
              *cli_overrides(**overrides),
              f"--coordinator_address=localhost:{port}",
              "--num_processes=2",
              f"--process_id={i}",
            ],
            cwd=REPO,
            env=subprocess_env(2),
            stdout=out_file,
            stderr=err_file,
          )
        )
    codes = [p.wait(timeout=600) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [(c, out.read_text(), err.read_text()) for c, (out, err) in zip(codes, logs, strict=True)]


@pytest.mark.slow
def test_two_processes_match_one(data_dir, tmp_path):
  """Multi-host: two processes with 2 CPU devices each (gloo collectives) against this process."""
  one = train.train_and_evaluate(tiny_config("dvae_sharp", data_dir), tmp_path / "one")
  results = run_two_processes(tmp_path / "two", data_dir, tmp_path)
  for code, _, err in results:
    assert code == 0, err[-3000:]
  outputs = [out for _, out, _ in results]
  assert "4 device(s)" in outputs[0] and "test NLL" in outputs[0]
  assert "test NLL" not in outputs[1]  # only process 0 reports and writes
  two = json.loads((tmp_path / "two" / "results.json").read_text())
  assert two["num_devices"] == 4
  assert_rows_close(
    metrics.read_metrics(tmp_path / "one"), metrics.read_metrics(tmp_path / "two"), rtol=2e-5
  )
  assert two["test_nll"] == pytest.approx(one["test_nll"], rel=2e-5)
  assert not (tmp_path / "two" / "lock").exists()  # process 0's lock, released


def test_eval_subset_is_a_fixed_uniform_sample_without_replacement():
  """On a synthetic split whose rows carry their index: the subset is sorted, without repeats,
  the same for any split of that size (and another for another size), and uniform: the mean index
  of n of N drawn without replacement has standard error sd/√n·√(1 − n/N); 4 SE."""
  big, n = 10_000, 2000
  rows = np.stack([np.arange(big), np.arange(big)[::-1]], 1)
  index = scoring.eval_subset(rows, n)[:, 0]
  assert index.shape == (n,) and np.all(np.diff(index) > 0)  # sorted, no repeats
  np.testing.assert_array_equal(scoring.eval_subset(rows, n)[:, 0], index)  # fixed
  np.testing.assert_array_equal(scoring.eval_subset(-rows, n)[:, 0], -index)  # by size alone
  assert not np.array_equal(scoring.eval_subset(rows[: big - 1], n)[:, 0], index)
  assert scoring.eval_subset(rows, 0) is rows and scoring.eval_subset(rows, big) is rows
  se = np.arange(big).std() / np.sqrt(n) * np.sqrt(1 - n / big)
  assert abs(index.mean() - (big - 1) / 2) < 4 * se, (index.mean(), se)
  # Uniform over the whole split, not only on average: each tenth holds n/10 ± 4 sd of them
  # (hypergeometric sd ≈ √(n · 0.1 · 0.9 · (1 − n/N))).
  counts = np.bincount(index // (big // 10), minlength=10)
  assert np.all(np.abs(counts - n / 10) < 4 * np.sqrt(n * 0.09 * (1 - n / big))), counts


def test_eval_subset_is_a_fixed_uniform_sample(full_data_dir):
  test = np.load(full_data_dir / "binarized_mnist.npz")["test"]
  subset = scoring.eval_subset(test, 2000)
  again = scoring.eval_subset(test, 2000)
  np.testing.assert_array_equal(subset, again)  # the same images for every run
  assert subset.shape == (2000, 784)
  assert scoring.eval_subset(test, 0) is test and scoring.eval_subset(test, 10**6) is test
  # The split is ordered (its first 2000 images are lighter than the rest), so a prefix would be a
  # biased sample. Mean ink of a uniform subset without replacement: standard error
  # sd/√n·√(1 − n/N) (finite-population correction); 4 SE.
  ink, sub_ink = test.sum(1), subset.sum(1)
  se = ink.std() / np.sqrt(2000) * np.sqrt(1 - 2000 / len(test))
  assert abs(sub_ink.mean() - ink.mean()) < 4 * se
  assert abs(test[:2000].sum(1).mean() - ink.mean()) > 4 * se  # the prefix would have failed


def test_resume_accepts_a_key_added_later_only_at_its_default(tmp_path):
  """A workdir written before a config key existed resumes when the key holds its default."""
  config = config_lib.resolve_config(config_lib.load_config("dvae_sharp"))
  old = metrics.to_python(config.to_dict())
  del old["adam_eps_mode"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  # The default 'optax': the same run.
  checkpointing.check_resumable(tmp_path, config, train_loop.RESUMABLE_DIFFERENCES)
  changed = config.as_configdict()
  changed.adam_eps_mode = "tf1"
  with pytest.raises(checkpointing.WorkdirConfigError, match=r"adam_eps_mode: None -> 'tf1'"):
    checkpointing.check_resumable(tmp_path, changed, train_loop.RESUMABLE_DIFFERENCES)
