"""Fused train steps (``steps_per_dispatch`` = S: S steps in one jitted ``lax.scan``): the dispatch
plan, the slabs of batch indices, the config's cadence check, the guards inside a dispatch, and the
runner end to end: S > 1 is the same run as S = 1, names a NaN's own step, and resumes exactly.

Tolerance: the rows agree to rtol 1e-6 (``test_train.assert_rows_close``, as a resumed run must:
its error scales for the columns that are differences of large terms) and, on CPU, every column
but the sampler's log Z standard error bit for bit. A fused dispatch runs the step's own
computation (``make_step_fn``) once per scan iteration on the same data (gathered on the device,
cast exactly as on the host) with the same keys (``fold_in(key, t)``); XLA compiles that body
almost as it compiles the step alone: losses, gradients and parameters came out identical (S in
{1, 4, 10} against the unfused step, 40 steps), but the running log Z's variance, a sum of
1/ESS − 1/R (a difference of two ≈ 1/R terms), took a one-ulp difference in ESS at one step
(1e-6 relative in ``sampler/log_z_stderr``). A GPU compiler may round more differently; the
stated tolerance is the bound.
"""

import json
import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_dict
from test_train import (
  STDERR_KEYS,
  TIMING_KEYS,
  SimulatedCrash,
  assert_rows_close,
  run_cli,
  tiny_config,
)

from dvae_jax import data as data_lib
from dvae_jax.data import batching
from experiments import checkpointing, config_lib, guards, metrics, periodic, preemption, train

# ----------------------------------------------------------------------------------------------
# The dispatch plan and the slabs.


@hypothesis.settings(deadline=None, max_examples=200)
@hypothesis.given(
  start=st.integers(0, 60), length=st.integers(0, 60), per_dispatch=st.integers(1, 13)
)
def test_dispatches_cover_the_steps_and_end_at_multiples(start, length, per_dispatch):
  num_steps = start + length
  plan = list(periodic.dispatches(start, num_steps, per_dispatch))
  steps = [first + i for first, count in plan for i in range(count)]
  assert steps == list(range(start, num_steps))  # every step once, in order
  for first, count in plan:
    end = first + count
    assert 1 <= count <= per_dispatch
    assert end % per_dispatch == 0 or end == num_steps
    # No multiple of S falls strictly inside a dispatch: every period divisible by S is seen.
    assert not any(t % per_dispatch == 0 for t in range(first + 1, end))


def test_dispatches_examples():
  assert list(periodic.dispatches(0, 10, 4)) == [(0, 4), (4, 4), (8, 2)]
  assert list(periodic.dispatches(7, 20, 5)) == [(7, 3), (10, 5), (15, 5)]  # resumed at step 7
  assert list(periodic.dispatches(0, 3, 1)) == [(0, 1), (1, 1), (2, 1)]
  assert list(periodic.dispatches(5, 5, 3)) == []
  with pytest.raises(ValueError, match="steps_per_dispatch"):
    list(periodic.dispatches(0, 5, 0))


@hypothesis.settings(deadline=None, max_examples=100)
@hypothesis.given(
  seed=st.integers(0, 3),
  step=st.integers(0, 40),
  num_batches=st.integers(1, 9),
  batch_size=st.integers(1, 7),
  num_examples=st.integers(1, 23),
)
def test_slab_rows_are_the_batches_of_their_steps(
  seed, step, num_batches, batch_size, num_examples
):
  slab = batching.slab_indices(seed, step, num_batches, batch_size, num_examples)
  assert slab.shape == (num_batches, batch_size)
  for i in range(num_batches):  # batch_indices written out: epoch permutations, consecutive
    positions = (step + i) * batch_size + np.arange(batch_size)
    expected = [
      np.random.default_rng([seed, p // num_examples]).permutation(num_examples)[p % num_examples]
      for p in positions
    ]
    np.testing.assert_array_equal(slab[i], expected)
    np.testing.assert_array_equal(
      slab[i], batching.batch_indices(seed, step + i, batch_size, num_examples)
    )


def test_slab_refuses_bad_sizes():
  with pytest.raises(ValueError, match="num_batches"):
    batching.slab_indices(0, 0, 0, 10, 100)


def test_slab_gathers_the_host_batches(data_dir):
  dataset = data_lib.load_dataset("omniglot", str(data_dir))  # grey values: float32 exact copies
  slab = batching.slab_indices(1, 3, 4, 16, dataset.train.shape[0])
  for i in range(4):
    np.testing.assert_array_equal(
      dataset.train[slab[i]].astype(np.float32), data_lib.train_batch(dataset, 1, 3 + i, 16)
    )


# ----------------------------------------------------------------------------------------------
# The config's cadence check.


def _resolved(**overrides):
  config = config_lib.load_config("dvae_sharp")
  config.update(overrides)
  return config_lib.resolve_config(config)


def test_cadences_must_be_multiples_of_steps_per_dispatch():
  # The cpu protocol's cadences (log 100, eval 5000, checkpoint 2500) take S = 1, 10, 100.
  for s in (1, 10, 100):
    assert _resolved(steps_per_dispatch=s).steps_per_dispatch == s
  with pytest.raises(
    config_lib.ConfigError,
    match=r"steps_per_dispatch=3 must divide every cadence.*log_every=100 is not a multiple "
    r"\(nearest: 99 or 102\); eval_every=5000 is not a multiple \(nearest: 4998 or 5001\); "
    r"checkpoint_every=2500 is not a multiple \(nearest: 2499 or 2502\)",
  ):
    _resolved(steps_per_dispatch=3)
  with pytest.raises(config_lib.ConfigError, match=r"log_z_refresh_every=50 .*nearest: 40 or 60"):
    _resolved(steps_per_dispatch=20, log_every=20, log_z_refresh_every=50)
  with pytest.raises(config_lib.ConfigError, match=r"log_every=5 .*\(nearest: 20\)"):
    _resolved(steps_per_dispatch=20, log_every=5)
  assert _resolved(steps_per_dispatch=20, log_every=20, log_z_refresh_every=0).log_every == 20
  with pytest.raises(config_lib.ConfigError, match="invalid steps_per_dispatch -1"):
    _resolved(steps_per_dispatch=-1)


def test_the_default_is_ten_fused_steps_on_this_cpu():
  """The default (0, auto) on the CPU the tests run on: the cpu protocol's cadences (log 100, eval
  5000, checkpoint 2500) take the CPU's preferred S = 10 (config_lib.PREFERRED_STEPS_PER_DISPATCH,
  measured by benchmarks.throughput)."""
  assert jax.default_backend() == "cpu", "the tests run on a CPU"
  assert config_lib.load_config("dvae_sharp").steps_per_dispatch == 0
  assert _resolved().steps_per_dispatch == 10


# ----------------------------------------------------------------------------------------------
# The guards inside a dispatch (stacked per-step metrics, as make_fused_steps returns them).


def _guard_config():
  return config_dict.ConfigDict(
    {
      "guard_max_nats": 1e4,
      "guard_max_log_z": 1e3,
      "guard_max_grad_norm": 100.0,
      "guard_grad_norm_steps": 3,
      "learning_rate": 3e-3,
    }
  )


def _dispatch(loss, grad_norm):
  """Stacked metrics of one dispatch with the flags the train step computes for each row."""
  loss, grad_norm = np.float32(loss), np.float32(grad_norm)
  m = {"loss": loss, "terms/recon": loss, "grad_norm": grad_norm}
  config = _guard_config()
  m["finite"] = np.isfinite(loss) & np.isfinite(grad_norm)
  rows = [{k: jnp.asarray(v[i]) for k, v in m.items()} for i in range(len(loss))]
  m["guard"] = np.array([int(guards.step_flags(r, config)) for r in rows], np.int32)
  return {k: jnp.asarray(v) for k, v in m.items()}


def test_check_pending_names_a_non_finite_step_inside_a_dispatch():
  guard = guards.DivergenceGuard(_guard_config(), last_checkpoint=lambda: 4)
  pending = [
    (4, _dispatch([200.0] * 4, [1.0] * 4)),  # steps 1..4
    (8, _dispatch([200.0, math.nan, 200.0, math.inf], [1.0] * 4)),  # steps 5..8: 6 is first
  ]
  with pytest.raises(
    guards.NonFiniteLossError, match=r"non-finite value at training step 6: loss=nan, terms/recon"
  ):
    guards.check_pending(pending, guard)


def test_check_pending_counts_large_gradients_across_dispatches():
  guard = guards.DivergenceGuard(_guard_config(), last_checkpoint=lambda: None)
  # Steps 4, 5 (end of a dispatch, start of the next) and 6 over the limit: stop at 6.
  pending = [
    (4, _dispatch([200.0] * 4, [1.0, 500.0, 1.0, 500.0])),
    (8, _dispatch([200.0] * 4, [500.0, 500.0, 1.0, 1.0])),
  ]
  with pytest.raises(guards.DivergenceError, match=r"at step 6: .* steps 4\.\.6"):
    guards.check_pending(pending, guard)
  out_of_bounds = guards.DivergenceGuard(_guard_config(), last_checkpoint=lambda: None)
  with pytest.raises(guards.DivergenceError, match=r"diverged at step 7: loss = 2e\+06"):
    guards.check_pending([(8, _dispatch([200.0, 200.0, 2e6, 200.0], [1.0] * 4))], out_of_bounds)


# ----------------------------------------------------------------------------------------------
# The runner end to end.


def _rows(workdir):
  """Rows of metrics.jsonl without the timing columns and the running log Z's standard error."""
  return [
    {k: v for k, v in r.items() if k not in TIMING_KEYS + STDERR_KEYS}
    for r in metrics.read_metrics(workdir)
  ]


def _assert_same_run(workdir_a, results_a, workdir_b, results_b):
  rows_a, rows_b = metrics.read_metrics(workdir_a), metrics.read_metrics(workdir_b)
  assert_rows_close(rows_a, rows_b, rtol=1e-6)
  assert _rows(workdir_a) == _rows(workdir_b)  # on CPU, bit for bit (see the module's docstring)
  for key in ("test_nll", "test_neg_elbo", "test_log_z", "val_nll", "best_step"):
    assert results_a[key] == results_b[key], key


# 40+ steps of an RBM prior sampled by persistent population annealing (dvae_sharp) with the log Z
# tracker and the training AIS, ending with a shorter dispatch (42 = 8·5 + 2); and of a Pegasus
# graph prior. Cadences are multiples of S; the S = 1 run uses the same ones.
_SAME_RUN_CASES = [
  pytest.param(
    {"num_steps": 42, "log_every": 5, "eval_every": 20, "checkpoint_every": 10},
    5,
    id="rbm-pa",
  ),
  pytest.param(
    {
      "num_steps": 40,
      "log_every": 4,
      "eval_every": 20,
      "checkpoint_every": 20,
      "prior": "pegasus",
    },
    4,
    id="pegasus",
    # Compiling the Pegasus sweep is most of this case's time; the RBM case covers the fused loop.
    marks=pytest.mark.slow,
  ),
]


@pytest.mark.parametrize("overrides, per_dispatch", _SAME_RUN_CASES)
def test_fused_steps_give_the_same_run(overrides, per_dispatch, data_dir, tmp_path):
  overrides = {**overrides, "log_z_refresh_every": overrides["log_every"]}
  runs = {}
  for s in (1, per_dispatch):
    config = tiny_config("dvae_sharp", data_dir, steps_per_dispatch=s, **overrides)
    runs[s] = (tmp_path / f"s{s}", train.train_and_evaluate(config, tmp_path / f"s{s}"))
  (one, one_results), (fused, fused_results) = runs[1], runs[per_dispatch]
  logged = [r["step"] for r in _rows(fused) if "loss" in r]
  num_steps = overrides["num_steps"]
  every = overrides["log_every"]
  assert logged == sorted({*range(every, num_steps + 1, every), num_steps})
  _assert_same_run(one, one_results, fused, fused_results)


def test_the_default_resolution_gives_the_same_run_as_one_step_per_dispatch(data_dir, tmp_path):
  """A run left at the default steps_per_dispatch (auto: 10 here, the cadences' largest divisor up
  to the CPU's 10) is the S = 1 run, and config.json records the S it ran with."""
  overrides = {
    "num_steps": 20,
    "log_every": 10,
    "eval_every": 20,
    "checkpoint_every": 10,
    "log_z_refresh_every": 10,
  }
  one_config = tiny_config("dvae_sharp", data_dir, steps_per_dispatch=1, **overrides)
  one = train.train_and_evaluate(one_config, tmp_path / "one")
  auto_config = tiny_config("dvae_sharp", data_dir, **overrides)
  assert auto_config.steps_per_dispatch == 0  # the named config's default
  auto = train.train_and_evaluate(auto_config, tmp_path / "auto")
  assert json.loads((tmp_path / "auto" / "config.json").read_text())["steps_per_dispatch"] == 10
  assert auto["config"]["steps_per_dispatch"] == 10
  _assert_same_run(tmp_path / "one", one, tmp_path / "auto", auto)


def test_nan_inside_a_dispatch_is_named_with_its_step(data_dir, tmp_path):
  config = tiny_config(
    "dvae_pp_exp",
    data_dir,
    num_steps=12,
    steps_per_dispatch=4,
    log_every=4,
    checkpoint_every=4,
    eval_every=100,
    log_z_refresh_every=4,
    debug_nan_step=6,
  )
  with pytest.raises(
    guards.NonFiniteLossError, match=r"non-finite value at training step 6: .*terms/recon=nan"
  ):
    train.train_and_evaluate(config, tmp_path)
  ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", 2)
  assert ckpt.all_steps() == [4]  # step 8's checkpoint would have held the NaN
  ckpt.close()
  rows = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in rows if "loss" in r] == [4]
  assert max(r["step"] for r in rows) == 4


def test_fused_run_resumes_exactly_after_a_crash_and_after_a_stop_with_another_s(
  data_dir, tmp_path, monkeypatch
):
  # OMNIGLOT: the dynamic binarization resumes too; PA: the sampler state resumes. No log Z
  # tracker: it is reseeded at every checkpoint, so the stop's extra checkpoint would move its
  # reported values (the uninterrupted S = 1 run of test_train.py covers its resume).
  overrides = {
    "dataset": "omniglot",
    "num_steps": 16,
    "log_every": 4,
    "eval_every": 8,
    "checkpoint_every": 8,
    "log_z_refresh_every": 0,
  }
  config = tiny_config("dvae_sharp", data_dir, steps_per_dispatch=4, **overrides)
  straight = train.train_and_evaluate(config, tmp_path / "straight")

  # A crash in the dispatch of steps 13..16 (data for steps 12..15): the run resumes from step 8.
  real_slab = batching.slab_indices

  def crashing_slab(seed, step, *args):
    if step == 12:
      raise SimulatedCrash
    return real_slab(seed, step, *args)

  monkeypatch.setattr(batching, "slab_indices", crashing_slab)
  with pytest.raises(SimulatedCrash):
    train.train_and_evaluate(config, tmp_path / "crashed")
  assert max(r["step"] for r in metrics.read_metrics(tmp_path / "crashed")) == 12
  monkeypatch.setattr(batching, "slab_indices", real_slab)
  crashed = train.train_and_evaluate(config, tmp_path / "crashed")
  _assert_same_run(tmp_path / "straight", straight, tmp_path / "crashed", crashed)

  # One step at a time, stopped by a signal after step 6 (not a multiple of 4), then resumed with
  # S = 4: dispatches of steps 7..8, 9..12, 13..16 (steps_per_dispatch may change on resume).
  stopped = tiny_config(
    "dvae_sharp", data_dir, steps_per_dispatch=1, debug_signal_step=6, **overrides
  )
  with preemption.stop_on_signals(), pytest.raises(preemption.Preempted, match="after step 6"):
    train.train_and_evaluate(stopped, tmp_path / "stopped")
  resumed = train.train_and_evaluate(config, tmp_path / "stopped")
  _assert_same_run(tmp_path / "straight", straight, tmp_path / "stopped", resumed)


# Slow: test_multi_seed.py's four-device program (S = 2, two seeds) checks fused steps on the mesh
# in the default suite.
@pytest.mark.slow
def test_fused_steps_on_four_devices_give_the_one_device_run(data_dir, tmp_path):
  """The command line on 4 forced host devices with S = 2 (the slabs' batch axis split over the
  devices, gathered from the replicated training set) against this process's one device with
  S = 1; float32 sums over a batch split 4 ways round differently: rtol 2e-5, as for S = 1."""
  overrides = {"dataset": "omniglot", "log_every": 2, "log_z_refresh_every": 2}
  one = train.train_and_evaluate(tiny_config("dvae_sharp", data_dir, **overrides), tmp_path / "one")
  proc = run_cli(tmp_path / "four", data_dir, num_devices=4, steps_per_dispatch=2, **overrides)
  assert proc.returncode == 0, proc.stderr[-3000:]
  four = json.loads((tmp_path / "four" / "results.json").read_text())
  assert four["num_devices"] == 4 and four["config"]["steps_per_dispatch"] == 2
  assert_rows_close(
    metrics.read_metrics(tmp_path / "one"), metrics.read_metrics(tmp_path / "four"), rtol=2e-5
  )
  assert four["test_nll"] == pytest.approx(one["test_nll"], rel=2e-5)
