"""Optimiser pieces in optax's (init, update) form (math.md §6).

The papers' reference code trained with TensorFlow 1's ``tf.train.AdamOptimizer``, which folds both
bias corrections into the step size and adds ε to the *uncorrected* √v:

  lr_t = lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ),    θ ← θ − lr_t · m_t / (√v_t + ε).

Written with the bias-corrected moments m̂ = m/(1 − β₁ᵗ) and v̂ = v/(1 − β₂ᵗ) this is
lr · m̂ / (√v̂ + ε/√(1 − β₂ᵗ)): optax's Adam with an effective ε that is larger by 1/√(1 − β₂ᵗ)
(31.6× at t = 1, 10× at t = 10, 1.26× at t = 1000, → 1). With the papers' ε = 1e-3 the difference
matters early in training, where √v̂ is small. :func:`scale_by_tf1_adam` is that rule;
:func:`adam` picks optax's or TF1's placement of ε.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

EPS_MODES = ("optax", "tf1")


def scale_by_tf1_adam(
  b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
  """Adam's direction with ε added before the second-moment bias correction (TF1's rule).

  The state is optax's ``ScaleByAdamState`` (count, mu, nu), so checkpoints and tree utilities
  treat it like ``optax.scale_by_adam``'s. Chain with ``optax.scale_by_learning_rate``.
  """

  def init_fn(params):
    return optax.ScaleByAdamState(
      count=jnp.zeros([], jnp.int32),
      mu=optax.tree.zeros_like(params),
      nu=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree_utils.tree_update_moment(updates, state.mu, b1, 1)
    nu = optax.tree_utils.tree_update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    mu_hat = optax.tree_utils.tree_bias_correction(mu, b1, count)
    # √(1 − β₂ᵗ) multiplies m̂/(√v + ε): the bias correction of v applied after ε is added.
    v_correction = jnp.sqrt(1.0 - b2 ** count.astype(jnp.float32))
    updates = jax.tree.map(
      lambda m, v: (v_correction * m / (jnp.sqrt(v) + eps)).astype(m.dtype), mu_hat, nu
    )
    return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def adam(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_mode: str = "optax",
) -> optax.GradientTransformation:
  """Adam with ε placed as optax does (``'optax'``: ``optax.adam`` itself) or as TF1 did
  (``'tf1'``: :func:`scale_by_tf1_adam`, the reference implementation's optimiser)."""
  if eps_mode == "optax":
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  if eps_mode == "tf1":
    return optax.chain(
      scale_by_tf1_adam(b1=b1, b2=b2, eps=eps), optax.scale_by_learning_rate(learning_rate)
    )
  raise ValueError(f"invalid eps_mode {eps_mode!r}; valid values: {', '.join(EPS_MODES)}")
