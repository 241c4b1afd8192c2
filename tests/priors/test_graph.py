"""Tests of dvae_jax.priors.graph, the graph Boltzmann machine prior (math.md §2, §4).

References are float64 NumPy enumerations of all 2^n states, SciPy's multivariate normal, central
finite differences, and the RBM implementation itself for ``rbm.graph_machine`` (the bipartite case
must give the RBM's numbers, iterate for iterate). The RBM prior's relaxations are tested in
tests/test_objectives.py.
"""

import itertools

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st
from scipy import stats
from scipy.special import logsumexp

from dvae_jax import priors, smoothing
from dvae_jax.graphs import machine
from dvae_jax.priors import rbm

# A triangle (0, 1, 2) and a 5-cycle 2-3-4-5-6 with a chord: odd cycles, 3 colours.
ODD_CYCLES_7 = (7, [(0, 1), (1, 2), (0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (2, 6), (1, 5)])


def odd_cycles_graph():
  g = machine.Graph.from_edges(*ODD_CYCLES_7)
  assert g.num_colours == 3
  return g


def chimera_cell():
  """Chimera C(1,1,4) = K_{4,4} (tests/graphs/test_gibbs.py checks it against dwave-networkx)."""
  return machine.Graph.from_edges(8, [(i, 4 + j) for i in range(4) for j in range(4)])


GRAPHS = {"odd_cycles_7": odd_cycles_graph, "chimera_1x1x4": chimera_cell}


def random_machine(g, seed, w_std=1.0, b_std=0.5, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return priors.BoltzmannMachine(
    jnp.asarray(rng.normal(0, b_std, g.num_nodes), dtype),
    jnp.asarray(rng.normal(0, w_std, g.num_edges), dtype),
    g,
  )


def random_rbm(rng, n1, n2, scale=1.0, dtype=jnp.float32):
  return rbm.RBM(
    jnp.asarray(rng.normal(size=n1), dtype),
    jnp.asarray(rng.normal(size=n2), dtype),
    jnp.asarray(scale * rng.normal(size=(n1, n2)), dtype),
  )


def states(n):
  return np.array(list(itertools.product([0.0, 1.0], repeat=n)))


def np_neg_energy(m, z):
  b, w, e = np.asarray(m.b, np.float64), np.asarray(m.w, np.float64), m.graph.edges
  return z @ b + (z[:, e[:, 0]] * z[:, e[:, 1]]) @ w


def np_log_partition(m, a):
  """log Σ_z exp(−E(z) + a·z) for each row of a [B, n], all 2^n states in float64."""
  z = states(m.num_nodes)
  return logsumexp(np_neg_energy(m, z)[:, None] + z @ np.asarray(a, np.float64).T, axis=0)


# ---- mean-field log Z_ζ on a general graph (math.md §4) ------------------------------------------


@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("w_std", [0.5, 2.0])
def test_graph_mean_field_is_a_lower_bound_tight_without_couplings(graph, w_std):
  g = GRAPHS[graph]()
  for seed in range(3):
    m = random_machine(g, seed, w_std)
    a = np.random.default_rng(10 + seed).normal(0, 1.5, (8, g.num_nodes))
    exact = np_log_partition(m, a)
    for k in (1, 5, 30):
      mf = np.asarray(m.mean_field_log_partition(jnp.asarray(a, jnp.float32), k))
      assert np.all(np.isfinite(mf))
      assert np.all(mf <= exact + 1e-4), (graph, seed, k, mf - exact)
    # Without couplings q = p is factorial: the bound is the exact value after one pass.
    m0 = m.replace(w=jnp.zeros_like(m.w))
    np.testing.assert_allclose(
      m0.mean_field_log_partition(jnp.asarray(a, jnp.float32), 1),
      np_log_partition(m0, a),
      rtol=1e-6,
      atol=1e-5,
    )


@hypothesis.settings(deadline=None, max_examples=15)
@hypothesis.given(
  n=st.integers(1, 7),
  edge_prob=st.floats(0.0, 1.0),
  w_std=st.floats(0.0, 3.0),
  seed=st.integers(0, 2**16),
  passes=st.integers(1, 6),
)
def test_graph_mean_field_is_a_lower_bound_on_random_graphs(n, edge_prob, w_std, seed, passes):
  """Any graph (isolated nodes, cliques: up to n colours), any couplings, any number of passes."""
  rng = np.random.default_rng(seed)
  i, j = np.triu_indices(n, 1)
  keep = rng.random(len(i)) < edge_prob
  g = machine.Graph.from_edges(n, np.stack([i[keep], j[keep]], 1))
  m = random_machine(g, seed, w_std)
  a = rng.normal(0, 1.5, (4, n))
  mf = np.asarray(m.mean_field_log_partition(jnp.asarray(a, jnp.float32), passes))
  exact = np_log_partition(m, a)
  # float32 rounding of a sum of O(n + E) terms: 1e-5 relative.
  assert np.all(mf <= exact + 1e-5 * (1.0 + np.abs(exact))), mf - exact


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_relaxed_log_partition_of_a_graph_prior(graph):
  """Z_ζ = Σ_z exp(−E(z) + Σ_i log r(ζ_i|z_i)): the exact enumeration against a float64 NumPy sum
  with log r(ζ|z) from the smoothing, and mean field below it, for two overlapping smoothings."""
  g = GRAPHS[graph]()
  m = random_machine(g, 3, 1.5)
  rng = np.random.default_rng(4)
  zeta = rng.uniform(0.05, 0.95, (6, g.num_nodes))
  z = states(g.num_nodes)
  for s in (smoothing.PowerFunction(beta=40.0), smoothing.Exponential(beta=12.0)):
    zeta32 = jnp.asarray(zeta, jnp.float32)
    log_r0 = np.asarray(smoothing.log_r0(s, zeta32), np.float64)
    log_r1 = log_r0 + np.asarray(smoothing.log_ratio(s, zeta32), np.float64)
    log_r = np.where(z[:, None, :] > 0, log_r1[None], log_r0[None])  # [2^n, 6, n]
    exact = logsumexp(np_neg_energy(m, z)[:, None] + log_r.sum(-1), axis=0)
    np.testing.assert_allclose(
      m.relaxed_log_prob(s, zeta32, 0.0, exact=True), exact, rtol=1e-5, atol=2e-4
    )
    mf = np.asarray(m.relaxed_log_prob(s, zeta32, 0.0), np.float64)
    assert np.all(mf <= exact + 2e-4), mf - exact
    log_z = np_log_partition(m, np.zeros((1, g.num_nodes)))[0]
    np.testing.assert_allclose(
      m.relaxed_log_prob(s, zeta32, jnp.float32(log_z)), mf - log_z, rtol=1e-5, atol=1e-4
    )
    np.testing.assert_allclose(
      m.relaxed_log_prob(s, zeta32, jnp.float32(log_z), exact=True),
      exact - log_z,
      rtol=1e-5,
      atol=2e-4,
    )


def test_graph_mean_field_gradient_at_the_fixed_point_is_the_total_derivative():
  """Envelope theorem: with the magnetisations converged (weak couplings, 200 passes) the gradient
  of the bound through the energy at fixed m (what the code differentiates) equals the central
  finite difference of the converged bound V(b, w) = max_m F(m; b, w), float64."""
  with jax.enable_x64(True):
    g = odd_cycles_graph()
    m = random_machine(g, 5, 0.3, dtype=jnp.float64)
    a = jnp.asarray(np.random.default_rng(6).normal(0, 1.0, (2, g.num_nodes)))

    def value(b, w):
      return jnp.sum(m.replace(b=b, w=w).mean_field_log_partition(a, 200))

    grad_b, grad_w = jax.grad(value, argnums=(0, 1))(m.b, m.w)
    eps = 1e-6
    for params, grad, which in ((m.b, grad_b, 0), (m.w, grad_w, 1)):
      fd = []
      for i in range(params.shape[0]):
        e = jnp.zeros_like(params).at[i].set(eps)
        args_plus = [m.b, m.w]
        args_minus = [m.b, m.w]
        args_plus[which] = params + e
        args_minus[which] = params - e
        fd.append((value(*args_plus) - value(*args_minus)) / (2 * eps))
      np.testing.assert_allclose(grad, np.array(fd), rtol=1e-6, atol=1e-7)


# ---- the RBM as a graph machine: every prior function gives the RBM's numbers --------------------


def _prior_terms(prior, zeta, gauss, z, log_z):
  """Every prior method at fixed inputs, by name (RBM or graph machine)."""
  s = smoothing.PowerFunction(beta=40.0)
  out = {f"mean_field_{k}": prior.relaxed_log_prob(s, zeta, 0.0, k) for k in (1, 2, 5)}
  out["exact"] = prior.relaxed_log_prob(s, zeta, 0.0, exact=True)
  out["relaxed_log_prob"] = prior.relaxed_log_prob(s, zeta, log_z)
  out["discrete_log_prob"] = prior.log_prob(z, log_z)
  for beta in (6.0, 40.0):  # λ = σ_max + 5 and λ = β
    out[f"lambda_{beta}"] = prior.gaussian_integral_lambda(beta)
    out[f"gaussian_{beta}"] = prior.gaussian_integral_log_prob(gauss, beta, log_z)
  return out


@pytest.mark.parametrize("n1,n2", [(3, 4), pytest.param(4, 2, marks=pytest.mark.slow)])
def test_rbm_graph_machine_equals_the_rbm_prior(n1, n2):
  """Every prior function and its gradient with respect to the prior (the RBM's mapped to (b1; b2)
  and W row-major) agree for r and graph_machine(r), strong couplings (W ~ N(0, 2²))."""
  rng = np.random.default_rng(7)
  r = random_rbm(rng, n1, n2, scale=2.0)
  gm = rbm.graph_machine(r)
  n = n1 + n2
  zeta = jnp.asarray(rng.uniform(0.02, 0.98, (5, n)), jnp.float32)
  gauss = jnp.asarray(rng.normal(0.5, 0.6, (5, n)), jnp.float32)
  z = jnp.asarray(states(n), jnp.float32)
  log_z = rbm.exact_log_partition(r)
  np.testing.assert_allclose(machine.exact_log_partition(gm), log_z, rtol=1e-6)
  assert gm.num_units == r.num_units == n

  @jax.jit
  def values_and_grads(prior):
    values = _prior_terms(prior, zeta, gauss, z, log_z)
    grads = {
      name: jax.grad(lambda p, name=name: jnp.sum(_prior_terms(p, zeta, gauss, z, log_z)[name]))(
        prior
      )
      for name in values
    }
    return values, grads

  values_r, grads_r = values_and_grads(r)
  values_g, grads_g = values_and_grads(gm)
  for name in values_r:
    np.testing.assert_allclose(values_g[name], values_r[name], rtol=1e-6, atol=2e-5, err_msg=name)
    g_r, g_g = grads_r[name], grads_g[name]
    np.testing.assert_allclose(g_g.b, jnp.concatenate([g_r.b1, g_r.b2]), atol=1e-5, err_msg=name)
    np.testing.assert_allclose(g_g.w, g_r.w.reshape(-1), atol=1e-5, err_msg=name)
  # The mean-field equality rests on the colour order (z2 first, as the RBM's m2 then m1): with z1
  # first the one-pass bound differs.
  a = jnp.asarray(rng.normal(0, 1.5, (5, n)), jnp.float32)
  swapped = gm.replace(graph=machine.Graph(n, gm.graph.edges, colours=1 - gm.graph.colours))
  np.testing.assert_allclose(
    gm.mean_field_log_partition(a, 1),
    rbm.mean_field_log_partition(r, a[:, :n1], a[:, n1:], 1),
    rtol=1e-6,
    atol=1e-5,
  )
  other = swapped.mean_field_log_partition(a, 1)
  assert (
    float(jnp.max(jnp.abs(other - rbm.mean_field_log_partition(r, a[:, :n1], a[:, n1:], 1))))
    > 1e-2
  )


# ---- the Gaussian integral and the discrete law on a non-bipartite graph -------------------------


@pytest.mark.parametrize("w_std,beta", [(2.0, 6.0), (0.3, 30.0)])
def test_graph_gaussian_integral_is_the_augmented_mixture(w_std, beta):
  """p(ζ) = Σ_z p(z) N(ζ; z, A⁻¹) with A = W_f + λI, brute force over the 2^7 states with SciPy
  (first case λ = σ_max(W_f) + 5 > β, second λ = β)."""
  g = odd_cycles_graph()
  m = random_machine(g, 8, w_std)
  n = g.num_nodes
  w_f = np.zeros((n, n))
  w_f[g.edges[:, 0], g.edges[:, 1]] = np.asarray(m.w, np.float64)
  w_f += w_f.T
  np.testing.assert_allclose(machine.coupling_matrix(m), w_f, rtol=1e-7)
  lam = max(np.max(np.abs(np.linalg.eigvalsh(w_f))) + 5.0, beta)
  np.testing.assert_allclose(m.gaussian_integral_lambda(beta), lam, rtol=1e-5)
  cov = np.linalg.inv(w_f + lam * np.eye(n))
  z = states(n)
  neg_e = np_neg_energy(m, z)
  log_z = logsumexp(neg_e)
  zeta = np.random.default_rng(9).normal(0.5, 0.6, (6, n))
  # N(ζ; z, Σ) = N(ζ − z; 0, Σ), vectorised over the states z.
  want = np.array(
    [
      logsumexp(neg_e - log_z + stats.multivariate_normal.logpdf(zt - z, np.zeros(n), cov))
      for zt in zeta
    ]
  )
  got = m.gaussian_integral_log_prob(jnp.asarray(zeta, jnp.float32), beta, jnp.float32(log_z))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-4)


def test_graph_discrete_log_prob_is_normalised_and_bad_inputs():
  g = odd_cycles_graph()
  m = random_machine(g, 11, 1.5)
  log_z = machine.exact_log_partition(m)
  z = jnp.asarray(states(g.num_nodes), jnp.float32)
  lp = m.log_prob(z, log_z)
  np.testing.assert_allclose(lp, np_neg_energy(m, np.asarray(z)) - float(log_z), atol=1e-5)
  np.testing.assert_allclose(jnp.sum(jnp.exp(lp)), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="needs log_z"):
    m.log_prob(z, None)
  with pytest.raises(ValueError, match="needs log_z"):
    m.relaxed_log_prob(smoothing.Exponential(beta=5.0), z * 0.5, None)
  with pytest.raises(ValueError, match="only 'none'|needs an RBM prior"):
    m.rao_blackwellize(z, "z2")
  with pytest.raises(ValueError, match="trailing dimension of 7"):
    m.mean_field_log_partition(z[:, :5])
  with pytest.raises(ValueError, match="num_iterations"):
    m.mean_field_log_partition(z, 0)
