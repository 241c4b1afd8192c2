"""Adding a prior is one class: a dense, fully connected Boltzmann machine defined here, outside the
library, implements ``priors.base.Prior`` (mostly with ``base``'s helpers for a dense coupling
matrix) and is then sampled by the library's samplers, scored by evaluation and trained by two
methods (DVAE# with its mean-field relaxed prior, DVAE++ with the discrete KL across two groups)
without any library code knowing it exists. Checked against exact enumeration of the 2^8 states in
float64 NumPy (independent of the library's enumeration helpers).
"""

import itertools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax
from scipy.special import logsumexp

from dvae_jax import evaluation, models, objectives, posterior, priors
from dvae_jax.graphs import machine
from dvae_jax.priors import base
from dvae_jax.samplers import ais_log_partition, make_prior_sampler, pa_log_partition


class DenseMoments(NamedTuple):
  """E[z_i] [n] and E[z_i z_j] for i < j (upper triangle of [n, n], zero elsewhere)."""

  unit: jax.Array
  pair: jax.Array


class DenseBoltzmannMachine(NamedTuple):
  """E(z) = −b·z − Σ_{i<j} w_ij z_i z_j on the complete graph K_n (w's strict upper triangle).

  Its sweep visits one unit at a time (on K_n every colour class is one unit).
  """

  b: jax.Array  # [n]
  w: jax.Array  # [n, n]; only the strict upper triangle enters

  @property
  def num_units(self) -> int:
    return self.b.shape[-1]

  @property
  def dtype(self):
    return self.b.dtype

  @property
  def needs_sampler(self) -> bool:
    return True

  def check(self) -> None:
    n = self.b.shape[-1]
    if self.b.ndim != 1 or self.w.shape != (n, n):
      raise ValueError(f"expected b [n], w [n, n]; got {self.b.shape}, {self.w.shape}")

  def coupling_matrix(self) -> jax.Array:
    upper = jnp.triu(self.w, 1)
    return upper + upper.T

  def energy(self, z):
    base.check_width(self, z, "z")
    return base.dense_energy(self.b, self.coupling_matrix(), z)

  def log_prob(self, z, log_z):
    return base.boltzmann_log_prob(self, z, log_z)

  def training_log_partition(self, z, log_z):
    return base.log_partition_surrogate(self, z, log_z)

  def rao_blackwellize(self, z, mode):
    return base.rao_blackwell_none_only(z, mode, "a dense machine")

  def _stats(self, z):
    mask = jnp.triu(jnp.ones((self.num_units,) * 2, z.dtype), 1)
    return DenseMoments(z, z[:, :, None] * z[:, None, :] * mask)

  def exact_log_partition(self):
    return base.enumerate_log_partition(self.energy, self.num_units, self.dtype)

  def exact_moments(self):
    return base.enumerate_moments(self.energy, self._stats, self.num_units, self.dtype)

  def sample_moments(self, z):
    return jax.tree.map(lambda s: jnp.mean(s, 0), self._stats(z))

  def colour_classes(self):
    return tuple(np.array([i], np.int32) for i in range(self.num_units))

  def init_chains(self, key, num_chains):
    return jax.random.bernoulli(key, 0.5, (num_chains, self.num_units)).astype(self.dtype)

  def run(self, key, z, num_sweeps, beta=1.0):
    w_f = self.coupling_matrix()

    def sweep(z, k):
      u = jax.random.uniform(k, z.shape, z.dtype)
      for i in range(self.num_units):  # sequential: every unit is coupled to every other
        h = self.b[i] + z @ w_f[:, i]
        z = z.at[:, i].set((u[:, i] < jax.nn.sigmoid(beta * h)).astype(z.dtype))
      return z, None

    return lax.scan(sweep, z, jax.random.split(key, num_sweeps))[0]

  def run_with_energy(self, key, z, num_sweeps, beta=1.0):
    z = self.run(key, z, num_sweeps, beta)
    return z, self.energy(z)

  def mean_field_log_partition(self, a, num_iterations=base.MEAN_FIELD_ITERATIONS):
    return base.colour_mean_field_log_partition(
      self.b, self.coupling_matrix(), self.colour_classes(), a, num_iterations
    )

  def field_log_partition_exact(self, a):
    n = self.num_units
    return base.enumerate_log_partition(lambda z: self.energy(z) - z @ a, n, self.dtype)

  def relaxed_log_prob(
    self, smoothing, zeta, log_z, num_iterations=base.MEAN_FIELD_ITERATIONS, exact=False
  ):
    return base.boltzmann_relaxed_log_prob(self, smoothing, zeta, log_z, num_iterations, exact)

  def gaussian_integral_lambda(self, beta):
    return base.dense_gaussian_integral_lambda(self.coupling_matrix(), beta)

  def gaussian_integral_log_prob(self, zeta, beta, log_z):
    return base.dense_gaussian_integral_log_prob(
      self.b, self.coupling_matrix(), zeta, beta, log_z
    )

  def expected_neg_energy(self, mu, num_groups, across):
    return base.dense_expected_neg_energy(self.b, self.coupling_matrix(), mu, num_groups, across)

  def coupling_sum_of_squares(self):
    return jnp.sum(jnp.square(jnp.triu(self.w, 1)))

  def graph_machine(self):
    n = self.num_units
    i, j = np.triu_indices(n, 1)
    graph = machine.Graph(n, np.stack([i, j], 1))
    return priors.BoltzmannMachine(self.b, self.w[i, j], graph)


N = 8
STATES = np.array(list(itertools.product([0.0, 1.0], repeat=N)))


def random_dense(seed, w_std=1.0, b_std=0.5):
  rng = np.random.default_rng(seed)
  return DenseBoltzmannMachine(
    jnp.asarray(rng.normal(0, b_std, N), jnp.float32),
    jnp.asarray(rng.normal(0, w_std, (N, N)), jnp.float32),
  )


def np_neg_energy(m, z):
  b, w = np.asarray(m.b, np.float64), np.triu(np.asarray(m.w, np.float64), 1)
  return z @ b + np.einsum("si,ij,sj->s", z, w, z)


def np_log_z(m) -> float:
  return float(logsumexp(np_neg_energy(m, STATES)))


def np_moments(m):
  p = np.exp(np_neg_energy(m, STATES) - np_log_z(m))
  return p @ STATES, np.triu(np.einsum("s,si,sj->ij", p, STATES, STATES), 1)


def test_the_new_kind_follows_the_contract():
  m = random_dense(0, w_std=1.0)
  assert isinstance(m, priors.Prior)
  np.testing.assert_allclose(m.exact_log_partition(), np_log_z(m), rtol=1e-5)
  mz, mzz = np_moments(m)
  exact = m.exact_moments()
  np.testing.assert_allclose(exact.unit, mz, atol=1e-5)
  np.testing.assert_allclose(exact.pair, mzz, atol=1e-5)
  # The exact moments are ∇ log Z (b, and w's upper triangle).
  grad = jax.grad(lambda p: p.exact_log_partition())(m)
  np.testing.assert_allclose(grad.b, mz, atol=1e-5)
  np.testing.assert_allclose(grad.w, mzz, atol=1e-5)
  # The graph form (dimod export, the graph prior) is the same law.
  g = m.graph_machine()
  np.testing.assert_allclose(g.exact_log_partition(), np_log_z(m), rtol=1e-5)
  # Mean field is a lower bound on log Σ exp(−E + a·z), which enumeration gives exactly.
  a = jnp.asarray(np.random.default_rng(1).normal(0, 1, (5, N)), jnp.float32)
  bound = m.mean_field_log_partition(a, 5)
  exact_a = jax.vmap(m.field_log_partition_exact)(a)
  want = [logsumexp(np_neg_energy(m, STATES) + STATES @ np.asarray(x, np.float64)) for x in a]
  np.testing.assert_allclose(exact_a, want, rtol=1e-5)
  assert np.all(np.asarray(bound) <= np.asarray(exact_a) + 1e-4)


def test_library_samplers_estimate_the_new_kinds_log_z_and_moments():
  """AIS and population annealing of the new kind: log Z within 4.5 standard errors of
  enumeration; PA's final population's moments within 5 standard errors of the exact ones (from
  its 16 independent groups, floored by the error of as many exact samples)."""
  m = random_dense(2, w_std=1.5)
  exact = np_log_z(m)
  res = ais_log_partition(jax.random.key(0), m, num_chains=512, num_temperatures=300)
  assert abs(float(res.log_z) - exact) < 4.5 * float(res.stderr), (res.log_z, res.stderr, exact)
  num, groups = 2048, 16
  pa = pa_log_partition(jax.random.key(1), m, num_replicas=num, num_temperatures=300)
  assert abs(float(pa.log_z) - exact) < 4.5 * float(pa.stderr), (pa.log_z, pa.stderr, exact)
  z = np.asarray(pa.z, np.float64).reshape(groups, -1, N)
  i, j = np.triu_indices(N, 1)
  group_means = [z.mean(1), (z[..., i] * z[..., j]).mean(1)]
  mz, mzz = np_moments(m)
  for g_mean, p in zip(group_means, (mz, mzz[i, j]), strict=True):
    se = np.maximum(g_mean.std(0, ddof=1) / np.sqrt(groups), np.sqrt(p * (1 - p) / num))
    assert np.all(np.abs(g_mean.mean(0) - p) < 5 * se), np.max(np.abs(g_mean.mean(0) - p) / se)
  # The library's moment diagnostic reads the new kind's moment groups by their names.
  assert set(m.sample_moments(pa.z)._fields) == {"unit", "pair"}


def test_discrete_kl_of_one_group_is_the_exact_kl():
  m = random_dense(3, w_std=1.5)
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(5, N)) * 1.5
  log_q = STATES @ logits.T - np.sum(np.logaddexp(0, logits), 1)
  log_p = (np_neg_energy(m, STATES) - np_log_z(m))[:, None]
  want = np.sum(np.exp(log_q) * (log_q - log_p), 0)
  lg = jnp.asarray(logits, jnp.float32)
  post = posterior.PosteriorSample(jnp.zeros((1, 5, N)), lg[None], None, jnp.zeros((1, 5, N)))
  for name in ("dvae", "dvae_pp_exp"):
    method = objectives.get_method(name, 5.0)
    kl = objectives.discrete_kl(m, m.exact_log_partition(), post, method, 1)
    np.testing.assert_allclose(kl[0], want, rtol=1e-5, atol=1e-4)


STRUCT = models.StructSpec(
  "tiny-dense", num_groups=2, units_per_group=N // 2, encoder_hidden=(16,), decoder_hidden=(16,),
  num_pixels=16,
)


def _data(num, seed=0):
  """Binary images of 16 pixels: one of four prototypes with 10% of the pixels flipped."""
  rng = np.random.default_rng(seed)
  prototypes = rng.uniform(size=(4, STRUCT.num_pixels)) < 0.5
  x = prototypes[rng.integers(0, 4, num)] ^ (rng.uniform(size=(num, STRUCT.num_pixels)) < 0.1)
  return x.astype(np.float32)


def _train(name, beta, num_steps):
  data = _data(512)
  net = models.DVAENet(STRUCT, data.mean(0), rngs=nnx.Rngs(0))
  prior = DenseBoltzmannMachine(jnp.zeros(N), jnp.zeros((N, N)))
  method = objectives.get_method(name, beta)
  sampler = make_prior_sampler("pa", num_samples=256, num_sweeps=6)
  graphdef, params, batch_stats = nnx.split(net, nnx.Param, nnx.BatchStat)
  tx = optax.adam(1e-2)
  state = (params, batch_stats, prior, tx.init((params, prior)))
  sampler_state = sampler.init(jax.random.key(0), prior)

  @jax.jit
  def step(state, sampler_state, x, key):
    params, batch_stats, prior, opt_state = state
    k_sampler, k_loss = jax.random.split(key)
    sampler_state, _ = sampler.step(k_sampler, sampler_state, prior)

    def total_loss(trainable):
      params, prior = trainable
      model = nnx.merge(graphdef, params, batch_stats, copy=True)
      samples = (sampler_state.z, sampler_state.log_z)
      loss, _ = objectives.loss_fn(k_loss, model, prior, samples, x, method, 2, 1.0)
      loss = loss + objectives.weight_decay(params, prior)
      return loss, nnx.state(model, nnx.BatchStat)

    (loss, batch_stats), grads = jax.value_and_grad(total_loss, has_aux=True)((params, prior))
    updates, opt_state = tx.update(grads, opt_state)
    params, prior = optax.apply_updates((params, prior), updates)
    return (params, batch_stats, prior, opt_state), sampler_state, loss

  losses = []
  for t in range(num_steps):
    x = jnp.asarray(data[(t * 32) % 512 : (t * 32) % 512 + 32])
    state, sampler_state, loss = step(state, sampler_state, x, jax.random.key(t + 1))
    losses.append(float(loss))
  return graphdef, state, sampler_state, np.array(losses), data


@pytest.mark.parametrize(
  "name,beta",
  [("dvae_sharp", 8.0), pytest.param("dvae_pp_exp", 8.0, marks=pytest.mark.slow)],
)
def test_two_methods_train_with_the_new_kind(name, beta):
  """80 Adam steps of DVAE# (mean-field relaxed prior over the machine's colouring) and DVAE++
  (discrete KL, couplings across the two groups) with the new prior and the library's persistent
  PA sampler: the loss falls, the prior learns couplings, the sampler's running log Z matches
  enumeration of the parameters it holds, and the discrete model's importance-weighted NLL with an
  AIS log Z matches the exact NLL from enumeration of all latent states (with the exact log Z)."""
  graphdef, state, sampler_state, losses, data = _train(name, beta, 80)
  params, batch_stats, prior, _ = state
  assert np.all(np.isfinite(losses))
  assert losses[-10:].mean() < losses[:10].mean() - 1.0, (losses[:10].mean(), losses[-10:].mean())
  chex.assert_tree_all_finite(prior)
  assert float(jnp.max(jnp.abs(jnp.triu(prior.w, 1)))) > 1e-2
  # The running log Z of the sampler's own parameters (one step behind the prior) vs enumeration.
  held = sampler_state.params
  err = float(sampler_state.log_z) - np_log_z(held)
  assert abs(err) < 4 * float(jnp.sqrt(sampler_state.log_z_variance)) + 0.05, err
  # Evaluation: exact log p(x) by enumeration vs the IW bound with an AIS log Z.
  model = nnx.merge(graphdef, params, batch_stats)
  x = jnp.asarray(data[:20])
  log_z = np_log_z(prior)
  ais = ais_log_partition(jax.random.key(7), prior, num_chains=512, num_temperatures=300)
  assert abs(float(ais.log_z) - log_z) < 4.5 * float(ais.stderr) + 1e-3
  exact = evaluation.exact_log_likelihood(model, prior, jnp.float32(log_z), x)
  iw = evaluation.evaluate(jax.random.key(8), model, prior, ais.log_z, x, 2000)
  gap = np.asarray(iw["nll"]) + np.asarray(exact["log_px"])
  # The IW bound with 2000 samples of 2^8 states is tight here; AIS's error shifts every example.
  assert np.all(np.abs(gap) < 0.1 + 4 * float(ais.stderr)), gap
