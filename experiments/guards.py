"""The NaN guard and the divergence guard: stop a run whose values no healthy run produces.

The NaN guard (``check_pending``, ``NonFiniteLossError``) catches non-finite values; a diverging
run can stay finite
(``learning_rate=1e6`` reached a training loss of −1.5e9 and log Z 3.8e8 nats and, unguarded,
reported a "test NLL" of 3.8e8). Three limits, each a config key:

* ``guard_max_nats``: |training loss|, |−ELBO|, |−IW bound| and the validation NLL / −ELBO, in nats
  per example. A 784-pixel Bernoulli model with every pixel at probability ½ has NLL 784·log 2 ≈
  543 nats; every sane model is far below that, and the discrete NLL is never negative.
* ``guard_max_log_z``: |log Z| of the RBM prior, as tracked by the sampler and as estimated by AIS
  at evaluation (n·log 2 ≈ 139 nats for the zero RBM on 200 units).
* ``guard_max_grad_norm`` for ``guard_grad_norm_steps`` consecutive steps: the global gradient
  norm. A single large gradient is harmless under Adam; a run of them is not.

The per-step test runs on the device inside the jitted step (``step_flags``: one int32 of flag
bits); the host reads it with the NaN guard's ``finite`` flag, only at the steps where it syncs
anyway (log / checkpoint / evaluation), so the guard adds no host sync. Fused steps return both
flags for each of their steps, so the guards name the first bad step inside a dispatch. The
limits and the healthy values they were checked against are in docs/reliability.md and
benchmarks/healthy_ranges.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Training metrics bounded by guard_max_nats / guard_max_log_z (those present are checked).
NATS_KEYS = ("loss", "terms/neg_elbo", "terms/neg_iw_bound")
LOG_Z_KEYS = ("terms/log_z", "sampler/log_z")
# Evaluation values, checked on the host when they are computed.
EVAL_NATS_KEYS = ("val/nll", "val/neg_elbo")
EVAL_LOG_Z_KEYS = ("val/log_z",)

OUT_OF_BOUNDS = 1  # flag bits of `step_flags`
GRAD_NORM_OVER = 2


# Per-step flags of the train step's metrics, read by the guards and never logged.
FLAG_KEYS = ("finite", "guard")


class DivergenceError(FloatingPointError):
  """A run left the range of healthy values; the message names the step, the term and its value."""


class NonFiniteLossError(FloatingPointError):
  """A train step produced a NaN or inf; the message names the step and the offending terms."""


def raise_non_finite(step: int, metrics_host: Mapping[str, np.ndarray]) -> None:
  """Raises NonFiniteLossError naming the step and the non-finite terms of ``metrics_host``."""
  bad = [k for k, v in metrics_host.items() if k not in FLAG_KEYS and not np.all(np.isfinite(v))]
  named = ", ".join(f"{k}={np.asarray(metrics_host[k]).item()}" for k in bad) or "(none named)"
  raise NonFiniteLossError(
    f"non-finite value at training step {step}: {named}. Training stopped; the last good "
    "checkpoint is kept."
  )


def check_pending(pending: list[tuple[int, dict]], guard: DivergenceGuard) -> None:
  """Raises NonFiniteLossError / DivergenceError for the first step holding a non-finite value
  (its ``finite`` flag) / a diverged one (``guard.observe``).

  Args:
    pending: ``(done, metrics)`` of each dispatch of train steps since the last check, in order:
      ``metrics`` maps names to [n] device arrays, row ``i`` for step ``done - n + 1 + i`` (fused
      steps, ``train_step.make_fused_steps``). Only the flags are fetched, one array each per
      dispatch; the values only for a flagged step.
    guard: the run's divergence guard.
  """
  for done, metrics in pending:
    finite = np.asarray(guard.to_host(metrics["finite"]))
    flags = np.asarray(guard.to_host(metrics["guard"]))
    first = done - finite.shape[0] + 1
    values = None
    for i in range(finite.shape[0]):
      step_metrics = {"guard": flags[i]}
      if not finite[i] or flags[i]:
        if values is None:
          values = {k: np.asarray(guard.to_host(v)) for k, v in metrics.items()}
        step_metrics = {k: v[i] for k, v in values.items()}
      if not finite[i]:
        raise_non_finite(first + i, step_metrics)
      guard.observe(first + i, step_metrics)


def _limits(config) -> dict[str, float]:
  return {
    **{k: float(config.guard_max_nats) for k in NATS_KEYS + EVAL_NATS_KEYS},
    **{k: float(config.guard_max_log_z) for k in LOG_Z_KEYS + EVAL_LOG_Z_KEYS},
  }


def _limit_key(name: str) -> str:
  return "guard_max_log_z" if name in LOG_Z_KEYS + EVAL_LOG_Z_KEYS else "guard_max_nats"


def step_flags(metrics: Mapping[str, jax.Array], config) -> jax.Array:
  """[] int32 flag bits of one training step, computed on the device (inside the jitted step).

  ``OUT_OF_BOUNDS``: a finite value of ``NATS_KEYS`` / ``LOG_Z_KEYS`` beyond its limit.
  ``GRAD_NORM_OVER``: ``grad_norm`` above ``guard_max_grad_norm``. Non-finite values set no bit:
  they are the NaN guard's.
  """
  limits = _limits(config)
  out = jnp.zeros((), bool)
  for name in NATS_KEYS + LOG_Z_KEYS:
    if name in metrics:
      value = jnp.abs(metrics[name])
      out = out | (jnp.isfinite(value) & (value > limits[name]))
  over = metrics["grad_norm"] > config.guard_max_grad_norm
  return out.astype(jnp.int32) * OUT_OF_BOUNDS + over.astype(jnp.int32) * GRAD_NORM_OVER


class DivergenceGuard:
  """Host side of the guard: reads the flags of the steps since the last sync, in order.

  Args:
    config: the run's resolved config (the ``guard_*`` keys and ``learning_rate``).
    last_checkpoint: returns the step of the newest checkpoint (None: none yet), for the message.
    to_host: fetches a device value to the host (``sharding.to_host``).
  """

  def __init__(self, config, last_checkpoint: Callable[[], int | None], to_host=np.asarray):
    self._config = config
    self._limits = _limits(config)
    self._last_checkpoint = last_checkpoint
    self.to_host = to_host
    self._streak_start: int | None = None  # first step of the current run of large gradients

  @property
  def clean(self) -> bool:
    """No run of large gradients is open: the state may be checkpointed as a good one.

    Checkpoints wait while a run is open, so a checkpoint never holds a state inside one and a
    resumed run starts counting from zero exactly as the uninterrupted run did.
    """
    return self._streak_start is None

  def observe(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
    """Checks the device flags of training step ``step``; raises DivergenceError if it diverged."""
    flags = int(self.to_host(metrics["guard"]))
    if flags & OUT_OF_BOUNDS:
      values = {k: float(self.to_host(metrics[k])) for k in NATS_KEYS + LOG_Z_KEYS if k in metrics}
      self._raise(step, {k: v for k, v in values.items() if abs(v) > self._limits[k]})
    if not flags & GRAD_NORM_OVER:
      self._streak_start = None
      return
    if self._streak_start is None:
      self._streak_start = step
    if step - self._streak_start + 1 >= self._config.guard_grad_norm_steps:
      norm = float(self.to_host(metrics["grad_norm"]))
      limit = self._config.guard_max_grad_norm
      self._stop(
        step,
        f"grad_norm = {norm:.4g} exceeded guard_max_grad_norm = {limit:g}"
        f" at each of the {step - self._streak_start + 1} steps {self._streak_start}..{step}"
        f" (guard_grad_norm_steps = {self._config.guard_grad_norm_steps})",
        "guard_max_grad_norm",
      )

  def check_evaluation(self, step: int, values: Mapping[str, float]) -> None:
    """Checks the evaluation values (``EVAL_NATS_KEYS``, ``EVAL_LOG_Z_KEYS``) of step ``step``."""
    bad = {
      k: v
      for k, v in values.items()
      if k in self._limits and not (math.isfinite(v) and abs(v) <= self._limits[k])
    }
    if bad:
      self._raise(step, bad)

  def _raise(self, step: int, bad: Mapping[str, float]) -> None:
    terms = "; ".join(
      f"{k} = {v:.4g} is outside ±{self._limits[k]:g} ({_limit_key(k)})" for k, v in bad.items()
    )
    self._stop(step, terms, _limit_key(next(iter(bad))))

  def _stop(self, step: int, what: str, key: str) -> None:
    last = self._last_checkpoint()
    kept = (
      f"the last good checkpoint (step {last}) is kept"
      if last is not None
      else "no checkpoint had been written yet"
    )
    raise DivergenceError(
      f"training diverged at step {step}: {what}. No healthy run produces such values. Training "
      f"stopped; {kept}. Lower learning_rate (now {self._config.learning_rate:g}) and start in a "
      f"new workdir; if the values are expected, run the same command with --config.{key}=VALUE "
      "(a higher limit) to resume."
    )
