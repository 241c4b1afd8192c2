"""Small numerically careful helpers shared across the library.

* ``log_mean_exp``: log (1/S) Σ_s e^{a_s}, the log of an importance-sampling mean (the IW bound of
  math.md §4, the log-Z increments of math.md §3).
* ``log_mean_exp_stderr``: the same with its delta-method standard error (math.md §3: AIS and the
  population-annealing groups).
* ``log1mexp``: log(1 − e^t) for t < 0 (tails of the smoothings' CDFs, math.md §1; the shifted
  Gaussian mixture of the Gaussian integral, math.md §4).
* ``chunk_states``: a chunk of the binary states 0 … 2^n − 1 (exact enumeration of small Boltzmann
  machines, math.md §2).
* ``kahan_add``: one step of compensated summation (the running log weights of AIS and the running
  log Z of population annealing and of the persistent samplers, math.md §3).

All functions are elementwise or reduce along one axis, shape-polymorphic and jit/vmap/grad-safe.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

# Where log(1 − e^t) switches from log(−expm1(t)) (t near 0) to log1p(−e^t) (t far below 0): both
# are accurate to a few ulps on their side of −log 2 (Mächler 2012, "Accurately computing
# log(1 − exp(−|a|))").
_LOG1MEXP_SWITCH = -math.log(2.0)


def log_mean_exp(log_w: Array, axis: int = 0) -> Array:
  """log (1/S) Σ_s exp(log_w_s) along ``axis`` (S = ``log_w.shape[axis]``), by logsumexp.

  Args:
    log_w: [..., S, ...] log weights.
    axis: the axis of the S samples.

  Returns:
    ``log_w`` with ``axis`` reduced.
  """
  return jax.nn.logsumexp(log_w, axis=axis) - math.log(log_w.shape[axis])


def log_mean_exp_stderr(log_w: Array, axis: int = -1) -> tuple[Array, Array]:
  """(log mean_s w_s, its delta-method standard error) along ``axis`` (math.md §3).

  With w̄ the mean of the S weights w_s = exp(log_w_s), stderr(log w̄) ≈ std_s(w)/(√S w̄), std with
  S − 1 degrees of freedom, computed from the ratios w_s / w̄ (never from e^{log_w} itself, which
  overflows). A single weight has no error bar: stderr is NaN for S = 1.

  Args:
    log_w: [..., S, ...] log weights of S independent samples.
    axis: the axis of the S samples.

  Returns:
    ``(log_mean, stderr)``, each ``log_w`` with ``axis`` reduced.
  """
  num = log_w.shape[axis]
  log_mean = log_mean_exp(log_w, axis=axis)
  if num < 2:
    return log_mean, jnp.full_like(log_mean, jnp.nan)
  ratio = jnp.exp(log_w - jnp.expand_dims(log_mean, axis))  # w_s / w̄, mean 1
  var = jnp.sum((ratio - 1.0) ** 2, axis=axis) / (num - 1)
  return log_mean, jnp.sqrt(var / num)


def log1mexp(t: Array) -> Array:
  """log(1 − e^t) for t < 0, accurate at both ends and with finite gradients everywhere.

  t ≥ 0 is clamped to −finfo.tiny (so the result stays finite: log(1 − e^{−tiny}) ≈ log tiny). Each
  branch sees a harmless stand-in for the inputs of the other branch, so no inf/NaN reaches the
  unselected side of ``jnp.where`` (and hence no NaN gradient).
  """
  t = jnp.minimum(t, -jnp.finfo(jnp.result_type(t)).tiny)
  near = t > _LOG1MEXP_SWITCH
  t_near = jnp.where(near, t, -1.0)
  t_far = jnp.where(near, -1.0, t)
  return jnp.where(near, jnp.log(-jnp.expm1(t_near)), jnp.log1p(-jnp.exp(t_far)))


def kahan_add(total: Array, compensation: Array, x: Array) -> tuple[Array, Array]:
  """Compensated (Kahan) summation step: returns (total + x, new compensation), elementwise.

  Why: the samplers add ~10^3–10^6 increments of 10^-3–10^-1 onto sums of order |log Z| ≈ 100,
  where plain float32 summation drifts by 10^-4–10^-3 nats.
  """
  y = x - compensation
  t = total + y
  return t, (t - total) - y


def chunk_states(chunk_index: Array, chunk_size: int, n: int, dtype) -> Array:
  """[chunk_size, n] states: the bits of the integers chunk_index·chunk_size + [0, chunk_size)."""
  idx = chunk_index * chunk_size + jnp.arange(chunk_size, dtype=jnp.int32)
  return ((idx[:, None] >> jnp.arange(n, dtype=jnp.int32)) & 1).astype(dtype)
