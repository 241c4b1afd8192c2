"""Tests of every sampler on graph Boltzmann machines through the prior contract:
AIS and population annealing (linear, adaptive, persistent), PCD, the diagnostics and the log Z
tracker against brute-force enumeration on small graphs with strong couplings (|w| up to ≈ 5)."""

import chex
import graph_reference as gref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rbm_reference as ref

from dvae_jax import priors
from dvae_jax.graphs import gibbs as graph_gibbs
from dvae_jax.graphs import machine
from dvae_jax.priors import rbm
from dvae_jax.samplers import (
  ais_log_partition,
  chains,
  diagnostics,
  gibbs,
  log_z_tracking,
  make_prior_sampler,
  pa_log_partition,
  pcd,
  persistent,
  tempering,
)
from dvae_jax.samplers import persistent_pa as ppa

GRAPH_IDS = list(gref.GRAPHS)


@pytest.fixture(scope="module", params=GRAPH_IDS)
def strong(request):
  """(name, machine with w ~ N(0, 2²), exact log Z) on each small graph."""
  m = gref.random_machine(gref.GRAPHS[request.param](), seed=1, w_std=2.0)
  return request.param, m, gref.log_z(m)


# --- the prior contract as the samplers use it ---------------------------------------------------


def test_graph_chains_are_one_array_of_every_unit():
  m = gref.random_machine(gref.odd_cycles_12(), seed=0)
  z = m.init_chains(jax.random.key(0), 5)
  chex.assert_shape(z, (5, 12))
  assert z.dtype == jnp.float32
  np.testing.assert_array_equal(m.energy(z), machine.energy(m, z))
  assert m.num_units == 12
  assert chains.uniform_log_partition(m) == pytest.approx(12 * np.log(2.0))
  assert chains.uniform_log_partition(rbm.init_rbm(3, 4)) == pytest.approx(7 * np.log(2.0))
  key = jax.random.key(1)
  np.testing.assert_array_equal(m.run(key, z, 3, 0.7), graph_gibbs.run(key, z, m, 3, 0.7))
  assert m.run(key, z, 0) is z


def test_run_with_energy_is_the_graph_kernel():
  m = gref.random_machine(gref.odd_cycles_12(), seed=2)
  z0 = graph_gibbs.init(jax.random.key(0), m, 64)
  key = jax.random.key(1)
  z, e = graph_gibbs.run_with_energy(key, z0, m, 4, 0.8)
  z2, e2 = m.run_with_energy(key, z0, 4, 0.8)
  np.testing.assert_array_equal(z2, z)
  np.testing.assert_array_equal(e2, e)


def test_rbm_prior_runs_the_two_sided_gibbs_kernels_on_its_sides():
  """The RBM's methods are the two-sided kernels of samplers.gibbs on the sides of z [S, n] (same
  functions, same keys: bit-identical results)."""
  m = ref.random_rbm(0, 5, 6, 1.0)
  key = jax.random.key(3)
  z = m.init_chains(key, 7)
  sides = gibbs.init(key, m, 7)
  np.testing.assert_array_equal(z, jnp.concatenate(sides, -1))
  np.testing.assert_array_equal(
    m.run(key, z, 2, 0.5), jnp.concatenate(gibbs.run(key, sides, m, 2, 0.5), -1)
  )
  out, e = m.run_with_energy(key, z, 2, 0.5)
  out_sides, e_sides = gibbs.run_with_energy(key, sides, m, 2, 0.5)
  np.testing.assert_array_equal(out, jnp.concatenate(out_sides, -1))
  np.testing.assert_array_equal(e, e_sides)
  np.testing.assert_array_equal(m.energy(z), rbm.energy(m, *sides))
  mom = m.sample_moments(z)
  np.testing.assert_allclose(mom.z1z2, sides.z1.T @ sides.z2 / 7, rtol=1e-6)


def test_graph_sample_and_exact_moments_layout():
  m = gref.random_machine(gref.chimera_cell(), seed=4)
  z = gref.exact_samples(jax.random.key(0), m, 50)
  mom = m.sample_moments(z)
  e = m.graph.edges
  np.testing.assert_allclose(mom.unit, z.mean(0))
  np.testing.assert_allclose(mom.edge, (z[:, e[:, 0]] * z[:, e[:, 1]]).mean(0))
  exact = m.exact_moments()
  mz, mzz = gref.moments(m)
  np.testing.assert_allclose(exact.unit, mz, atol=1e-5)
  np.testing.assert_allclose(exact.edge, mzz, atol=1e-5)
  assert float(m.exact_log_partition()) == pytest.approx(gref.log_z(m), abs=1e-4)


def test_bad_input_names_the_problem():
  g = gref.odd_cycles_12()
  m = gref.random_machine(g, seed=0)
  with pytest.raises(TypeError, match="expected a prior"):
    chains.check({"b": m.b})
  with pytest.raises(TypeError, match="the state before the prior"):
    chains.check(persistent.zero_state(jax.random.key(0), m, 4))
  with pytest.raises(TypeError, match="expected a prior"):
    pa_log_partition(jax.random.key(0), m.b)
  # An RBM's chains given to a graph machine, and the other way round.
  rbm_state = persistent.zero_state(jax.random.key(0), rbm.init_rbm(6, 7), 8)
  with pytest.raises(ValueError, match=r"\(8, 13\), which does not match the prior's 12 units"):
    ppa.step(jax.random.key(0), rbm_state, m)
  graph_state = persistent.zero_state(jax.random.key(0), m, 8)
  with pytest.raises(ValueError, match=r"\(8, 12\), which does not match the prior's 13 units"):
    pcd.step(jax.random.key(0), graph_state, rbm.init_rbm(6, 7))
  # Same chain widths, another graph or another kind: refused by name rather than by a pytree error.
  other = gref.random_machine(machine.Graph.from_edges(12, [(0, 1)]), seed=0)
  with pytest.raises(ValueError, match="belongs to one kind of prior \\(and one graph\\)"):
    ppa.step(jax.random.key(0), graph_state, other)
  with pytest.raises(ValueError, match="belongs to one kind of prior"):
    params = rbm.RBM(m.b[:6], m.b[6:], jnp.zeros((6, 6)))
    ppa.step(jax.random.key(0), graph_state._replace(params=params), m)
  with pytest.raises(ValueError, match=r"population z have shape \(8, 11\)"):
    diagnostics.population_moment_error(jax.random.key(0), jnp.zeros((8, 11)), m, 16, 10)
  with pytest.raises(ValueError, match="b \\[n=12\\] and w"):
    tempering.check_schedule(priors.BoltzmannMachine(m.b[:3], m.w, g), jnp.array([0.0, 1.0]), 1)


# --- annealed estimators against enumeration -----------------------------------------------------


def _check_estimate(res, exact, bound=4.5):
  err, se = float(res.log_z) - exact, float(res.stderr)
  # Bound in standard errors (AIS: normal; PA: t with 15 dof, P(|t| > 4.5) = 4e-4); the stderr must
  # also be informative, not inflated (the errors seen are 0.001–0.02 nats).
  assert abs(err) < bound * se, (err, se)
  assert se < 0.05, se
  return err / se


def test_ais_log_z_matches_enumeration(strong):
  _, m, exact = strong
  res = ais_log_partition(jax.random.key(0), m, num_chains=1024, num_temperatures=500)
  _check_estimate(res, exact)
  chex.assert_shape((res.z, res.log_weights), ((1024, m.num_nodes), (1024,)))


@pytest.mark.parametrize("schedule", ["linear", "adaptive"])
def test_pa_log_z_and_moments_match_enumeration(strong, schedule):
  """log Z within 4.5 stderr and every E[z_i], E[z_i z_j] of the final population within 5
  standard errors (from the 32 independent groups' spread, floored by the error of as many exact
  samples, as in test_pa.py). Adaptive: target ESS 0.999 with one sweep per step; at 0.99 (≈ 20
  steps) the odd-cycle graph read 8 stderr low: the population does not mix between resamplings
  and the groups' spread no longer shows the error (BUILD_NOTES, AIS / PA on graph machines)."""
  _, m, exact = strong
  num, num_groups = 2048, 32
  res = pa_log_partition(
    jax.random.key(1),
    m,
    num_replicas=num,
    num_temperatures=500,
    schedule=schedule,
    num_groups=num_groups,
    target_ess=0.999,
  )
  _check_estimate(res, exact)
  if schedule == "adaptive":
    assert 1 <= int(res.num_steps) < 499
  chex.assert_shape(res.z, (num, m.num_nodes))
  z = np.asarray(res.z, np.float64).reshape(num_groups, -1, m.num_nodes)
  e = m.graph.edges
  group_means = [z.mean(1), (z[..., e[:, 0]] * z[..., e[:, 1]]).mean(1)]
  exact_moments = gref.moments(m)
  for g_mean, p in zip(group_means, exact_moments, strict=True):
    se = np.maximum(g_mean.std(0, ddof=1) / np.sqrt(num_groups), ref.binomial_stderr(p, num))
    assert np.all(np.abs(g_mean.mean(0) - p) < 5 * se), np.max(np.abs(g_mean.mean(0) - p) / se)


def test_rbm_as_a_graph_machine_gives_the_rbm_log_z():
  """`rbm.graph_machine` on K_{8,8}: the graph path and the RBM path agree within their
  errors and with enumeration (not bit-identical: the chains use the keys differently)."""
  m = ref.random_rbm(4, 8, 8, 1.5)
  exact = ref.log_z(m)
  g = rbm.graph_machine(m)
  opts = dict(num_replicas=1024, num_temperatures=300)
  a, b = (
    pa_log_partition(jax.random.key(0), m, **opts),
    pa_log_partition(jax.random.key(0), g, **opts),
  )
  joint = float(np.hypot(a.stderr, b.stderr))
  assert abs(float(a.log_z) - float(b.log_z)) < 4.5 * joint, (a.log_z, b.log_z, joint)
  _check_estimate(b, exact)
  c = ais_log_partition(jax.random.key(1), g, num_chains=1024, num_temperatures=300)
  _check_estimate(c, exact)


# --- persistent samplers -------------------------------------------------------------------------


def at_step(seq, t):
  """The machine at step t of a stacked sequence."""
  return jax.tree.map(lambda x: x[t], seq)


def graph_parameter_path(g, seed, num_steps, w_std=2.0):
  """θ_t = (t/T) θ_a + 0.5 sin(2π t/T) θ_b, t = 1..T (as rbm_reference.parameter_path): stacked
  float32 machines [T, ...] and their exact log Z [T]."""
  a, b = gref.random_machine(g, seed, w_std), gref.random_machine(g, seed + 1, 0.5 * w_std)
  frac = np.arange(1, num_steps + 1, dtype=np.float32)[:, None] / num_steps
  wiggle = 0.5 * np.sin(2 * np.pi * frac)
  seq = jax.tree.map(lambda x, y: jnp.asarray(frac * x + wiggle * y, jnp.float32), a, b)
  exact = [gref.log_z(at_step(seq, t)) for t in range(num_steps)]
  return seq, np.array(exact)


@pytest.mark.parametrize("kind", ["pa", "pcd"])
def test_persistent_samplers_track_log_z_on_a_graph(kind):
  """`make_prior_sampler(kind)` on the odd-cycle graph from the zero machine along 30 parameter
  changes to strong couplings: the running log Z within 4 of its reported stderr of the exact one
  at every step (plus 1e-4 for float32 rounding); the final population's moments within 5 SE."""
  g = gref.odd_cycles_12()
  steps = 30
  seq, exact = graph_parameter_path(g, 20, steps)
  sampler = make_prior_sampler(kind, num_samples=1000, num_sweeps=10)
  state = sampler.init(jax.random.key(0), priors.graph.init_machine(g))
  np.testing.assert_allclose(state.log_z, 12 * np.log(2.0), rtol=1e-7)  # exact start
  chex.assert_shape(state.z, (1000, 12))

  @jax.jit
  def track(key, state):
    return jax.lax.scan(
      lambda s, x: sampler.step(x[0], s, x[1]), state, (jax.random.split(key, steps), seq)
    )

  state, info = track(jax.random.key(1), state)
  err = np.asarray(info.log_z, np.float64) - exact
  se = np.asarray(info.log_z_stderr, np.float64)
  assert np.all(np.abs(err) < 4.0 * se + 1e-4), np.max(np.abs(err) / se)
  assert np.max(np.abs(err)) < 0.15, np.max(np.abs(err))
  final = at_step(seq, -1)
  chex.assert_trees_all_close(state.params, final)
  mz, _ = gref.moments(final)
  assert np.all(np.abs(np.mean(state.z, 0) - mz) < 5 * ref.binomial_stderr(mz, 1000) + 0.02)


def test_persistent_pa_init_far_from_zero_on_zephyr():
  """One persistent PA step from the uniform state to a strong Zephyr machine anneals in stages
  and lands on the exact log Z."""
  m = gref.random_machine(gref.zephyr_cell(), seed=5, w_std=2.0)
  zero = persistent.zero_state(jax.random.key(0), m, 1024)
  state, info = ppa.step(jax.random.key(1), zero, m, num_sweeps=10, target_ess=0.9)
  assert int(info.num_stages) > 5
  assert abs(float(state.log_z) - gref.log_z(m)) < 4 * float(info.log_z_stderr) + 0.02


def test_log_z_tracking_refreshes_a_graph_sampler():
  """The tracker re-anchors a graph sampler's running log Z, which was shifted by hand by 1 nat,
  to the exact value (within its stderr) and reports the 1-nat drift."""
  g = gref.chimera_cell()
  m0, m1 = gref.random_machine(g, 6, 1.5), gref.random_machine(g, 6, 1.6)
  sampler = make_prior_sampler("pa", num_samples=512, num_sweeps=10)
  state = sampler.init(jax.random.key(0), m0)
  tracker = log_z_tracking.seed(jax.random.key(1), state, 256)
  chex.assert_shape(tracker.z, (256, 8))
  state, _ = sampler.step(jax.random.key(2), state, m1)
  shifted = state._replace(log_z=state.log_z + 1.0)
  tracker, fixed, drift, info = log_z_tracking.refresh(jax.random.key(3), tracker, shifted, 10)
  exact = gref.log_z(m1)
  assert abs(float(fixed.log_z) - exact) < 4 * float(info.log_z_stderr) + 1e-3
  assert abs(float(drift) - 1.0) < 4 * float(info.log_z_stderr) + 0.05


# --- diagnostics ---------------------------------------------------------------------------------


def test_diagnostics_on_a_graph_reads_one_when_exact_and_detects_a_lag():
  """8 exact populations of S = 1000 read ratio² ≈ 1 against two fresh anneals (tolerance: 4
  standard errors of the mean); the same samples diagnosed for parameters moved by one Adam-like
  step (−lr·sign of the exact moment difference to another machine) read, on average over 8
  populations, the exact expectation by enumeration within 4 standard errors of the mean."""
  g = gref.odd_cycles_12()
  m = gref.random_machine(g, seed=7, w_std=1.0)
  num, reps = 1000, 8
  squared, populations = [], []
  for r in range(reps):
    z = gref.exact_samples(jax.random.key(10 + r), m, num)
    populations.append(z)
    out = diagnostics.population_moment_error(
      jax.random.key(100 + r), z, m, num_replicas=1024, num_temperatures=300
    )
    assert out.groups._fields == ("unit", "edge")
    assert abs(float(out.reference_log_z) - gref.log_z(m)) < 4 * float(out.reference_log_z_stderr)
    ratios = (out.total, out.groups.unit, out.groups.edge)
    squared.append([float(r) ** 2 for r in ratios])
  squared = np.array(squared)
  mean, se = squared.mean(0), squared.std(0, ddof=1) / np.sqrt(reps)
  assert np.all(np.abs(mean - 1.0) < 4 * se + 0.02), (mean, se)

  lr = 0.08
  other = gref.random_machine(g, seed=8, w_std=1.0)
  target, current = other.exact_moments(), m.exact_moments()
  new = priors.BoltzmannMachine(
    m.b - lr * jnp.sign(current.unit - target.unit),
    m.w - lr * jnp.sign(current.edge - target.edge),
    g,
  )
  exact_new = new.exact_moments()
  bias2 = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(current, exact_new, strict=True))
  v_old, v_new = (
    sum(float(jnp.sum(p * (1 - p))) for p in moments) / num for moments in (current, exact_new)
  )
  # E[ratio²] for a population of θ_old judged as one of θ_new (tests/samplers/test_diagnostics.py
  # derives it): (‖b‖² + Σ v_old/S) / (Σ v_new/S); the mean over 8 populations within 4 of its
  # standard errors.
  expected = (bias2 + v_old) / v_new
  assert bias2 / v_new > 1.5, bias2 / v_new
  lagging = []
  for r, z in enumerate(populations):
    lagging.append(
      float(diagnostics.population_moment_error(jax.random.key(9 + r), z, new, 2048, 300).total)
      ** 2
    )
  lag_mean, lag_se = np.mean(lagging), np.std(lagging, ddof=1) / np.sqrt(reps)
  assert abs(lag_mean - expected) < 4 * lag_se, (lag_mean, lag_se, expected)
  assert lag_mean - mean[0] > 4 * np.hypot(lag_se, se[0]), (lag_mean, lag_se, mean, se)
  # The sampler-state entry point diagnoses against the state's own parameters: in step.
  in_step = diagnostics.state_moment_error(
    jax.random.key(9),
    persistent.PersistentState(z, 0.0, 0.0, 0.0, m),
    num_replicas=2048,
    num_temperatures=300,
  )
  assert float(in_step.total) ** 2 < lag_mean - 4 * lag_se, (in_step, lag_mean)
