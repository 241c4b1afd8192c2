"""The runner's view of the persistent prior sampler: its diagnostic and its tracked log Z.

* ``sampler_diagnostic``: at every evaluation, the persistent population's moment errors against
  fresh population-annealing runs for its own parameters (``dvae_jax.samplers.diagnostics``;
  docs/training.md "Reading the sampler diagnostic"), logged as ``val/sampler_*``.
* ``anchor_log_z``: at every evaluation, the sampler's running log Z replaced by an independent
  estimate for its parameters (``samplers.persistent.reset_log_z``), logging the drift removed.
* ``LogZTracker``: between evaluations, every ``log_z_refresh_every`` steps, the running log Z
  replaced by that of an independent population (``dvae_jax.samplers.log_z_tracking``).
* ``TrainLogZ``: at every logged step, a fresh AIS of the step's prior; the row's log-Z-dependent
  values are re-expressed with it (``objectives.log_z_sensitivity``) and the running log Z
  re-anchored to it.

Gradients never use the running log Z (math.md §2); the reported training terms (log_z, kl,
neg_elbo) do. ``experiment`` is an ``experiments.experiment.Experiment``; ``state`` a
``TrainState``.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dvae_jax import objectives
from dvae_jax import samplers as samplers_lib
from experiments import metrics as metrics_lib
from experiments import sharding

SAMPLER_DIAGNOSTIC_PREFIX = "val/sampler_"
_REFRESH_NAMES = ("refresh_drift", "refreshed", "refresh_stderr", "refresh_stages", "refresh_ess")


def sampler_diagnostic(experiment, sampler_state, key) -> dict[str, float]:
  """``val/sampler_*`` metrics: the persistent population's moment errors (one per moment group of
  the prior, ``<group>_error``: z1, z2, z1z2 for an RBM, unit and edge for a graph prior; pooled:
  ``error``) in units of the noise of as many independent samples, against two fresh anneals for
  the population's
  own parameters (``samplers.diagnostics``), the implied relative bias of the log-Z gradient, the
  anneals' log Z and the seconds taken. Empty without an RBM sampler or with
  ``sampler_diagnostic_replicas = 0``."""
  config = experiment.config
  if experiment.sampler is None or not config.sampler_diagnostic_replicas:
    return {}
  t0 = time.perf_counter()
  out = samplers_lib.diagnostics.state_moment_error(
    key,
    sampler_state,
    num_replicas=config.sampler_diagnostic_replicas,
    num_temperatures=config.sampler_diagnostic_temperatures,
  )
  out = jax.tree.map(lambda v: float(sharding.to_host(v)), out)
  values = {f"{group}_error": v for group, v in out.groups._asdict().items()}
  values["error"] = out.total
  values["grad_relative_bias"] = out.relative_bias
  values["reference_log_z"] = out.reference_log_z
  values["reference_log_z_stderr"] = out.reference_log_z_stderr
  metrics = {SAMPLER_DIAGNOSTIC_PREFIX + k: v for k, v in values.items()}
  metrics[SAMPLER_DIAGNOSTIC_PREFIX + "diagnostic_seconds"] = time.perf_counter() - t0
  return metrics


def sampler_diagnostic_history(workdir: pathlib.Path) -> dict:
  """The ``val/sampler_*`` metrics of every evaluation in ``metrics.jsonl`` as lists, with
  ``steps`` and ``max_error`` (the largest of the four moment errors over the run)."""
  rows = [r for r in metrics_lib.read_metrics(workdir) if SAMPLER_DIAGNOSTIC_PREFIX + "error" in r]
  if not rows:
    return {}
  keys = [k for k in rows[0] if k.startswith(SAMPLER_DIAGNOSTIC_PREFIX)]
  history = {k[len(SAMPLER_DIAGNOSTIC_PREFIX) :]: [r.get(k) for r in rows] for k in keys}
  history["steps"] = [r["step"] for r in rows]
  errors = [k for k in history if k == "error" or k.endswith("_error")]
  history["max_error"] = max(max(history[k]) for k in errors)
  return history


def anchor_log_z(state, diagnostic: dict, key, log_partition: Callable) -> tuple:
  """Re-anchors the sampler's running log Z to an independent estimate for the parameters of its
  population, ``sampler_state.params``: the diagnostic's fresh anneals when it ran, else
  ``log_partition(params, key) -> (log Z, stderr)`` (AIS).

  Not the evaluation's AIS of the prior: the train step updates the prior after sampling, so the
  prior is one step ahead, and anchoring the sampler to it would count that step's log Z change
  twice (0.1–0.2 nats early in the default run). Without re-anchoring the running value, whose
  increments are nearly unbiased but whose lagging population's small mixing biases add up, fell
  ≈ 39 nats below AIS in 20k steps of the default run.

  Returns:
    (state with the sampler's log Z reset, drift = tracked − estimate).
  """
  sampler_state = state.sampler_state
  if SAMPLER_DIAGNOSTIC_PREFIX + "reference_log_z" in diagnostic:
    log_z = diagnostic[SAMPLER_DIAGNOSTIC_PREFIX + "reference_log_z"]
    stderr = diagnostic[SAMPLER_DIAGNOSTIC_PREFIX + "reference_log_z_stderr"]
  else:
    log_z, stderr = log_partition(sampler_state.params, key)
  drift = float(sharding.to_host(sampler_state.log_z)) - log_z
  sampler_state = samplers_lib.persistent.reset_log_z(sampler_state, log_z, stderr)
  return state._replace(sampler_state=sampler_state), drift


def make_log_z_tracking(experiment):
  """Jitted ``(seed, refresh)`` of ``samplers.log_z_tracking`` for the runner, or ``None`` when
  ``log_z_refresh_every`` is 0 or there is no RBM sampler.

  ``seed(key, state) -> tracker`` (replicated); ``refresh(key, tracker, state) -> (tracker, state,
  [drift, new log Z, stderr, stages, smallest ESS])`` donates ``state`` and replaces its sampler's
  log Z by the tracker's.
  """
  config = experiment.config
  if experiment.sampler is None or not config.log_z_refresh_every:
    return None
  replicated = sharding.replicated(experiment.mesh)
  tracking = samplers_lib.log_z_tracking

  def seed(key, state):
    return tracking.seed(key, state.sampler_state, config.log_z_tracker_replicas)

  def refresh(key, tracker, state):
    tracker, sampler_state, drift, info = tracking.refresh(
      key,
      tracker,
      state.sampler_state,
      config.log_z_tracker_sweeps,
      target_ess=config.log_z_tracker_target_ess,
    )
    values = (drift, tracker.log_z, info.log_z_stderr, info.num_stages, info.ess)
    values = jnp.stack([jnp.asarray(v, jnp.float32) for v in values])
    return tracker, state._replace(sampler_state=sampler_state), values

  return (
    jax.jit(seed, out_shardings=replicated),
    jax.jit(
      refresh,
      donate_argnums=(2,),
      out_shardings=(replicated, experiment.state_sharding, replicated),
    ),
  )


class LogZTracker:
  """The training loop's side of ``make_log_z_tracking`` (a no-op when it is ``None``).

  The tracker is seeded at the start and at every checkpoint (``reseed``) from ``fold_in(root,
  step)``, so a resumed run tracks as the uninterrupted one did; the refreshes' drifts wait for the
  next host sync to be written (``write``).
  """

  def __init__(self, experiment, root, start: int, state, *, tracking=None):
    # ``tracking``: make_log_z_tracking's functions when already made (runs sharing one program).
    self._fns = tracking or make_log_z_tracking(experiment)
    self._every = experiment.config.log_z_refresh_every
    self._root = root
    self._drifts = []
    self._tracker = None
    self.reseed(start, state)

  def reseed(self, step: int, state) -> None:
    if self._fns:
      self._tracker = self._fns[0](jax.random.fold_in(self._root, step), state)

  def refresh(self, step: int, state, is_eval: bool):
    """The state with its sampler's log Z refreshed at the steps due (not at evaluations, which
    re-anchor it themselves)."""
    if self._fns and step % self._every == 0 and not is_eval:
      key = jax.random.fold_in(self._root, step)
      self._tracker, state, drift = self._fns[1](key, self._tracker, state)
      self._drifts.append((step, drift))
    return state

  def write(self, writer: metrics_lib.MetricsWriter) -> None:
    """Writes the pending refreshes as ``sampler/log_z_refresh_*`` rows (waits for them)."""
    for at, values in self._drifts:
      values = sharding.to_host(values).tolist()
      writer.write(
        at, {f"sampler/log_z_{k}": v for k, v in zip(_REFRESH_NAMES, values, strict=True)}
      )
    self._drifts = []


def shift_log_z(row: dict[str, float], delta: float) -> dict[str, float]:
  """A train step's metrics row as if its log Z had been ``delta`` higher: each value that depends
  on it moves by ``objectives.log_z_sensitivity(κ)`` × delta (κ = the row's ``kappa``)."""
  sensitivity = objectives.log_z_sensitivity(row["kappa"])
  names = {"loss": "loss", **{f"terms/{k}": k for k in sensitivity if k != "loss"}}
  return {k: v + sensitivity[names[k]] * delta if k in names else v for k, v in row.items()}


class TrainLogZ:
  """The reported training log Z at every logged step: a fresh AIS estimate (a no-op without a
  prior sampler or with ``train_ais_num_chains = 0``).

  Why. What users read as the training loss, KL and ELBO (metrics.jsonl, TensorBoard, the progress
  bar) contains log Z. The running estimate (``persistent``, the tracker) carries the error it
  accumulated since its last anchor: ± 0.6 nats between evaluations with the tracker, several
  nats without. A fresh AIS carries no history: each logged value is an independent estimate
  with its own standard error (``terms/log_z_stderr``), for every sweep budget alike, at the
  cost of one AIS per ``log_every`` steps (docs/training.md "The training log Z").

  The estimate is for ``sampler_state.params``, the parameters the step's loss used (the train
  step updates the prior after sampling). ``anchor`` re-expresses the row (``shift_log_z``), adds
  ``sampler/log_z_ais_drift`` (the step's value − the fresh one: what was removed) and
  re-anchors the sampler's running log Z (``persistent.reset_log_z``); the caller reseeds the
  tracker, if any, from that state. Values only: the trajectory does not depend on them.
  """

  def __init__(self, experiment, root):
    config = experiment.config
    self._enabled = experiment.sampler is not None and config.train_ais_num_chains > 0
    self._chains = config.train_ais_num_chains
    self._temperatures = config.train_ais_num_temperatures
    self._root = root

  @property
  def enabled(self) -> bool:
    return self._enabled

  def estimate(self, step: int, prior):
    """The AIS estimate (``samplers.AISResult``, on device) of ``prior``'s log Z at ``step``."""
    return samplers_lib.ais_log_partition(
      jax.random.fold_in(self._root, step),
      prior,
      num_chains=self._chains,
      num_temperatures=self._temperatures,
    )

  def anchor(self, step: int, state, row: dict[str, float]) -> tuple:
    """(state with the sampler's log Z re-anchored, the row re-expressed); unchanged when off."""
    if not self._enabled:
      return state, row
    result = self.estimate(step, state.sampler_state.params)
    log_z = float(sharding.to_host(result.log_z))
    stderr = float(sharding.to_host(result.stderr))
    delta = log_z - row["terms/log_z"]
    row = {
      **shift_log_z(row, delta),
      "terms/log_z_stderr": stderr,
      "sampler/log_z_ais_drift": -delta,
    }
    sampler_state = samplers_lib.persistent.reset_log_z(state.sampler_state, log_z, stderr)
    return state._replace(sampler_state=sampler_state), row
