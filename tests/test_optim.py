"""dvae_jax.optim against the TF1 Adam update rule written out in float64 NumPy."""

import numpy as np
import optax
import pytest

from dvae_jax import optim


def tf1_adam_reference(grads, lr, b1, b2, eps, theta0):
  """tf.train.AdamOptimizer's documented update, step by step, in float64."""
  theta, m, v = theta0.astype(np.float64), 0.0 * theta0, 0.0 * theta0
  out = []
  for t, g in enumerate(grads, start=1):
    lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    theta = theta - lr_t * m / (np.sqrt(v) + eps)
    out.append(theta.copy())
  return out


def run(tx, grads, theta0):
  theta = theta0.astype(np.float32)
  state = tx.init(theta)
  out = []
  for g in grads:
    updates, state = tx.update(np.asarray(g, np.float32), state, theta)
    theta = optax.apply_updates(theta, updates)
    out.append(np.asarray(theta, np.float64))
  return out


@pytest.mark.parametrize("eps", [1e-3, 1e-8])
def test_tf1_mode_matches_the_tf1_update_rule(eps):
  rng = np.random.default_rng(0)
  # Gradients spanning small (ε-dominated) and large magnitudes.
  grads = [rng.normal(size=6) * np.array([1e-4, 1e-3, 1e-2, 0.1, 1, 10]) for _ in range(12)]
  theta0 = rng.normal(size=6)
  ours = run(optim.adam(3e-3, eps=eps, eps_mode="tf1"), grads, theta0)
  ref = tf1_adam_reference(grads, 3e-3, 0.9, 0.999, eps, theta0)
  for a, b in zip(ours, ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_optax_mode_is_optax_adam_and_differs_from_tf1_early():
  rng = np.random.default_rng(1)
  grads = [rng.normal(size=4) * 1e-3 for _ in range(3)]
  theta0 = np.zeros(4)
  ours = run(optim.adam(3e-3, eps=1e-3, eps_mode="optax"), grads, theta0)
  plain = run(optax.adam(3e-3, eps=1e-3), grads, theta0)
  for a, b in zip(ours, plain, strict=True):
    np.testing.assert_array_equal(a, b)
  tf1 = run(optim.adam(3e-3, eps=1e-3, eps_mode="tf1"), grads, theta0)
  # At t = 1 TF1's effective ε is 31.6× larger: with |g| ≈ 1e-3 ≈ ε the first step is much smaller.
  assert np.all(np.abs(tf1[0]) < 0.2 * np.abs(ours[0]))


def test_invalid_eps_mode_is_refused():
  with pytest.raises(ValueError, match="eps_mode 'tf2'.*optax, tf1"):
    optim.adam(1e-3, eps_mode="tf2")
