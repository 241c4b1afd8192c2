"""Chromatic block Gibbs sampling of a graph Boltzmann machine at inverse temperature β.

The nodes of one colour of a proper colouring are conditionally independent given the others, so
one sweep visits the colours c = 0, …, C−1 in order and redraws all units of colour c at once,

  z_c ~ Bernoulli(σ(β h_c)),   h_i = b_i + Σ_{j ∈ N(i)} w_ij z_j,

which leaves p_β(z) ∝ exp(−β E(z)) invariant (each half-step is an exact conditional draw). For a
bipartite graph (an RBM, Chimera) this is the two-sided block Gibbs sweep of ``samplers.gibbs``.

Layout: inside a sweep the chains are held transposed, [n + 1, S] (unit-major, a zero pad unit
last), with the units sorted by colour, so that each colour is a contiguous block of rows that is
overwritten in place and a neighbour lookup copies a whole row of S chains. The field of colour c
is either a gather of the neighbours' rows from a padded [n_c, d_c] table and a weighted sum (cost
S · n_c · d_c, for sparse graphs) or, when the colour's neighbourhoods are dense (d_c > n / 8, e.g.
an RBM), a [n_c, n + 1] × [n + 1, S] matmul with the couplings scattered into a dense block
(``layout='auto'``; ``'sparse'`` or ``'dense'`` force one for every colour). Both compute the same
field. ``run`` sorts and transposes once for all its sweeps.

The draw (``_bernoulli_blocks``) of logits [n_c, S] gives exactly the states that
``samplers.gibbs.bernoulli_logits`` gives the chains in their own layout [S, n_c] (the same
Threefry-2x32 words, top 24 bits against σ(βh)·2^24) but computes them differently: JAX lowers its
``threefry2x32`` primitive on CPU to a rolled ``while`` loop over the 5 key injections, which XLA
cannot fuse with the field and the comparison; here the hash is written out in ``jnp``
(``_threefry2x32``) so that it fuses, and the two words of chain j's counter i decide its units i
and n_c/2 + i, two row blocks written into the chains in place. Each chain's bits come from its own
counters, so chains split over devices are drawn without communication. A draw alone costs the
same as JAX's (≈ 2.7 ns per unit, load 6.5), but inside the sweep's scan this made sweeps 2.5–3.3×
faster (interleaved timing, BUILD_NOTES); the random bits are still most of a sparse sweep
(Chimera: ≈ 85%).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dvae_jax.graphs import machine as machine_lib
from dvae_jax.samplers import gibbs as rbm_gibbs

Array = jax.Array
BoltzmannMachine = Any  # priors.graph.BoltzmannMachine (b [n], w [E], graph)


# With layout='auto', a colour whose largest degree exceeds this fraction of n uses the dense block.
_DENSE_FRACTION = 1 / 8
LAYOUTS = ("auto", "sparse", "dense")


@functools.lru_cache(maxsize=64)
def _sorted_tables(g: machine_lib.Graph) -> tuple[tuple[int, int, np.ndarray, np.ndarray], ...]:
  """Per colour: (start, end, neighbours [n_c, d] in colour-sorted indices (pad n), edge ids)."""
  inverse = np.empty(g.num_nodes + 1, np.int32)
  inverse[g.order] = np.arange(g.num_nodes, dtype=np.int32)
  inverse[g.num_nodes] = g.num_nodes  # the zero pad unit stays last
  tables = []
  for c in range(g.num_colours):
    s, e = g.starts[c], g.starts[c + 1]
    nodes = g.order[s:e]
    d = max(int(g.degree[nodes].max()), 1)  # this colour's own maximum degree
    tables.append((s, e, inverse[g.neighbours[nodes, :d]], g.edge_ids[nodes, :d]))
  return tuple(tables)


# Threefry-2x32's rotation constants (two alternating groups of four rounds) and key-schedule
# parity: Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC 2011), as in JAX.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = 0x1BD11BDA


def _threefry2x32(key_words: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
  """Threefry-2x32 with 20 rounds of uint32 counters (x0, x1) under key (k0, k1): the words of
  ``jax.extend.random.threefry2x32_p``, bit for bit, as element-wise ops that XLA can fuse."""
  k0, k1 = key_words[0], key_words[1]
  ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(_KEY_PARITY))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for g in range(5):  # 5 groups of 4 rounds, a key injection after each
    for r in _ROTATIONS[g % 2]:
      x0 = x0 + x1
      x1 = ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))) ^ x0
    x0, x1 = x0 + ks[(g + 1) % 3], x1 + ks[(g + 2) % 3] + jnp.uint32(g + 1)
  return x0, x1


def _bernoulli_blocks(key: Array, logits: Array) -> tuple[tuple[int, Array], ...]:
  """The draw of logits [n_c, S] as row blocks ((row offset, states), ...) that together are
  ``samplers.gibbs.bernoulli_logits(key, logits.T).T`` (the draw of the chains in their [S, n_c]
  layout), with the hash fused into the comparison (module docstring). Non-threefry keys go to that
  function (one block)."""
  if jax.random.key_impl(key) != "threefry2x32":
    return ((0, rbm_gibbs.bernoulli_logits(key, logits.T).T),)
  n, s = logits.shape
  # samplers.gibbs.random_bits on [S, n_c]: chain j's counters are j·half + i, and the two words of
  # counter (j, i) decide units i and half + i of that chain. Each chain's bits depend on its own
  # counters only, so chains split over devices are drawn where they live (pairing chains j and
  # S/2 + j instead made XLA exchange the words between devices at every colour of every sweep).
  half = (n + 1) // 2
  chain = lax.broadcasted_iota(jnp.uint32, (half, s), 1)
  counter = chain * jnp.uint32(half) + lax.broadcasted_iota(jnp.uint32, (half, s), 0)
  y0, y1 = _threefry2x32(jax.random.key_data(key), counter, jnp.zeros_like(counter))
  threshold = jax.nn.sigmoid(logits) * rbm_gibbs.UNIFORM_SCALE
  shift = 32 - rbm_gibbs.UNIFORM_BITS  # its resolution: the same draw
  first = (y0 >> shift).astype(logits.dtype) < threshold[:half]
  second = (y1[: n - half] >> shift).astype(logits.dtype) < threshold[half:]
  return (0, first), (half, second)


def _bernoulli_logits(key: Array, logits: Array) -> Array:
  """``_bernoulli_blocks`` as one array [n_c, S] of 0/1 in logits.dtype. (The sweep writes the
  blocks into the chains one by one instead: concatenating them first made a Chimera sweep 3.5–4×
  slower, interleaved timing; Pegasus and Zephyr were unaffected.)"""
  blocks = [block for _, block in _bernoulli_blocks(key, logits)]
  return jnp.concatenate(blocks, axis=0).astype(logits.dtype)


def _check_chains(m: BoltzmannMachine, z: Array) -> None:
  machine_lib.check_machine(m)
  if z.ndim != 2 or z.shape[1] != m.num_nodes:
    raise ValueError(f"z must have shape [num_chains, n={m.num_nodes}], got {z.shape}")


def _to_sorted(m: BoltzmannMachine, z: Array, dtype=None) -> Array:
  """[S, n] chains → [n + 1, S]: units in colour order, a zero pad unit last (in ``dtype``)."""
  zs = z[:, m.graph.order].T.astype(z.dtype if dtype is None else dtype)
  return jnp.concatenate([zs, jnp.zeros((1, z.shape[0]), zs.dtype)], axis=0)


def _from_sorted(m: BoltzmannMachine, zs: Array, dtype=None) -> Array:
  """[n + 1, S] sorted chains → [S, n] in the machine's node order (in ``dtype``)."""
  inverse = np.argsort(m.graph.order).astype(np.int32)
  return zs[:-1].T[:, inverse].astype(zs.dtype if dtype is None else dtype)


def _state_dtype(operators: tuple[Array, list]):
  """The dtype of the sorted chains inside a sweep: uint8 when every colour gathers (the sparse
  field is bound by reading the neighbours' rows, and 0/1 in one byte is a quarter of float32's
  traffic: ≈ 1.2–1.5× per sweep on Chimera, interleaved), the couplings' dtype when a colour
  multiplies the dense block (a float matmul). The fields, hence the draws, are the same."""
  b_sorted, ops = operators
  return b_sorted.dtype if any(isinstance(op, tuple) for op in ops) else jnp.uint8


def _uses_dense_block(layout: str, degree: int, num_nodes: int) -> bool:
  if layout not in LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
  return layout == "dense" or (layout == "auto" and degree > _DENSE_FRACTION * num_nodes)


def _colour_operators(m: BoltzmannMachine, layout: str) -> tuple[Array, list]:
  """b in colour order [n] and per colour the coupling operator: for the dense block, the blocks of
  the couplings to the units before and after the colour ([n_c, start], [n_c, n − end]: a colour has
  no couplings inside itself, so those columns are skipped), or for the gather the neighbours'
  weights [n_c, d_c]. Built once per ``run``, outside its sweep loop."""
  g = m.graph
  wp = jnp.concatenate([m.w, jnp.zeros((1,), m.w.dtype)])
  ops = []
  for s, e, nbr, eid in _sorted_tables(g):
    if _uses_dense_block(layout, nbr.shape[1], g.num_nodes):
      rows = np.broadcast_to(np.arange(e - s)[:, None], nbr.shape)
      block = jnp.zeros((e - s, g.num_nodes + 1), wp.dtype).at[rows, nbr].add(wp[eid])
      ops.append((block[:, :s], block[:, e : g.num_nodes]))
    else:
      ops.append(wp[eid])
  return m.b[g.order], ops


def _sweep_sorted(
  key: Array,
  g: machine_lib.Graph,
  operators: tuple[Array, list],
  zs: Array,
  beta,
  update: Callable[[Array, Array], tuple[tuple[int, Array], ...]],
) -> Array:
  """One sweep on sorted transposed chains zs [n + 1, S] with ``_colour_operators``' output;
  ``update(key, logits)`` draws a colour (logits [n_c, S]) as row blocks ((offset, states), ...),
  each written into the chains in place."""
  b_sorted, ops = operators
  keys = jax.random.split(key, g.num_colours)
  for c, (table, op) in enumerate(zip(_sorted_tables(g), ops, strict=True)):
    s, e = table[:2]
    field = b_sorted[s:e, None] + _coupling(zs, table, op)
    for offset, block in update(keys[c], beta * field):
      zs = lax.dynamic_update_slice(zs, block.astype(zs.dtype), (s + offset, 0))
  return zs


def _coupling(zs: Array, table: tuple, op) -> Array:
  """Σ_{j ∈ N(i)} w_ij z_j [n_c, S] for the units of one colour (its ``_sorted_tables`` entry and
  ``_colour_operators`` operator) from sorted transposed chains zs [n + 1, S]."""
  s, e, nbr, _ = table
  if isinstance(op, tuple):
    before, after = op
    return before @ zs[:s] + after @ zs[e:-1]
  # One neighbour slot at a time: XLA fuses the row gathers into the running sum instead of
  # materialising [n_c, d_c, S] (≈ 1.25× faster on Chimera and Pegasus, interleaved timing).
  coupling = zs[nbr[:, 0]] * op[:, :1]
  for k in range(1, nbr.shape[1]):
    coupling = coupling + zs[nbr[:, k]] * op[:, k : k + 1]
  return coupling


def _energy_sorted(g: machine_lib.Graph, operators: tuple[Array, list], zs: Array) -> Array:
  """E(z) [S] of sorted transposed chains zs [n + 1, S]: −Σ_c z_c · (b_c + ½ coupling_c), each
  edge being counted once from each end; no transpose back, no per-edge gather of [S, n]."""
  b_sorted, ops = operators
  energy = jnp.zeros(zs.shape[1:], b_sorted.dtype)  # zs may be uint8 (``_state_dtype``)
  for table, op in zip(_sorted_tables(g), ops, strict=True):
    s, e = table[:2]
    terms = zs[s:e] * (b_sorted[s:e, None] + 0.5 * _coupling(zs, table, op))
    # Summed over units by a product with ones: jnp.sum(·, 0) fused the gathers into a reduction
    # over the strided unit axis and was ≈ 60× slower on Pegasus P(6) at S = 1000 (CPU).
    energy = energy - jnp.ones((e - s,), terms.dtype) @ terms
  return energy


def init(key: Array, m: BoltzmannMachine, num_chains: int) -> Array:
  """[S, n] chains from the uniform distribution (the exact β = 0 distribution)."""
  machine_lib.check_machine(m)
  if num_chains < 1:
    raise ValueError(f"num_chains must be >= 1, got {num_chains}")
  return (rbm_gibbs.random_bits(key, (num_chains, m.num_nodes)) >> 31).astype(m.b.dtype)


def sweep(key: Array, z: Array, m: BoltzmannMachine, beta=1.0, *, layout: str = "auto") -> Array:
  """One chromatic block Gibbs sweep (colours in order 0..C−1) at inverse temperature β.

  Args:
    key: PRNG key (split once per colour).
    z: [S, n] chains, 0/1 in the parameters' dtype, in the machine's node order.
    m: the machine.
    beta: inverse temperature β ≥ 0 (Python float or traced scalar).
    layout: ``'auto'``, ``'sparse'`` or ``'dense'`` coupling computation (module docstring; static).

  Returns:
    [S, n] chains after the sweep.
  """
  _check_chains(m, z)
  rbm_gibbs.check_beta(beta)
  ops = _colour_operators(m, layout)
  zs = _to_sorted(m, z, _state_dtype(ops))
  return _from_sorted(m, _sweep_sorted(key, m.graph, ops, zs, beta, _bernoulli_blocks), z.dtype)


def sweep_with_energy(
  key: Array, z: Array, m: BoltzmannMachine, beta=1.0, *, layout: str = "auto"
) -> tuple[Array, Array]:
  """One sweep as ``sweep``, also returning E(z') [S] at β = 1 (for annealing weights)."""
  z = sweep(key, z, m, beta, layout=layout)
  return z, machine_lib.energy(m, z)


def _run_sorted(key: Array, zs: Array, g, operators, num_sweeps: int, beta, update=None) -> Array:
  """num_sweeps sweeps of sorted transposed chains zs [n + 1, S] in a ``lax.scan``."""

  update = _bernoulli_blocks if update is None else update

  def body(zs, k):
    return _sweep_sorted(k, g, operators, zs, beta, update), None

  return lax.scan(body, zs, jax.random.split(key, num_sweeps))[0]


def run(
  key: Array, z: Array, m: BoltzmannMachine, num_sweeps: int, beta=1.0, *, layout: str = "auto"
) -> Array:
  """num_sweeps sweeps in a ``lax.scan`` (chains sorted by colour once, not per sweep): [S, n]."""
  _check_chains(m, z)
  rbm_gibbs.check_beta(beta)
  if num_sweeps < 0:
    raise ValueError(f"num_sweeps must be >= 0, got {num_sweeps}")
  ops = _colour_operators(m, layout)
  zs = _run_sorted(key, _to_sorted(m, z, _state_dtype(ops)), m.graph, ops, num_sweeps, beta)
  return _from_sorted(m, zs, z.dtype)


def run_with_energy(
  key: Array, z: Array, m: BoltzmannMachine, num_sweeps: int, beta=1.0, *, layout: str = "auto"
) -> tuple[Array, Array]:
  """num_sweeps (≥ 1) sweeps as ``run``, returning the final chains [S, n] and E(z) [S] at β = 1.

  The annealing samplers' move step (``priors.graph.BoltzmannMachine.run_with_energy``): the colour
  operators and the sorted layout are built once per call, outside the sweep loop, and the energy is
  that of the final state only, computed in the sorted layout with the same operators (the cost of
  one sweep's fields without the random draws). No input checks (the callers validate once, outside
  their loops), as ``samplers.gibbs.run_with_energy``.
  """
  ops = _colour_operators(m, layout)
  zs = _run_sorted(key, _to_sorted(m, z, _state_dtype(ops)), m.graph, ops, num_sweeps, beta)
  return _from_sorted(m, zs, z.dtype), _energy_sorted(m.graph, ops, zs)


def run_fields_only(z: Array, m: BoltzmannMachine, num_sweeps: int, layout: str = "auto") -> Array:
  """The sweep's memory traffic without RNG: each colour set to 1[h > 0] (a benchmark roof)."""
  _check_chains(m, z)
  ops = _colour_operators(m, layout)
  zs = _to_sorted(m, z, _state_dtype(ops))
  zs = _run_sorted(jax.random.key(0), zs, m.graph, ops, num_sweeps, 1.0, lambda _, h: ((0, h > 0),))
  return _from_sorted(m, zs, z.dtype)
