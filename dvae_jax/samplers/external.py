"""A training-time prior sampler whose samples come from outside JAX: a dimod sampler, a quantum
annealer, any function of the machine's parameters that returns states (math.md §2–§3).

  sampler = external.prior_sampler(1000, draw)   # draw(seed, m) -> [S, n] states in {0, 1}
  state = sampler.init(key, m)                   # PersistentState, as `pcd` and `persistent_pa`
  state, info = sampler.step(key, state, m)      # inside jit: draw runs on the host

Each `step` first moves the running log Z from the parameters the held samples were drawn at to m
(`persistent.reweight`, PCD's bookkeeping), then replaces the samples by S fresh ones of m from
`draw`, called through `jax.pure_callback` with a seed drawn from `key` (so a seeded sampler
repeats a run exactly) and m with NumPy leaves. The surrogate gradient of log Z then uses those
samples like any other population's (math.md §2): it is as right as the samples are Boltzmann at
β = 1. A sampler that is not (simulated annealing at its default schedule is an optimiser) gives a
biased gradient and a biased running log Z; the runner's sampler diagnostic (moment error of the
held samples against fresh population annealing, `diagnostics`) measures the first at every
evaluation, and its log Z tracker (`log_z_tracking`, its own Gibbs population) replaces the second
every `log_z_refresh_every` steps. Even exact reads bias the running log Z low in training: the
reads reweighted at a step also gave the gradient that moved the parameters (`persistent`, "Order
of a step"; PCD's decorrelation sweeps have no counterpart here), which the tracker corrects too.
Along a path fixed in advance (tests) the increments are unbiased.

The state is the same pytree as the other kinds' (checkpoints are interchangeable); there are no
sweeps. `draw` must return at least S states, in the prior's unit order (an RBM: z1 then z2; a
graph machine: its node order); the first S are used. One device only: the callback draws the
whole population.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dvae_jax.samplers import persistent
from dvae_jax.samplers.persistent import Machine, PersistentInfo, PersistentState, PriorSampler

Array = jax.Array
Draw = Callable[[int, Machine], np.ndarray]


def _host_draw(draw: Draw, num_samples: int, num_units: int, seed, m) -> np.ndarray:
  """``draw(int(seed), m)`` checked and cut to [S, n] uint8 (a clear error for a wrong shape).

  The callback's arguments arrive as jax.Arrays (JAX >= 0.10 places them on the CPU device), and
  a NumPy function given one may call back into JAX (``np.any(x)`` is ``x.any()``, a jitted
  reduction). Dispatching JAX work from inside a callback deadlocks once the runner has enqueued
  enough steps to fill XLA's in-flight limit: the callback's computation waits for a slot held by
  the very steps that wait for the callback (seen: a simulated-annealing run hung before step 100
  with log_every = 100). So ``draw`` gets NumPy leaves, as its contract says, and never JAX."""
  seed, m = int(np.asarray(seed)), jax.tree.map(np.asarray, m)
  states = np.asarray(draw(seed, m))
  if states.ndim != 2 or states.shape[1] != num_units or states.shape[0] < num_samples:
    raise ValueError(
      f"the external sampler returned states of shape {states.shape}; need [>= {num_samples}, "
      f"{num_units}] (S = num_samples states of the machine's {num_units} units)"
    )
  if not np.isin(states, (0, 1)).all():
    raise ValueError("the external sampler returned values other than 0 and 1")
  return states[:num_samples].astype(np.uint8)


def step(
  key: Array, state: PersistentState, m: Machine, *, draw: Draw
) -> tuple[PersistentState, PersistentInfo]:
  """Reweights the running log Z to m, then draws S fresh states of m through ``draw``.

  Args:
    key: PRNG key (the draw's seed is ``jax.random.randint(key, (), 0, 2**31 - 1)``).
    state: PersistentState with z [S, n].
    m: the new parameters (a prior: an RBM, a graph machine, ...).
    draw: host function ``(seed: int, m with NumPy leaves) -> [>= S, n]`` states in {0, 1}.

  Returns:
    (new PersistentState with params = m and the fresh states, PersistentInfo of the reweighting).
  """
  persistent.check_state(state, m)
  state, info = persistent.reweight(state, m)
  num, n = state.z.shape[0], m.num_units
  seed = jax.random.randint(key, (), 0, 2**31 - 1)
  states = jax.pure_callback(
    functools.partial(_host_draw, draw, num, n),
    jax.ShapeDtypeStruct((num, n), jnp.uint8),
    seed,
    m,
    vmap_method="sequential",
  )
  return state._replace(z=states.astype(state.z.dtype)), info


def prior_sampler(num_samples: int, draw: Draw) -> PriorSampler:
  """PriorSampler(init, step) drawing through ``draw``; init is the exact zero-parameter state moved
  to m by one step (exact log Z for m = 0, the start of training)."""
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if not callable(draw):
    raise TypeError(f"draw must be a function (seed, machine) -> states, got {type(draw)}")
  kernel = functools.partial(step, draw=draw)
  return PriorSampler(init=persistent.init_fn(kernel, num_samples), step=kernel)
