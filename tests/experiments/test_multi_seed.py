"""Many seeds in one program (``--config.seeds``, ``train.train_seeds``): the config's checks, the
same runs as the single-seed runs, an exact resume after a stop, no host sync added between the
periodic actions, and the data-parallel mesh.

Tolerance against the single runs: TOLERANCE below. The program vmaps the fused steps over the
seeds; each seed's randomness (``fold_in(key, t)``) and data order are its single run's, so what
differs is only how XLA compiles the batched computation: its reductions (sums over the batch, the
chains, the units) may be grouped differently, and float32 rounding then differs in the last bits.
Training amplifies such differences step by step (a chaotic system), so the bound is for the 100
steps checked here, not for any run length.
"""

import json
import shutil
import subprocess
import sys

import jax
import pytest
from test_train import (
  REPO,
  STDERR_KEYS,
  TIMING_KEYS,
  assert_rows_close,
  cli_overrides,
  run_cli,
  subprocess_env,
  tiny_config,
)

from experiments import checkpointing, config_lib, guards, metrics, periodic, sharding, train

# Measured (CPU, jax 0.10.2) over the 100 steps of test_two_seeds_are_the_two_single_runs: 64 and
# 66 of the 100 losses of the two seeds were bit for bit their single run's, the largest relative
# difference of a loss was 3.7e-7, and the smallest rtol at which assert_rows_close passed was 3e-6
# (set by sampler/log_z_stderr at step 5, 2.7e-6: a sum of 1/ESS − 1/R, differences of two ≈ 1/R
# terms). 3e-5 leaves a factor 10 for other compilers (a GPU's reductions group differently).
TOLERANCE = 3e-5

# ----------------------------------------------------------------------------------------------
# The config.


def _resolved(**overrides):
  config = config_lib.load_config("dvae_sharp")
  config.update(overrides)
  return config_lib.resolve_config(config)


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"seeds": ""}, r"invalid seeds '': an empty list"),
    ({"seeds": " , "}, r"invalid seeds ' , ': an empty list"),
    ({"seeds": "0,1,0"}, r"invalid seeds '0,1,0': 0 repeated"),
    ({"seeds": "2,-1"}, r"invalid seeds '2,-1': -1 negative"),
    ({"seeds": "0,one"}, r"invalid seeds '0,one': 'one' not an integer"),
    ({"seeds": "1,2", "seed": 3}, r"seed=3 is not one of seeds=1,2"),
    (
      {"seeds": "0,1", "sampler": "dimod", "dimod_sampler": "random"},
      r"seeds is not available with sampler='dimod'",
    ),
  ],
)
def test_bad_seeds_are_refused_naming_the_problem(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    _resolved(**overrides)
  config = config_lib.load_config("dvae_sharp")
  config.update(overrides)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.seed_list(config)  # what train_and_evaluate asks first


def test_command_line_refuses_bad_seeds_in_one_line(data_dir, tmp_path):
  proc = _run_cli(tmp_path, data_dir, seeds="0,0")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "error: invalid seeds '0,0': 0 repeated" in proc.stderr
  assert not any(tmp_path.iterdir())  # nothing written


def test_seeds_are_listed_canonically_and_each_run_is_the_single_run_config():
  assert config_lib.seed_list(_resolved()) == ()
  config = _resolved(seeds=" 3, 1,2")
  assert config.seeds == "3,1,2" and config_lib.seed_list(config) == (3, 1, 2)
  assert _resolved(seeds="1,2", seed=2).seeds == "1,2"  # seed among seeds: consistent
  for seed in (3, 1, 2):
    assert config_lib.seed_config(config, seed).to_dict() == _resolved(seed=seed).to_dict()


# ----------------------------------------------------------------------------------------------
# The program against the single runs.

# 100 steps, every step logged (with its training AIS), the log Z tracker every 10 steps, two
# evaluations and checkpoints.
HUNDRED = {
  "num_steps": 100,
  "log_every": 1,
  "eval_every": 50,
  "checkpoint_every": 50,
  "log_z_refresh_every": 10,
}


def test_two_seeds_are_the_two_single_runs(data_dir, tmp_path):
  program = train.train_and_evaluate(
    tiny_config("dvae_sharp", data_dir, seeds="0,1", **HUNDRED), tmp_path / "program"
  )
  assert sorted(program) == [0, 1]
  for seed in (0, 1):
    config = tiny_config("dvae_sharp", data_dir, seed=seed, **HUNDRED)
    single = train.train_and_evaluate(config, tmp_path / f"single_{seed}")
    folder = tmp_path / "program" / f"seed_{seed}"
    assert folder == train.seed_workdir(tmp_path / "program", seed)
    # Its folder is the single run's: the same files, config.json (seed=N) byte for byte.
    names = {p.name for p in (tmp_path / f"single_{seed}").iterdir()}
    assert {p.name for p in folder.iterdir()} == names
    assert (folder / "config.json").read_text() == (
      tmp_path / f"single_{seed}" / "config.json"
    ).read_text()
    rows = metrics.read_metrics(folder)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 101))
    assert_rows_close(metrics.read_metrics(tmp_path / f"single_{seed}"), rows, rtol=TOLERANCE)
    for key in ("test_nll", "test_neg_elbo", "test_log_z", "val_nll"):
      assert program[seed][key] == pytest.approx(single[key], rel=TOLERANCE), key
    assert program[seed]["best_step"] == single["best_step"]
    written = json.loads((folder / "results.json").read_text())
    assert written["test_nll"] == program[seed]["test_nll"]
    # The single run's command on the seed's folder finds it finished.
    again = train.train_and_evaluate(config, folder)
    assert again["test_nll"] == program[seed]["test_nll"]
  # A program is not written over a single run's folder.
  with pytest.raises(checkpointing.WorkdirConfigError, match="holds a single run"):
    train.train_and_evaluate(
      tiny_config("dvae_sharp", data_dir, seeds="0,1", **HUNDRED), tmp_path / "single_0"
    )
  # The seeds are independent runs: their losses differ.
  losses = [
    [r["loss"] for r in metrics.read_metrics(tmp_path / "program" / f"seed_{s}") if "loss" in r]
    for s in (0, 1)
  ]
  assert losses[0] != losses[1]


# ----------------------------------------------------------------------------------------------
# Stop and resume, fused steps.

# 8 steps in dispatches of 2 (fused), checkpoints and evaluations at 4 and 8. No log Z tracker: it
# is reseeded at every checkpoint, so the stop's extra checkpoint would move its reported values
# (test_fused_steps.py does the same; test_train.py covers the tracker's resume).
EIGHT = {
  "num_steps": 8,
  "log_every": 2,
  "eval_every": 4,
  "checkpoint_every": 4,
  "log_z_refresh_every": 0,
  "seeds": "0,1",
}


def _assert_same_program(workdir_a, workdir_b, rtol=1e-6, exact=True):
  """Every seed's rows and results: to ``rtol`` and, when ``exact`` (on CPU, the same program),
  bit for bit but for the running log Z's standard error."""
  for seed in (0, 1):
    a, b = workdir_a / f"seed_{seed}", workdir_b / f"seed_{seed}"
    assert_rows_close(metrics.read_metrics(a), metrics.read_metrics(b), rtol=rtol)
    results_a = json.loads((a / "results.json").read_text())
    results_b = json.loads((b / "results.json").read_text())
    for key in ("test_nll", "test_neg_elbo", "test_log_z", "val_nll"):
      assert results_b[key] == pytest.approx(results_a[key], rel=rtol), (seed, key)
    assert results_a["best_step"] == results_b["best_step"]
    if exact:
      drop = TIMING_KEYS + STDERR_KEYS
      rows_a = [{k: v for k, v in r.items() if k not in drop} for r in metrics.read_metrics(a)]
      rows_b = [{k: v for k, v in r.items() if k not in drop} for r in metrics.read_metrics(b)]
      assert rows_a == rows_b
      for key in ("test_nll", "test_neg_elbo", "test_log_z", "val_nll"):
        assert results_a[key] == results_b[key], (seed, key)


def _run_cli(workdir, data_dir, **overrides):
  command = [
    sys.executable,
    "-m",
    "experiments.run",
    "--config=dvae_sharp",
    f"--workdir={workdir}",
    f"--data_dir={data_dir}",
    *cli_overrides(**overrides),
  ]
  return subprocess.run(
    command, cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=600
  )


# Slow: the default suite resumes a multi-seed program in test_seeds_behind_resume_from_the_common_
# checkpoint and stops one run by SIGTERM in test_reliability.py.
@pytest.mark.slow
def test_program_stopped_by_sigterm_resumes_exactly_and_fused_steps_compose(data_dir, tmp_path):
  straight = tiny_config("dvae_sharp", data_dir, steps_per_dispatch=2, **EIGHT)
  train.train_and_evaluate(straight, tmp_path / "straight")
  # Fused steps (S = 2) are the same program as S = 1.
  one = tiny_config("dvae_sharp", data_dir, steps_per_dispatch=1, **EIGHT)
  train.train_and_evaluate(one, tmp_path / "one")
  _assert_same_program(tmp_path / "straight", tmp_path / "one")

  # SIGTERM after step 5 (inside the dispatch of steps 5..6): every seed checkpoints step 6, the
  # program exits 75, and the same command resumes from there.
  workdir = tmp_path / "stopped"
  overrides = {**EIGHT, "steps_per_dispatch": 2, "debug_signal_step": 5}
  stopped = _run_cli(workdir, data_dir, **overrides)
  assert stopped.returncode == 75, stopped.stderr[-3000:]
  paths = ", ".join(str(workdir / f"seed_{s}" / "checkpoints" / "6") for s in (0, 1))
  assert f"stopped by SIGTERM after step 6; its checkpoint is in {paths}" in stopped.stderr
  for seed in (0, 1):
    ckpt = checkpointing.Checkpointer(workdir / f"seed_{seed}" / "checkpoints", 2)
    assert ckpt.all_steps() == [4, 6]
    ckpt.close()
    assert max(r["step"] for r in metrics.read_metrics(workdir / f"seed_{seed}")) == 6
    assert not (workdir / f"seed_{seed}" / "results.json").exists()
  resumed = _run_cli(workdir, data_dir, **overrides)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "from step 6" in resumed.stdout
  _assert_same_program(tmp_path / "straight", workdir)

  # A seed added to a program that has trained: it would start at step 0, the others at 8.
  more = tiny_config("dvae_sharp", data_dir, steps_per_dispatch=2, **{**EIGHT, "seeds": "0,1,2"})
  with pytest.raises(
    checkpointing.CheckpointRestoreError,
    match=r"would resume from different steps \(seed_0: 8, seed_1: 8, seed_2: 0\) and seed_0 "
    r"holds no checkpoint of step 0",
  ):
    train.train_and_evaluate(more, workdir)


def test_seeds_behind_resume_from_the_common_checkpoint(data_dir, tmp_path):
  # A program cut off while its seeds were checkpointing (seed 1 never wrote step 8): both resume
  # from step 4, the newest step both hold, and finish as the uninterrupted program.
  config = tiny_config("dvae_sharp", data_dir, steps_per_dispatch=2, **EIGHT)
  train.train_and_evaluate(config, tmp_path / "straight")
  shutil.copytree(tmp_path / "straight", tmp_path / "cut")
  for seed in (0, 1):
    (tmp_path / "cut" / f"seed_{seed}" / "results.json").unlink()
  shutil.rmtree(tmp_path / "cut" / "seed_1" / "checkpoints" / "8")
  train.train_and_evaluate(config, tmp_path / "cut")
  _assert_same_program(tmp_path / "straight", tmp_path / "cut")

  # A seed's folder is a single run's: seed 1, cut off the same way, resumed from step 4 by the
  # single run's command (steps 5..8 computed alone: the program's values to TOLERANCE); the
  # program then finds both seeds finished.
  shutil.copytree(tmp_path / "straight", tmp_path / "single")
  (tmp_path / "single" / "seed_1" / "results.json").unlink()
  shutil.rmtree(tmp_path / "single" / "seed_1" / "checkpoints" / "8")
  single = tiny_config("dvae_sharp", data_dir, steps_per_dispatch=2, **{**EIGHT, "seeds": None})
  single.seed = 1
  train.train_and_evaluate(single, tmp_path / "single" / "seed_1")
  finished = train.train_and_evaluate(config, tmp_path / "single")
  written = json.loads((tmp_path / "single" / "seed_1" / "results.json").read_text())
  assert finished[1]["test_nll"] == written["test_nll"]
  _assert_same_program(tmp_path / "straight", tmp_path / "single", rtol=TOLERANCE, exact=False)


@pytest.mark.slow  # the guard itself: test_train.py and test_fused_steps.py in the default suite
def test_a_non_finite_step_stops_the_program_naming_the_seed(data_dir, tmp_path):
  config = tiny_config("dvae_pp_exp", data_dir, seeds="3,4", debug_nan_step=3, eval_every=100)
  with pytest.raises(
    guards.NonFiniteLossError, match=r"^seed 3: non-finite value at training step 3: .*=nan"
  ):
    train.train_and_evaluate(config, tmp_path)
  for seed in (3, 4):  # the last good checkpoint (step 2) of every seed is kept, nothing after it
    ckpt = checkpointing.Checkpointer(tmp_path / f"seed_{seed}" / "checkpoints", 2)
    assert ckpt.all_steps() == [2]
    ckpt.close()
    assert max(r["step"] for r in metrics.read_metrics(tmp_path / f"seed_{seed}")) == 2


# ----------------------------------------------------------------------------------------------
# No host sync between the periodic actions.


@pytest.mark.parametrize(
  "seeds", [None, pytest.param("0,1", marks=pytest.mark.slow)], ids=["single", "two-seeds"]
)
def test_host_reads_only_at_the_periodic_actions(seeds, data_dir, tmp_path, monkeypatch):
  """Every wait for device values on the host is attributed to the dispatch last started: the
  runner's ``sharding.to_host`` (the metrics, the guards' flags, the sampler's values),
  ``jax.device_get``, ``jax.block_until_ready`` and the reads through ``ArrayImpl._value``
  (``float``, ``.tolist()``; on CPU ``np.asarray`` takes a path of its own). Logs at 6 and 12, an
  evaluation and a checkpoint at 12, log Z refreshes (device work only) at 4 and 8: every other
  step waits for nothing, one seed or two."""
  from jax._src import array as array_impl

  current = [None]
  read_at = set()
  real_dispatches, real_value = periodic.dispatches, array_impl.ArrayImpl._value

  def recording_dispatches(*args):
    for first, count in real_dispatches(*args):
      current[0] = first + count
      yield first, count
    current[0] = None

  def recording(fn):
    def wrapped(*args, **kwargs):
      if current[0] is not None:
        read_at.add(current[0])
      return fn(*args, **kwargs)

    return wrapped

  monkeypatch.setattr(periodic, "dispatches", recording_dispatches)
  monkeypatch.setattr(sharding, "to_host", recording(sharding.to_host))
  monkeypatch.setattr(jax, "device_get", recording(jax.device_get))
  monkeypatch.setattr(jax, "block_until_ready", recording(jax.block_until_ready))
  monkeypatch.setattr(array_impl.ArrayImpl, "_value", property(recording(real_value.fget)))
  every = {"log_every": 6, "eval_every": 12, "checkpoint_every": 12, "log_z_refresh_every": 4}
  config = tiny_config("dvae_sharp", data_dir, num_steps=12, seeds=seeds, **every)
  train.train_and_evaluate(config, tmp_path)
  assert read_at == {6, 12}
  folder = tmp_path / "seed_1" if seeds else tmp_path
  refreshed = [r["step"] for r in metrics.read_metrics(folder) if "sampler/log_z_refreshed" in r]
  assert refreshed == [4, 8]


# ----------------------------------------------------------------------------------------------
# The data-parallel mesh.


@pytest.mark.slow  # the default suite runs one run on four devices (test_train.py)
def test_program_on_four_devices_gives_the_one_device_program(data_dir, tmp_path):
  """The command line on 4 forced host devices (each seed's batch and chains split over them, the
  seed axis whole on each) with S = 2, against this process's one device with S = 1; float32 sums
  over a batch split 4 ways round differently: rtol 2e-5, as for one run
  (test_fused_steps.py)."""
  overrides = {"dataset": "omniglot", "log_every": 2, "log_z_refresh_every": 2, "seeds": "0,1"}
  one = train.train_and_evaluate(tiny_config("dvae_sharp", data_dir, **overrides), tmp_path / "one")
  proc = run_cli(tmp_path / "four", data_dir, num_devices=4, steps_per_dispatch=2, **overrides)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for seed in (0, 1):
    four = json.loads((tmp_path / "four" / f"seed_{seed}" / "results.json").read_text())
    assert four["num_devices"] == 4 and four["config"]["seed"] == seed
    assert_rows_close(
      metrics.read_metrics(tmp_path / "one" / f"seed_{seed}"),
      metrics.read_metrics(tmp_path / "four" / f"seed_{seed}"),
      rtol=2e-5,
    )
    assert four["test_nll"] == pytest.approx(one[seed]["test_nll"], rel=2e-5)
