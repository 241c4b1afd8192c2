"""End-to-end tests of python -m experiments.sample on a tiny run."""

import json
import os
import pathlib
import shutil

import chex
import cli_cases
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from test_evaluate import checksums, run_module

from dvae_jax import graphs, priors
from dvae_jax.priors import rbm
from experiments import checkpointing, images, restore
from experiments import prior_sampling as sample_lib

SAMPLE_FLAGS = ["--num=6", "--population=32", "--temperatures=20"]


@pytest.fixture(scope="module")
def draws(tiny_run, tmp_path_factory):
  """{name: (stdout, grid, npz arrays)} of experiments.sample on the tiny run: 'seed1' (--seed=1
  --step=latest) as a process of its own, then 'again' (the same flags), 'other' (--seed=2) and
  'binary' (--binary) in one process (cli_cases); and the run folder's checksums before and after.
  """
  workdir, out = tiny_run[0], tmp_path_factory.mktemp("draws")
  before = checksums(workdir)
  cases = {
    "seed1": ["--seed=1", "--step=latest"],
    "again": ["--seed=1", "--step=latest"],
    "other": ["--seed=2", "--step=latest"],
    "binary": ["--binary"],
  }
  argv = {
    name: [
      f"--workdir={workdir}",
      *SAMPLE_FLAGS,
      f"--out={out / name}.png",
      f"--npz={out / name}.npz",
    ]
    + args
    for name, args in cases.items()
  }
  proc = run_module("experiments.sample", *argv["seed1"])
  assert proc.returncode == 0, proc.stderr
  stdout = {"seed1": proc.stdout}
  results = cli_cases.run_cases(
    "experiments.sample", [argv[n] for n in ("again", "other", "binary")]
  )
  for name, result in zip(("again", "other", "binary"), results, strict=True):
    assert result.returncode == 0, result.stderr
    stdout[name] = result.stdout
  got = {
    name: (text, np.asarray(Image.open(out / f"{name}.png")), dict(np.load(out / f"{name}.npz")))
    for name, text in stdout.items()
  }
  return got, before, checksums(workdir)


def test_sample_writes_grid_and_npz_of_fresh_prior_samples(tiny_run, draws):
  workdir, _ = tiny_run
  got, before, after = draws
  assert after == before
  text, grid, arrays = got["seed1"]
  assert "population annealing: 32 replicas, 20 temperatures" in text
  assert "wrote" in text and "6 Bernoulli means" in text
  z, x = arrays["z"], arrays["x"]
  run = restore.restore(workdir, "latest")
  num_latent = run.state.params["prior"].w.shape[0] + run.state.params["prior"].w.shape[1]
  assert z.shape == (6, num_latent) and z.dtype == np.uint8 and set(np.unique(z)) <= {0, 1}
  assert x.shape == (6, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
  # x are the decoder means of z (an independent decode of the saved z).
  means = images.decode_means(run.experiment, run.state.params, run.state.batch_stats, z)
  np.testing.assert_allclose(x, np.asarray(means), atol=1e-6)
  # A fresh anneal, not the training population (16 chains of 200 bits: a repeat is implausible).
  population = np.asarray(run.state.sampler_state.z)
  assert not any((population == row).all(1).any() for row in z)
  # Grid: round(√6) = 2 columns of 28-pixel images with 1-pixel borders; ink black on white.
  assert grid.shape == (3 * 29 + 1, 2 * 29 + 1) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[1:29, 1:29], np.round(255 * (1 - x[0].reshape(28, 28))))
  # The seed fixes the draw (in a process of its own or not); another seed draws others.
  np.testing.assert_array_equal(got["again"][2]["z"], z)
  np.testing.assert_array_equal(got["again"][2]["x"], x)
  assert (got["other"][2]["z"] != z).any()


def test_sample_binary_draws(draws):
  text, grid, arrays = draws[0]["binary"]
  assert "6 binary draws" in text
  assert arrays["x"].dtype == np.uint8 and set(np.unique(arrays["x"])) <= {0, 1}
  assert set(np.unique(grid)) <= {0, 255}


BAD_FLAGS = [
  (["--num=0"], "invalid --num=0: must be an integer >= 1"),
  (["--temperatures=1"], "invalid --temperatures=1: must be an integer >= 2"),
  (["--out=s.jpg"], "invalid --out='s.jpg': must name a .png file"),
  (["--step=7"], "holds no checkpoint of step 7"),
]


@pytest.fixture(scope="module")
def bad_flag_results(tiny_run):
  """{args: Result} of every BAD_FLAGS case, run in one process (cli_cases)."""
  return cli_cases.run_table("experiments.sample", BAD_FLAGS, f"--workdir={tiny_run[0]}")


@pytest.mark.parametrize("args, message", BAD_FLAGS)
def test_sample_refuses_bad_flags(bad_flag_results, args, message):
  result = bad_flag_results[tuple(args)]
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert message in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------
# --dimod_sampler: a dimod sampler's reads as the prior's latents, and their moment error.

HERE = pathlib.Path(__file__).resolve().parent
# The test samplers (dimod_test_samplers.py, beside this file) are given as module:Name.
SAMPLERS_ENV = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
# Reads and references of the diagnostic in these tests. Measured spread of the tool's pooled ratio
# on exact reads of the two component priors below (10 seeds each, `dimod_moment_error` as here):
# mean 0.99 / 1.00, sd 0.12 / 0.11 (ratio² 1.00 ± 0.24, as the diagnostic's own test: unbiased
# for 1); per group sd ≤ 0.23; relative bias 0.005 ± 0.005. Uniform reads read 29, exact reads at
# β = 2 read 12.5. So the tests accept |total − 1| < 0.5 and groups < 2 (≈ 4 sd), and call > 5 a
# detected departure.
NUM_READS, REPLICAS, TEMPERATURES = 2000, 1024, 200
DIAGNOSTIC = [
  f"--diagnostic_replicas={REPLICAS}",
  f"--diagnostic_temperatures={TEMPERATURES}",
]


def needs_dimod():
  return pytest.importorskip("dimod", reason="--dimod_sampler needs dimod (the [dwave] extra)")


def component_rbm(seed: int) -> rbm.RBM:
  """A 100 × 100 RBM whose couplings are 8 disjoint 3 × 3 blocks (N(0, 2²)), biases N(0, 1.5²):
  far from uniform, yet exactly sampled by enumerating its 6-unit components."""
  rng = np.random.default_rng(seed)
  w = np.zeros((100, 100))
  for k in range(8):
    block = slice(3 * k, 3 * k + 3)
    w[block, block] = rng.normal(0, 2, (3, 3))
  b1, b2 = rng.normal(0, 1.5, 100), rng.normal(0, 1.5, 100)
  return rbm.RBM(*(jnp.asarray(a, jnp.float32) for a in (b1, b2, w)))


def component_chimera(seed: int) -> priors.BoltzmannMachine:
  """The Chimera C(5, 5, 4) prior of a 200-latent run with couplings N(0, 2²) only inside the
  first 5 unit cells (nodes 8c … 8c + 7: K_{4,4} components), biases N(0, 1.5²)."""
  from dvae_jax.graphs import topologies

  g = topologies.latent_graph("chimera", 200, "5,5,4")
  rng = np.random.default_rng(seed)
  e = g.edges
  inside = (e[:, 0] // 8 == e[:, 1] // 8) & (e[:, 0] < 40)
  w = np.where(inside, rng.normal(0, 2, g.num_edges), 0.0)
  b = rng.normal(0, 1.5, g.num_nodes)
  return priors.BoltzmannMachine(jnp.asarray(b, jnp.float32), jnp.asarray(w, jnp.float32), g)


def workdir_with_prior(source, dest, machine, **config):
  """A copy of the run ``source`` whose best checkpoint holds ``machine`` in place of the trained
  prior (encoder and decoder kept), with ``config`` keys changed in config.json (e.g. prior=
  'chimera'): a trained model with a prior whose law the tests know exactly."""
  shutil.copytree(source, dest, ignore=shutil.ignore_patterns("checkpoints*"))
  path = dest / "config.json"
  path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
  trained = restore.restore(source, "best")
  ckpt = checkpointing.Checkpointer(dest / restore.BEST_DIR, 1)
  params = {**trained.state.params, "prior": machine}
  ckpt.save(trained.step, {"params": params, "batch_stats": trained.state.batch_stats})
  ckpt.close()
  restored = restore.restore(dest, "best").state.params["prior"]
  chex.assert_trees_all_equal(restored, machine)
  return dest


@pytest.fixture(scope="module")
def component_runs(tiny_run, tmp_path_factory):
  """{'rbm': workdir, 'chimera': workdir}: the tiny run with the component priors above."""
  pytest.importorskip("dwave_networkx", reason="the Chimera prior needs the [dwave] extra")
  root = tmp_path_factory.mktemp("component_runs")
  return {
    "rbm": workdir_with_prior(tiny_run[0], root / "rbm", component_rbm(0)),
    "chimera": workdir_with_prior(
      tiny_run[0], root / "chimera", component_chimera(0), prior="chimera", topology="5,5,4"
    ),
  }


def dimod_sample(workdir, out_dir, sampler, *args, name="d"):
  """experiments.sample --dimod_sampler=sampler: (stdout, npz arrays, json record)."""
  png, npz, record = (out_dir / f"{name}.{ext}" for ext in ("png", "npz", "json"))
  proc = run_module(
    "experiments.sample",
    f"--workdir={workdir}",
    "--num=6",
    f"--out={png}",
    f"--npz={npz}",
    f"--json={record}",
    f"--dimod_sampler={sampler}",
    *DIAGNOSTIC,
    *args,
    env=SAMPLERS_ENV,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout, dict(np.load(npz)), json.loads(record.read_text())


def test_exact_test_sampler_draws_the_boltzmann_law():
  """The test's ExactSampler (component enumeration) against graphs.exact_moments on a Zephyr
  cell with strong couplings (one 12-node component; 5 colours), SPIN and BINARY BQMs: every
  mean within 5 standard errors of 20,000 draws."""
  needs_dimod()
  pytest.importorskip("dwave_networkx", reason="the Zephyr cell needs the [dwave] extra")
  import dimod_test_samplers

  from dvae_jax.graphs import dimod_io, topologies

  g = topologies.zephyr(1, 1)
  rng = np.random.default_rng(3)
  m = priors.BoltzmannMachine(
    jnp.asarray(rng.normal(0, 1, g.num_nodes)), jnp.asarray(rng.normal(0, 1.5, g.num_edges)), g
  )
  exact = graphs.exact_moments(m)
  num = 20_000
  for vartype in ("BINARY", "SPIN"):
    z = dimod_io.sample(dimod_test_samplers.ExactSampler(), m, 1.0, vartype, num_reads=num, seed=1)
    i, j = g.edges[:, 0], g.edges[:, 1]
    for got, want in ((z.mean(0), exact.unit), ((z[:, i] * z[:, j]).mean(0), exact.edge)):
      se = np.sqrt(np.asarray(want) * (1 - np.asarray(want)) / num)
      assert np.all(np.abs(np.asarray(got) - np.asarray(want)) < 5 * se + 1e-9), vartype


@pytest.mark.parametrize(
  "prior",
  ["rbm", pytest.param("chimera", marks=pytest.mark.slow)],  # the same code on a graph
)
def test_dimod_reads_of_the_prior_law_read_one_and_uniform_reads_do_not(
  component_runs, tmp_path, prior
):
  """Exact Boltzmann reads (the test's ExactSampler, given as module:Name) are decoded like PA's
  and read ≈ 1 (tolerance above); dimod.RandomSampler's uniform reads read ≫ 1."""
  needs_dimod()
  workdir = component_runs[prior]
  text, arrays, record = dimod_sample(
    workdir,
    tmp_path,
    "dimod_test_samplers:ExactSampler",
    f"--dimod_kwargs=num_reads={NUM_READS}",
    "--seed=3",
  )
  assert f"ExactSampler(num_reads={NUM_READS}, seed=3): {NUM_READS} reads" in text
  groups = "unit" if prior == "chimera" else "z1"
  assert f"in units of the noise of {NUM_READS} independent exact samples" in text
  assert f": {groups} " in text and "implied relative bias of the log-Z gradient" in text
  reads, z, x = arrays["reads"], arrays["z"], arrays["x"]
  assert reads.shape == (NUM_READS, 200) and reads.dtype == np.uint8
  assert z.shape == (6, 200) and all((reads == row).all(1).any() for row in z)
  run = restore.restore(workdir, "best")
  means = images.decode_means(run.experiment, run.state.params, run.state.batch_stats, z)
  np.testing.assert_allclose(x, np.asarray(means), atol=1e-6)
  diagnostic = record["diagnostic"]
  assert (record["num_reads"], record["dimod_beta"], record["prior"]) == (NUM_READS, 1.0, prior)
  assert (diagnostic["replicas"], diagnostic["temperatures"]) == (REPLICAS, TEMPERATURES)
  moment_groups = ("unit", "edge") if prior == "chimera" else ("z1", "z2", "z1z2")
  for key in moment_groups + sample_lib.DIAGNOSTIC_SCALARS:
    value = float(arrays[f"diagnostic_{key}"])
    assert (diagnostic[key] is None) if np.isnan(value) else diagnostic[key] == value
  assert abs(diagnostic["total"] - 1) < 0.5, diagnostic
  assert all(diagnostic[k] < 2 for k in moment_groups), diagnostic
  assert diagnostic["relative_bias"] < 0.025, diagnostic
  # The PA references' log Z is the prior's (exact: a sum over its components).
  import dimod_test_samplers

  from dvae_jax.graphs import dimod_io

  exact_log_z = dimod_test_samplers.log_partition(
    dimod_io.to_bqm(sample_lib.dimod_machine(run.state.params["prior"]))
  )
  stderr = diagnostic["reference_log_z_stderr"]
  assert abs(diagnostic["reference_log_z"] - exact_log_z) < 4 * stderr + 1e-3, (exact_log_z, stderr)
  _, _, uniform = dimod_sample(
    workdir, tmp_path, "random", f"--dimod_kwargs=num_reads={NUM_READS}", name="u"
  )
  assert uniform["diagnostic"]["total"] > 5, uniform["diagnostic"]
  assert uniform["diagnostic"]["relative_bias"] > 0.1, uniform["diagnostic"]


def test_dimod_beta_scales_the_energies_the_sampler_sees(component_runs, tmp_path):
  """--dimod_beta=2: the sampler is given a BQM with energies 2 E(z) of the prior (here SPIN,
  at s = 2z − 1), so a Boltzmann sampler draws p_2, which the diagnostic (against the prior at
  β = 1) flags."""
  dimod = needs_dimod()
  workdir = component_runs["rbm"]
  bqm_file = tmp_path / "bqm"
  _, _, record = dimod_sample(
    workdir,
    tmp_path,
    "dimod_test_samplers:EXACT_SAMPLER",  # an instance (the other tests give the class)
    f"--dimod_kwargs=num_reads={NUM_READS},record='{bqm_file}'",
    "--dimod_beta=2",
    "--dimod_vartype=SPIN",
  )
  assert (record["dimod_beta"], record["dimod_vartype"]) == (2.0, "SPIN")
  with open(bqm_file, "rb") as f:
    bqm = dimod.BinaryQuadraticModel.from_file(f)
  assert bqm.vartype is dimod.SPIN and set(bqm.variables) == set(range(200))
  prior = component_rbm(0)
  z = np.random.default_rng(0).integers(0, 2, (50, 200))
  b1, b2, w = (np.asarray(a, np.float64) for a in prior)
  z1, z2 = z[:, :100], z[:, 100:]
  energy = -(z1 @ b1) - (z2 @ b2) - ((z1 @ w) * z2).sum(1)  # E(z) of math.md §2, independently
  got = bqm.energies((2 * z - 1, range(200)))
  np.testing.assert_allclose(got, 2 * energy, rtol=1e-9, atol=1e-9)
  assert record["diagnostic"]["total"] > 5, record["diagnostic"]


@pytest.fixture(scope="module")
def factorial_run(tiny_run, tmp_path_factory):
  root = tmp_path_factory.mktemp("factorial_run")
  logits = priors.FactorialBernoulli(jnp.zeros((200,), jnp.float32))
  return workdir_with_prior(tiny_run[0], root / "factorial", logits, prior="factorial")


DIMOD_BAD_INPUT = [
  (
    ["--dimod_sampler=annealer"],
    "unknown --dimod_sampler='annealer': one of simulated_annealing, tabu, steepest_descent, "
    "random, or module.path:Name",
  ),
  (["--dimod_sampler=no_such_module:X"], "cannot import 'no_such_module'"),
  (["--dimod_sampler=dimod_test_samplers:Missing"], "dimod_test_samplers has no 'Missing'"),
  (
    ["--dimod_sampler=dimod_test_samplers:NOT_A_SAMPLER"],
    "dimod_test_samplers.NOT_A_SAMPLER is not a dimod.Sampler class or instance",
  ),
  (["--dimod_kwargs=num_reads=5"], "--dimod_kwargs needs --dimod_sampler"),
  (["--json=d.json"], "--json needs --dimod_sampler"),
  (
    ["--dimod_sampler=random", "--dimod_kwargs=num_read=5"],
    "RandomSampler takes no num_read (its parameters: num_reads)",
  ),
  (
    ["--dimod_sampler=random", "--dimod_kwargs=num_reads=5,seed"],
    "invalid --dimod_kwargs item 'seed': expected key=value",
  ),
  (
    ["--dimod_sampler=random", "--dimod_kwargs=num_reads=5,beta_range=(0.1,1"],
    "invalid --dimod_kwargs='num_reads=5,beta_range=(0.1,1': unbalanced brackets",
  ),
  (["--dimod_sampler=random", "--dimod_beta=0"], "invalid --dimod_beta=0.0: must be finite"),
  (
    ["--dimod_sampler=dimod_test_samplers:DropVariableSampler"],
    "DropVariableSampler returned samples of other variables than the prior's BQM's 200: "
    "missing 1 [199], extra 0 []",
  ),
  (
    ["--dimod_sampler=random", "--dimod_kwargs=num_reads=3"],
    "RandomSampler returned 3 reads, fewer than --num=6; ask for more, e.g. "
    "--dimod_kwargs=num_reads=6",
  ),
  (  # the sampler's own error (ExactSampler enumerates components of up to 16 units)
    ["--dimod_sampler=dimod_test_samplers:ExactSampler"],
    "ExactSampler.sample failed: ValueError: a connected component of 200 > 16 variables",
  ),
]


@pytest.fixture(scope="module")
def dimod_bad_input_results(tiny_run, factorial_run):
  """{args: Result} of every DIMOD_BAD_INPUT case on the tiny run, and (key "factorial") of
  --dimod_sampler=random on the factorial run, run in one process (cli_cases)."""
  needs_dimod()
  cases = [[f"--workdir={tiny_run[0]}", "--num=6", *args] for args, _ in DIMOD_BAD_INPUT]
  cases.append([f"--workdir={factorial_run}", "--dimod_sampler=random"])
  results = cli_cases.run_cases("experiments.sample", cases, env=SAMPLERS_ENV)
  keys = [tuple(args) for args, _ in DIMOD_BAD_INPUT] + ["factorial"]
  return dict(zip(keys, results, strict=True))


@pytest.mark.parametrize("args, message", DIMOD_BAD_INPUT)
def test_dimod_sampler_refuses_bad_input(dimod_bad_input_results, args, message):
  result = dimod_bad_input_results[tuple(args)]
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert message in result.stderr, result.stderr[-3000:]


def test_dimod_sampler_refuses_a_factorial_prior(dimod_bad_input_results):
  result = dimod_bad_input_results["factorial"]
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "the run's prior is factorial" in result.stderr and "nothing to sample with dimod" in (
    result.stderr
  )


@pytest.mark.parametrize(
  "missing, sampler, message",
  [
    ("dimod.py", "random", "--dimod_sampler needs dimod, which is not installed"),
    (
      "dwave/samplers.py",
      "simulated_annealing",
      "--dimod_sampler=simulated_annealing needs dwave.samplers, which is not installed",
    ),
  ],
)
def test_dimod_sampler_names_the_extra_when_a_package_is_missing(
  tiny_run, tmp_path, missing, sampler, message
):
  """A module that fails to import, put first on the path, stands in for the missing package."""
  needs_dimod()
  fake = tmp_path / missing
  fake.parent.mkdir(parents=True, exist_ok=True)
  name = missing.removesuffix(".py").replace("/", ".")
  fake.write_text(f"raise ModuleNotFoundError({f'No module named {name!r}'!r}, name={name!r})\n")
  proc = run_module(
    "experiments.sample",
    f"--workdir={tiny_run[0]}",
    f"--dimod_sampler={sampler}",
    env={"PYTHONPATH": str(tmp_path)},
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert message in proc.stderr and "pip install 'dvae_jax[dwave]'" in proc.stderr, proc.stderr


def test_dimod_kwargs_are_python_literals_or_strings():
  text = "num_reads=1000, beta_range=(0.1,1.0),beta_schedule_type=geometric,x=[1, 2],y={'a': 1}"
  assert sample_lib.parse_dimod_kwargs(text) == {
    "num_reads": 1000,
    "beta_range": (0.1, 1.0),
    "beta_schedule_type": "geometric",
    "x": [1, 2],
    "y": {"a": 1},
  }
  assert sample_lib.parse_dimod_kwargs(None) == {}
