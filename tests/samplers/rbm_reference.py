"""Float64 NumPy references for the sampler tests: random RBMs and brute-force enumeration.

Independent of dvae_jax.rbm: log Z and the moments are computed here from the definitions of
math.md §2 with NumPy/SciPy in float64.
"""

import numpy as np
from scipy.special import expit, logsumexp

from dvae_jax.priors import rbm


def random_rbm(seed: int, n1: int, n2: int, w_std: float, b_std: float = 0.5) -> rbm.RBM:
  """float32 RBM with N(0, b_std²) biases and N(0, w_std²) couplings."""
  rng = np.random.default_rng(seed)
  return rbm.RBM(
    np.asarray(rng.normal(0.0, b_std, n1), np.float32),
    np.asarray(rng.normal(0.0, b_std, n2), np.float32),
    np.asarray(rng.normal(0.0, w_std, (n1, n2)), np.float32),
  )


def all_states(n: int) -> np.ndarray:
  """[2^n, n] float64 binary states."""
  return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float64)


def _float64(m):
  return [np.asarray(x, np.float64) for x in m]


def log_z(m) -> float:
  """log Z = logsumexp over z1 of b1·z1 + Σ_j log(1 + exp(b2_j + (z1ᵀW)_j)), in float64."""
  b1, b2, w = _float64(m)
  z1 = all_states(len(b1))
  return float(logsumexp(z1 @ b1 + np.logaddexp(0.0, b2 + z1 @ w).sum(1)))


def moments(m):
  """Exact (E[z1] [n1], E[z2] [n2], E[z1 z2ᵀ] [n1, n2]) in float64 by enumerating z1."""
  b1, b2, w = _float64(m)
  z1 = all_states(len(b1))
  field = b2 + z1 @ w
  log_p = z1 @ b1 + np.logaddexp(0.0, field).sum(1)
  p = np.exp(log_p - logsumexp(log_p))
  mean_z2 = expit(field)
  return p @ z1, p @ mean_z2, (z1 * p[:, None]).T @ mean_z2


def binomial_stderr(p, num):
  """Standard error of the mean of num independent Bernoulli(p) variables."""
  return np.sqrt(np.clip(p * (1.0 - p), 0.0, None) / num)


def max_abs_z(estimates, exact, stderr):
  """Largest |estimate − exact| / stderr over all moment arrays."""
  return max(
    float(np.max(np.abs(e - x) / s)) for e, x, s in zip(estimates, exact, stderr, strict=True)
  )


def parameter_path(seed: int, n: int, num_steps: int, w_std: float = 1.0):
  """Slowly changing RBMs as in training: a ramp from 0 to a random RBM, plus a wiggle.

  θ_t = (t/T) θ_a + 0.5 sin(2π t/T) θ_b for t = 1..T. Returns (stacked float32 RBM with a leading
  [T] axis, [T] float64 exact log Z).
  """
  ramp = random_rbm(seed, n, n, w_std)
  wiggle = random_rbm(seed + 1, n, n, 0.5 * w_std)
  frac = np.arange(1, num_steps + 1) / num_steps

  def path(a, b):
    shape = (-1,) + (1,) * a.ndim
    return (frac.reshape(shape) * a + 0.5 * np.sin(2 * np.pi * frac).reshape(shape) * b).astype(
      np.float32
    )

  seq = rbm.RBM(*(path(a, b) for a, b in zip(ramp, wiggle, strict=True)))
  exact = np.array([log_z(rbm.RBM(*(x[t] for x in seq))) for t in range(num_steps)])
  return seq, exact


def exact_samples(key, m, num):
  """Exact samples z [num, n1 + n2] of p: z1 from its enumerated marginal, z2 | z1."""
  import jax
  import jax.numpy as jnp

  b1, b2, w = _float64(m)
  z = all_states(len(b1))
  log_p = z @ b1 + np.logaddexp(0.0, b2 + z @ w).sum(1)
  k1, k2 = jax.random.split(key)
  idx = jax.random.categorical(k1, jnp.asarray(log_p, jnp.float32), shape=(num,))
  z1 = jnp.asarray(z, jnp.float32)[idx]
  z2 = jax.random.bernoulli(k2, jax.nn.sigmoid(m.b2 + z1 @ m.w)).astype(jnp.float32)
  return jnp.concatenate([z1, z2], axis=-1)
