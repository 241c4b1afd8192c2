"""An honest training log Z: an independent population re-anchors the training sampler's running
log Z every few steps (math.md §2–§3).

Why. The persistent sampler (`persistent`) updates its log Z by reweighting its own population when
the parameters move from θ_t to θ_{t+1}. But θ_{t+1} − θ_t was computed from that very population
(the surrogate gradient of math.md §2): the update lowers the model probability of the population's
current fluctuation, and the population still remembers it after the decorrelation sweeps, so every
increment is biased low by ≈ Δθ · (correlated part of the sample mean's error). Tiny per step,
it adds up: −3.7 to −7.1 nats per 5k steps of the default run (40 sweeps), −8 nats in 2,500 steps
with 4 sweeps. More sweeps shrink the correlation but never remove it.

How. A second, smaller population (`num_replicas`, by default 512) follows the same parameter path
but is never used for a gradient, so the parameter changes do not depend on its samples. Every N
training steps `refresh` moves it from the parameters it holds to the training sampler's current
ones by persistent population annealing (`persistent_pa.step`: adaptive stages in parameter
space, resampling, sweeps) and copies its log Z, compensation and variance into the training
sampler's state. Its increments are those of sequential Monte Carlo along a path fixed in advance
(from its point of view), whose Ẑ is unbiased whatever the mixing. Its log, though, is biased low
by about half its variance, and that variance is the reported one (`log_z_variance`, Σ over stages
of 1/ESS − 1/R, which assumes independent replicas: independent trackers along a 2,500-step path
spread 1.2–1.8× it) only while the sweeps keep the resampled population diverse. With 40 sweeps per
refresh the default run's tracker read −0.44 and −0.72 nats at steps 2,500 and 5,000 (reported
stderr 0.10); with 100, +0.21 and −0.12; with 200 (the default), −0.62 to +0.31 (28 of 32 within
± 0.3) at the evaluations of the default run with 40, 10 and 4 sweeps per step and 4 with the
Rao-Blackwellised gradient (docs/results.md "The training log Z"). What remains is that variance
and the error of its start.
Between refreshes the training sampler's own increments drift by at most N steps' worth.

`seed` starts a tracker from R replicas of the training population, with its log Z; the runner
seeds at the start, at each evaluation (after the AIS anchoring) and at each checkpoint, so a
resumed run tracks exactly as the uninterrupted one. The first increment after a seed shares the
training population's correlation for one step only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dvae_jax.samplers import persistent_pa
from dvae_jax.samplers.persistent import PersistentInfo, PersistentState

Array = jax.Array


def seed(key: Array, state: PersistentState, num_replicas: int = 512) -> PersistentState:
  """A tracker: `num_replicas` replicas of state's population drawn uniformly (without replacement
  when possible), with state's log Z, compensation, variance and params.

  Args:
    key: PRNG key.
    state: the training sampler's PersistentState (z [S, n]).
    num_replicas: R.

  Returns:
    PersistentState with z [R, n].
  """
  if num_replicas < 1:
    raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
  num = state.z.shape[0]
  idx = jax.random.choice(key, num, (num_replicas,), replace=num_replicas > num)
  return state._replace(z=state.z[idx])


def refresh(
  key: Array,
  tracker: PersistentState,
  state: PersistentState,
  num_sweeps: int = 200,
  target_ess: float = 0.99,
  **options,
) -> tuple[PersistentState, PersistentState, Array, PersistentInfo]:
  """Moves the tracker to state.params and gives the training state the tracker's log Z.

  Args:
    key: PRNG key.
    tracker: from `seed` (or a previous `refresh`).
    state: the training sampler's PersistentState (its params are where the tracker goes).
    num_sweeps: sweeps of the tracker's `persistent_pa.step` (half before the reweighting).
    target_ess: ESS fraction below which the change is split into stages (each resamples and
      sweeps once). On the default run's paths (2,500 steps, 512 replicas, 96–176 replays each,
      docs/results.md) 0.9 spread 0.21–0.26 nats (reported 0.17, |error| > 0.5 in 9 of 96) and 0.99
      spread 0.16–0.17 (reported 0.094, none of 96 beyond 0.5) for 3× the stages (≈ +6 sweeps
      per refresh): finer stages help, less than the reported variance says (stages one sweep
      apart share their replicas). Hence the default 0.99. The value never reaches a gradient:
      the importance weights are computed without log Z (``objectives.iw_loss``).
    **options: further options of `persistent_pa.step` (max_stages, ...).

  Returns:
    (tracker at state.params, state with the tracker's log_z, log_z_compensation and
    log_z_variance, drift = the training state's log Z − the tracker's: what the refresh removed,
    the tracker step's PersistentInfo: stages, smallest ESS, stderr).
  """
  tracker, info = persistent_pa.step(
    key, tracker, state.params, num_sweeps=num_sweeps, target_ess=target_ess, **options
  )
  drift = state.log_z - tracker.log_z
  state = state._replace(
    log_z=tracker.log_z,
    log_z_compensation=tracker.log_z_compensation,
    log_z_variance=tracker.log_z_variance,
  )
  return tracker, state, drift.astype(jnp.result_type(state.log_z)), info
