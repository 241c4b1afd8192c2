"""benchmarks/gpu_check.py: the GPU command, run unchanged on the CPU with a tiny budget."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import gpu_campaign, gpu_check, pending_runs

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_comparison_steps_fit_the_budget_at_the_slowest_struct():
  # 4 runs (2 configs × 2 structs) share 400 s; half of each share trains at 30 steps/s.
  rates = {"1-layer-lin": 50.0, "1-layer-nonlin": 30.0}
  options = dict(
    configs=["dvae", "dvae_sharp"], structs=list(rates), train_fraction=0.5, min_steps=200
  )
  assert gpu_check.comparison_steps(rates, 400.0, **options) == 1500  # 0.5 · 100 s · 30 = 1500
  assert gpu_check.comparison_steps(rates, 100.0, **options) == 300  # 375: multiple of 100
  assert gpu_check.comparison_steps(rates, 1.0, **options) == 200  # never below min_steps
  # Two seeds per run: counted as twice the runs.
  assert gpu_check.comparison_steps(rates, 400.0, **options, num_seeds=2) == 500


# Slow (every sub-benchmark and a 4-run comparison, each a fresh process that compiles): the
# budget arithmetic above and the campaign's pure parts run in the default suite.
@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_cpu(data_dir, tmp_path):
  out = tmp_path / "gpu"
  cmd = [
    sys.executable, "-m", "benchmarks.gpu_check", "--budget_s=1", f"--out={out}",
    "--structs=1-layer-lin", "--compare_structs=1-layer-lin", "--speed_steps=2", "--seeds=0,1",
    "--speed_repeats=1", "--min_steps=10", "--eval_num_examples=20", "--eval_iw_samples=4",
    "--override=val_iw_samples=4", "--override=ais_num_chains=16",
    "--override=ais_num_temperatures=10", "--override=num_prior_samples=64",
    "--override=log_z_tracker_replicas=16", "--override=log_every=5", "--overhead_block=50",
    "--override=train_ais_num_chains=16", "--override=train_ais_num_temperatures=10",
    "--overhead_repeats=1", "--overhead_runner_steps=20",
    # The default diagnostic (2 PA references of 2048 replicas x 1000 temperatures at each of the 5
    # evaluations) was 80% of this test's time; its sizes are not what the test checks.
    "--override=sampler_diagnostic_replicas=16", "--override=sampler_diagnostic_temperatures=10",
  ]  # fmt: skip
  env = {
    **os.environ,
    "DVAE_JAX_DATA_DIR": str(data_dir),
  }
  subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env, capture_output=True, timeout=900)
  summary = json.loads((out / "gpu_check.json").read_text())
  assert summary["comparison_steps"] == 10 and summary["budget_s"] == 1
  assert set(summary["steps_per_second"]) == {"1-layer-lin"}
  assert set(summary["comparison_wall_s"]) == {"1-layer-lin"}
  assert set(summary["runner_overhead"]) == {"step", "+batch", "+log Z", "runner"}
  assert min(summary["runner_overhead"].values()) > 0
  runner = summary["runner_steps_per_second"]["1-layer-lin"]
  assert set(runner) == {"dvae", "dvae_sharp"} and min(runner.values()) > 0
  # Run-steps/s of each 2-seed program: 2 × its second logged block's rate (the first compiles).
  assert summary["seeds"] == [0, 1]
  run_rates = summary["run_steps_per_second"]["1-layer-lin"]
  for config in ("dvae", "dvae_sharp"):
    rows = (
      out / "table1" / "runs" / f"{config}__1-layer-lin__k5__s0" / "metrics.jsonl"
    ).read_text()
    logged = [
      r["steps_per_second"] for r in map(json.loads, rows.splitlines()) if "steps_per_second" in r
    ]
    assert len(logged) == 2 and run_rates[config] == 2 * logged[1] > 0
  speed = json.loads((out / "train_speed.json").read_text())
  assert speed["rows"][0]["num_sweeps"] == 40 and speed["rows"][0]["steps_per_second"] > 0
  for config in ("dvae", "dvae_sharp"):  # seeds 0 and 1 of each config trained in one program
    for seed in (0, 1):
      name = f"{config}__1-layer-lin__k5__s{seed}"
      run = json.loads((out / "table1" / "json" / f"{name}.json").read_text())
      assert run["results"]["config"]["num_steps"] == 10 and run["results"]["test_nll"] > 0
      assert run["results"]["config"]["seed"] == seed
      assert (out / "table1" / "runs" / name / "results.json").is_file()
    assert (out / "table1" / "programs" / f"{config}__1-layer-lin__k5" / "seed_1").is_symlink()
  assert "| dvae | 1-layer-lin |" in (out / "table1" / "table1.md").read_text()


# ----------------------------------------------------------------------------------------------
# The campaign (benchmarks.gpu_campaign, ``gpu_check --campaign``).

MIB = gpu_campaign.MIB


def test_programs_advanced_fewest_steps_first_within_the_output_limits():
  pending = [  # (name, step, bytes of its last archives)
    ("dvae lin", 40_000, 20 * MIB),
    ("sharp lin", 20_000, 20 * MIB),
    ("dvae nonlin", 20_000, 30 * MIB),
    ("sharp nonlin", 60_000, None),
  ]
  select = gpu_campaign.select_programs
  # 8 files: the summary and one program's 4 archives (or 4 records): one program only.
  one = dict(max_files=8, max_bytes=60 * MIB, files_each=4, unknown_bytes=40 * MIB)
  assert select(pending, **one) == ["sharp lin"]  # ties at 20k: the given order
  # Room for every file: sizes decide. sharp lin 23 MiB + dvae nonlin 34 MiB = 57; dvae lin would
  # pass 60; sharp nonlin (unknown: 40 MiB) too.
  sizes = dict(max_files=0, max_bytes=60 * MIB, files_each=4, unknown_bytes=40 * MIB)
  assert select(pending, **sizes) == ["sharp lin", "dvae nonlin"]
  # A smaller program later in the order still fits where a larger one did not.
  assert select(pending, **{**sizes, "max_bytes": 50 * MIB}) == ["sharp lin", "dvae lin"]
  unlimited = dict(max_files=0, max_bytes=0, files_each=4, unknown_bytes=40 * MIB)
  assert select(pending, **unlimited) == ["sharp lin", "dvae nonlin", "dvae lin", "sharp nonlin"]
  assert select(pending, **{**one, "max_files": 4}) == []  # nothing fits beside the summary


def test_budget_shares_and_steady_rate():
  # The time left, equally among the programs still to run; nothing when none is left.
  assert gpu_campaign.share_seconds(300.0, 3) == 100.0
  assert gpu_campaign.share_seconds(-5.0, 2) == 0.0
  # Program 1 ended after 40 of its 100 s: the next two share the 260 s left.
  assert gpu_campaign.share_seconds(300.0 - 40.0, 2) == 130.0
  # The logged rates of steps 100..300 of this invocation, its first block (compiling) left out.
  rows = [{"step": s, "steps_per_second": r} for s, r in [(50, 9.0), (100, 1.0), (150, 20.0),
          (200, 30.0), (250, 10.0), (300, 40.0)]]  # fmt: skip
  rows.insert(3, {"step": 150, "val/nll": 90.0})
  assert gpu_campaign.steady_rate(rows, 50, 300) == 25.0  # median of 20, 30, 10, 40
  assert gpu_campaign.steady_rate(rows, 250, 300) == 40.0  # one block: itself
  assert gpu_campaign.steady_rate(rows, 300, 300) is None


def _summary(programs):
  return {"settings": {}, "invocations": [], "programs": programs}


def _write(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data) if isinstance(data, bytes) else path.write_text(json.dumps(data))


def test_merge_copies_an_output_over_the_campaign_and_refuses_an_incomplete_one(tmp_path):
  src, dest = tmp_path / "out", tmp_path / "campaign"
  # Before: programs a (2 archives) and b (1 archive) pending.
  _write(dest / "a__s0.tar.gz", b"a0 old")
  _write(dest / "a__s1.tar.gz", b"a1 old")
  _write(dest / "b__s0.tar.gz", b"b0")
  _write(dest / "campaign.json", _summary({}))
  # The invocation advanced a (new archives) and finished b (its record).
  _write(src / "a__s0.tar.gz", b"a0 newer")
  _write(src / "a__s1.tar.gz", b"a1 newer")
  _write(src / "json" / "b__s0.json", {"results": {}})
  programs = {
    "a": {"archives": {"a__s0": {"step": 9, "bytes": 8}, "a__s1": {"step": 9, "bytes": 8}}},
    "b": {"archives": {}},
  }
  _write(src / "campaign.json", _summary(programs))
  incomplete = _summary({**programs, "c": {"archives": {"c__s0": {"step": 1, "bytes": 5}}}})
  _write(src / "campaign.json", incomplete)
  with pytest.raises(gpu_campaign.CampaignError, match="c__s0.tar.gz; nothing was changed"):
    gpu_campaign.merge(src, dest)
  assert (dest / "a__s0.tar.gz").read_bytes() == b"a0 old"
  _write(src / "campaign.json", _summary(programs))
  # An output of another campaign (not resumed from this one) would replace its record.
  _write(dest / "campaign.json", _summary({}) | {"invocations": [{"started": "earlier"}]})
  with pytest.raises(gpu_campaign.CampaignError, match="does not continue the campaign of"):
    gpu_campaign.merge(src, dest)
  _write(dest / "campaign.json", _summary({}))

  copied = gpu_campaign.merge(src, dest)

  assert sorted(copied) == ["a__s0.tar.gz", "a__s1.tar.gz", "campaign.json", "json/b__s0.json"]
  assert sorted(p.name for p in dest.glob("*.tar.gz")) == ["a__s0.tar.gz", "a__s1.tar.gz"]
  assert (dest / "a__s1.tar.gz").read_bytes() == b"a1 newer"
  assert json.loads((dest / "campaign.json").read_text()) == _summary(programs)
  assert (dest / "json" / "b__s0.json").is_file()
  # An output that did not touch a pending program keeps its archives (listed, already there).
  programs["a"]["archives"]["a__s0"]["bytes"] = 99
  _write(src / "campaign.json", _summary(programs))
  (src / "a__s0.tar.gz").unlink()
  with pytest.raises(gpu_campaign.CampaignError, match="a__s0.tar.gz; nothing"):
    gpu_campaign.merge(src, dest)  # listed at another size than the one there


def test_a_resume_refuses_a_folder_it_cannot_continue_exactly(tmp_path):
  program = gpu_campaign.Program("dvae", "1-layer-lin", 5, (0, 1))
  resume, work = tmp_path / "campaign", tmp_path / "work"
  for seed, step in ((0, 8), (1, 6)):  # seed 1's newer archive did not arrive
    run = tmp_path / "src" / "runs" / program.runs[seed]
    (run / "checkpoints" / str(step)).mkdir(parents=True)
    (run / "config.json").write_text("{}")
    resume.mkdir(exist_ok=True)
    pending_runs._write_archive(
      resume / f"{program.runs[seed]}.tar.gz",
      tmp_path / "src",
      [run / "config.json", run / "checkpoints" / str(step)],
    )
  state = {"step": 8, "archives": {name: {} for name in program.runs}}
  with pytest.raises(gpu_campaign.CampaignError, match=r"different steps \(.*s0: 8, .*s1: 6\)"):
    gpu_campaign.restore(program, state, resume, work)
  (resume / f"{program.runs[1]}.tar.gz").unlink()
  lacks = f"lacks the archives {program.runs[1]}"
  with pytest.raises(gpu_campaign.CampaignError, match=lacks) as e:
    gpu_campaign.restore(program, state, resume, work)
  # campaign.json (committed) records the refusal without the machine's path to the folder.
  record = gpu_campaign.refusal_record(e.value, resume)
  assert str(tmp_path) not in record and record.startswith("the campaign folder lacks the archives")
  # A folder of another campaign's runs.
  settings = {"configs": ["dvae"], "structs": ["1-layer-lin"], "k": 5, "seeds": [0, 1],
              "protocol": "paper", "num_steps": None}  # fmt: skip
  (resume / "campaign.json").write_text(json.dumps(_summary({}) | {"settings": settings}))
  assert gpu_campaign.load_summary(resume, {**settings, "configs": ["dvae"]})["programs"] == {}
  with pytest.raises(gpu_campaign.CampaignError, match=r"with seeds=\[0, 1\], not \[0, 1, 2\]"):
    gpu_campaign.load_summary(resume, {**settings, "seeds": [0, 1, 2]})


# Every program's config: the evaluation sizes of the end-to-end test above, 40 steps of the
# paper's schedule (validation and checkpoints every 20, fused steps of 5).
CAMPAIGN = [
  "--campaign", "--configs=dvae_sharp", "--compare_structs=1-layer-lin", "--seeds=0,1",
  "--num_steps=40", "--steps_per_dispatch=5", "--reserve_s=0", "--min_share_s=0",
  "--stop_grace_s=300", "--override=val_iw_samples=4", "--override=ais_num_chains=16",
  "--override=ais_num_temperatures=10", "--override=num_prior_samples=64",
  "--override=log_z_tracker_replicas=16", "--override=log_every=5",
  "--override=train_ais_num_chains=16", "--override=train_ais_num_temperatures=10",
  "--override=sampler_diagnostic_replicas=16", "--override=sampler_diagnostic_temperatures=10",
  "--override=eval_every=20", "--override=checkpoint_every=20", "--override=eval_num_examples=20",
  "--override=eval_iw_samples=4",
]  # fmt: skip
TIMING_KEYS = (
  "steps_per_second",
  "eval_seconds",
  "val/sampler_diagnostic_seconds",
  "sampler/log_z_ais_seconds",
)


@pytest.fixture(scope="module")
def mnist_subset(tmp_path_factory):
  """binarized_mnist.npz of the committed subsets (500 / 300 / 300 images): the runs' start-up
  reads it in no time (the whole training set's mean alone took 2 s a run)."""
  folder = tmp_path_factory.mktemp("subset")
  with np.load(REPO_ROOT / "tests" / "data" / "subsets.npz") as f:
    splits = {s: np.unpackbits(f[f"binarized_mnist/{s}"], axis=-1, count=784) for s in SPLITS}
  np.savez(folder / "binarized_mnist.npz", **splits)
  return folder


SPLITS = ("train", "valid", "test")


def _rows(run):
  return [
    {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
    for line in (run / "metrics.jsonl").read_text().splitlines()
  ]


# Slow (three campaigns, each a chain of subprocesses that start JAX); the campaign's pure parts
# (selection, shares, merge, resume refusals, the stop protocol) are tested in the default suite.
@pytest.mark.slow
def test_campaign_stops_at_its_budget_and_a_later_invocation_finishes_it_exactly(
  mnist_subset, tmp_path
):
  """A budget of seconds stops the program after its first dispatch (it is still starting when the
  share ends: the stop waits for it to take its lock, then it checkpoints step 5 of 40); the packed
  campaign, merged into a campaign folder, is continued on a fresh work folder (as on another
  machine) and finished. The resumed runs' metrics equal those of the same campaign run
  uninterrupted bit for bit (timings aside): on a CPU the runner's resume is exact (the state,
  keys and data order of step t come from the checkpoint and (seed, t) alone;
  tests/experiments/test_multi_seed.py)."""
  env = {
    **os.environ,
    "DVAE_JAX_DATA_DIR": str(mnist_subset),
  }

  def campaign(*args):
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", *CAMPAIGN, *args]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip

  def finish(proc):
    output = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, output[-3000:]
    return output

  straight = campaign("--budget_s=900", f"--out={tmp_path / 'straight'}",
                      f"--work={tmp_path / 'straight_work'}")  # fmt: skip
  name, runs = "dvae_sharp__1-layer-lin__k5", ["dvae_sharp__1-layer-lin__k5__s0",
                                               "dvae_sharp__1-layer-lin__k5__s1"]  # fmt: skip
  first = tmp_path / "first"
  finish(campaign("--budget_s=3", f"--out={first}", f"--work={tmp_path / 'w1'}"))
  summary = json.loads((first / "campaign.json").read_text())
  (record,) = summary["invocations"][0]["programs"]
  stopped_at = summary["programs"][name]["step"]
  assert record["outcome"] == "stopped" and record["from_step"] == 0
  assert 0 < stopped_at < 40 and record["to_step"] == stopped_at
  assert summary["programs"][name]["archives"] == {
    run: {"step": stopped_at, "bytes": (first / f"{run}.tar.gz").stat().st_size} for run in runs
  }
  archives = [f"{run}.tar.gz" for run in runs]
  assert sorted(p.name for p in first.iterdir()) == ["campaign.json", *archives]
  log = (tmp_path / "w1" / "programs" / name / "stdout.log").read_text()
  assert f"stopped by SIGTERM after step {stopped_at}" in log

  # What the repository keeps: the first output merged into it; the second invocation updates it
  # in place (--out = the campaign folder) from a fresh work folder, as another machine would.
  committed = tmp_path / "campaign"
  gpu_campaign.merge(first, committed)
  finish(campaign("--budget_s=900", f"--out={committed}", f"--work={tmp_path / 'w2'}"))
  summary = json.loads((committed / "campaign.json").read_text())
  (record,) = summary["invocations"][1]["programs"]
  assert (record["from_step"], record["to_step"], record["outcome"]) == (stopped_at, 40, "finished")
  assert record["run_steps_per_second"] == 2 * record["steps_per_second"] > 0
  log = (tmp_path / "w2" / "programs" / name / "stdout.log").read_text()
  assert f"from step {stopped_at}" in log
  assert sorted(p.name for p in committed.iterdir()) == ["campaign.json", "json"]  # no archives
  state = summary["programs"][name]
  assert state["finished"] and state["archives"] == {} and state["steps_trained"] == 40
  assert state["invocations"] == 2 and set(state["test_nll"]) == set(runs)

  finish(straight)
  for run in runs:
    record = json.loads((committed / "json" / f"{run}.json").read_text())
    alone = json.loads((tmp_path / "straight" / "json" / f"{run}.json").read_text())
    assert record["results"]["test_nll"] == alone["results"]["test_nll"] == state["test_nll"][run]
    assert record["learning_curve"] == alone["learning_curve"]
    assert _rows(tmp_path / "w2" / "runs" / run) == _rows(tmp_path / "straight_work" / "runs" / run)


# A stand-in for benchmarks.table1 and its runner: the parent waits for a child that takes the lock
# (naming itself, as experiments.workdir_lock does) and, on each SIGTERM, counts it; it exits 75 at
# the first when told to "stop", at the second when told to "linger" (an evaluation in progress).
FAKE_PROGRAM = r"""
import json, os, signal, subprocess, sys, time
mode, lock = sys.argv[1], sys.argv[2]
if mode != "child":
  sys.exit(subprocess.call([sys.executable, __file__, "child", lock, mode]))
behaviour = sys.argv[3]
if behaviour == "no lock":
  time.sleep(60)
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(1))
open(lock, "w").write(json.dumps({"pid": os.getpid()}))
while len(got) < (1 if behaviour == "stop" else 2):
  time.sleep(0.05)
print("terms", len(got), flush=True)
sys.exit(75)
"""


@pytest.mark.parametrize(
  "behaviour, grace, outcome",
  [("stop", 30, "stopped"), ("linger", 1, "aborted"), ("no lock", 1, "killed before training")],
)
def test_stop_reaches_the_training_process_by_its_lock(tmp_path, behaviour, grace, outcome):
  lock, script = tmp_path / "lock", tmp_path / "program.py"
  script.write_text(FAKE_PROGRAM)
  proc = subprocess.Popen(
    [sys.executable, str(script), behaviour, str(lock)],
    start_new_session=True,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert gpu_campaign.stop_program(proc, lock, grace) == outcome
  output = proc.stdout.read()
  if behaviour == "no lock":
    assert proc.returncode != 0 and output == ""  # killed, with its child (its process group)
  else:
    assert proc.returncode == 75 and output == f"terms {1 if behaviour == 'stop' else 2}\n"
