"""The runner's jitted train step (experiments/train_step.py) against an independent computation.

For an RBM, a graph prior (Chimera) and the factorial prior, the step is built as the runner builds
it (``experiment.build`` then ``train_step.make_train_step``) and called once and several times;
each call is compared with a step written here from the definitions of math.md §2, §4 and §6:

* the loss and its gradient: ``objectives.loss_fn`` called directly, differentiated by ``jax.grad``;
* weight decay: coefficient · ½ Σ w² over the dense kernels, the BatchNorm scales and the prior's
  couplings (math.md §2.5), selected here by name;
* κ = min(t / (fraction · num_steps), 1) and the piecewise-constant learning rate (math.md §6),
  written here as plain Python;
* Adam written out (m, v, bias corrections; ε after the correction, or TF1's ε before it);
* the prior's update: its parameters by Adam, its persistent sampler by ``sampler.step`` with the
  step's key.

The fused steps the runner dispatches (``make_fused_steps``) are compared with the step called
once per step (``test_fused_steps_are_the_steps_one_at_a_time``).

Tolerance: the step runs as one fused XLA program, the reference as separate ones (its gradient, the
sampler's step) and NumPy (Adam), so float32 sums (over the 784 × 200 kernel entries, the batch, the
chains) are rounded in a different order. Measured: loss and weight decay within 6e-7 relative;
parameters within 8e-4 · lr, the largest on biases that feed a BatchNorm (their exact gradient is
zero, so Adam divides rounding noise by ε). The tolerances (3e-5 relative on the loss terms, 2e-4 on
the gradient norm, 2e-3 · lr on parameters) sit above that, and each deliberate error moves some
checked value by far more: weight decay applied twice (coefficient 0.05: a penalty of ≈ 50 nats, its
gradient a visible share of the gradient norm), κ applied twice (κ = 2/3 vs 4/9 on a KL of several
nats), the prior's update skipped (its parameters unchanged, or its sampler's chains not moved:
exact equality).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import tiny_config

from dvae_jax import evaluation, objectives
from experiments import experiment as experiment_lib
from experiments import train_step

B1, B2 = 0.9, 0.999  # Adam's moment decays (math.md §6)
# math.md §6: [0, 2%) 3e-4, [2%, 60%) 3e-3, [60%, 75%) 1e-3, [75%, 95%) 3e-4, [95%, 100%] 9.1e-5
# for the base rate 3e-3, as fractions of num_steps.
LR_PIECES = ((0.02, 3e-4), (0.60, 3e-3), (0.75, 1e-3), (0.95, 3e-4), (math.inf, 9.1e-5))

# Enough steps that the schedule's pieces and κ's ramp are each a few steps long; weight decay
# large enough that its gradient is a visible share of the gradient (1e-4 is not, at float32).
STEP_CONFIG = {"num_steps": 50, "kl_warmup_fraction": 0.3, "weight_decay": 0.05}
CASES = {
  # (config name, overrides): the RBM with optax's ε; a Chimera graph with TF1's ε; the factorial
  # prior on a struct with BatchNorm (decayed scales, running statistics).
  "rbm": ("dvae_sharp", {}),
  "chimera": ("dvae_sharp", {"prior": "chimera", "adam_eps_mode": "tf1"}),
  "factorial": ("dvae_sharp_factorial", {"struct": "1-layer-nonlin"}),
}
LOSS_RTOL = 3e-5
GRAD_NORM_RTOL = 2e-4
PARAM_ATOL_LR = 2e-3  # parameters: absolute tolerance in units of the step's learning rate


def learning_rate(t: int, num_steps: int, base: float) -> float:
  for fraction, rate in LR_PIECES:
    if t < round(fraction * num_steps):
      return base / 3e-3 * rate
  raise AssertionError("unreachable")


def kappa(t: int, num_steps: int, fraction: float) -> float:
  return 1.0 if fraction == 0 else min(t / (fraction * num_steps), 1.0)


def decayed_sum_of_squares(params: dict) -> jax.Array:
  """Σ w² over the dense kernels, the BatchNorm scales and the prior's couplings (math.md §2.5)."""
  total = 0.0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params["model"])[0]:
    names = jax.tree_util.keystr(path)
    if "'kernel'" in names or ("norm" in names and "'scale'" in names):
      total = total + jnp.sum(jnp.square(leaf))
  couplings = getattr(params["prior"], "w", None)  # RBM W, graph edge weights; none: factorial
  return total + (0.0 if couplings is None else jnp.sum(jnp.square(couplings)))


class Reference:
  """The train step from the definitions, keeping its own Adam moments and count.

  Its gradient (``objectives.loss_fn`` and the decay, under ``jax.grad``) and the sampler's step
  are each compiled once per case, their inputs passed as arguments; Adam runs in NumPy."""

  def __init__(self, experiment, state):
    self.experiment = experiment
    self.mu = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), state.params)
    self.nu = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), state.params)
    self.count = int(state.step)  # Adam's count: the steps done (its moments start at zero here)
    config = experiment.config

    def objective(params, batch_stats, samples, x, loss_key, kappa):
      model = nnx.merge(experiment.graphdef, params["model"], batch_stats, copy=True)
      loss, _ = objectives.loss_fn(
        loss_key, model, params["prior"], samples, x, experiment.method, config.k, kappa
      )
      penalty = 0.5 * config.weight_decay * decayed_sum_of_squares(params)
      return loss + penalty, (loss, penalty, nnx.state(model, nnx.BatchStat))

    self.grad = jax.jit(jax.grad(objective, has_aux=True))
    self.sampler_step = None if experiment.sampler is None else jax.jit(experiment.sampler.step)

  def step(self, state, x):
    exp, config = self.experiment, self.experiment.config
    t = int(state.step)
    sampler_key, loss_key, _ = jax.random.split(jax.random.fold_in(state.key, t), 3)
    k = kappa(t, config.num_steps, config.kl_warmup_fraction)
    lr = learning_rate(t, config.num_steps, config.learning_rate)
    if exp.sampler is None:
      sampler_state, samples = (), None
    else:  # the prior's persistent sampler moves to the current prior first (math.md §3.4)
      sampler_state, _ = self.sampler_step(sampler_key, state.sampler_state, state.params["prior"])
      samples = (sampler_state.z, sampler_state.log_z)

    grads, (loss, penalty, batch_stats) = self.grad(
      state.params, state.batch_stats, samples, x, loss_key, jnp.float32(k)
    )
    grads = jax.tree.map(np.asarray, grads)
    self.count += 1
    c = self.count
    self.mu = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, self.mu, grads)
    self.nu = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, self.nu, grads)
    eps = config.adam_eps
    if config.adam_eps_mode == "tf1":  # lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε)
      rate = lr * math.sqrt(1 - B2**c) / (1 - B1**c)
      direction = jax.tree.map(lambda m, v: rate * m / (np.sqrt(v) + eps), self.mu, self.nu)
    else:  # lr · m̂ / (√v̂ + ε)
      direction = jax.tree.map(
        lambda m, v: lr * (m / (1 - B1**c)) / (np.sqrt(v / (1 - B2**c)) + eps),
        self.mu,
        self.nu,
      )
    params = jax.tree.map(lambda p, d: np.asarray(p) - d, state.params, direction)
    grad_norm = math.sqrt(
      sum(float(np.sum(np.square(g, dtype=np.float64))) for g in jax.tree.leaves(grads))
    )
    expected = {
      "loss": float(loss),
      "weight_decay": float(penalty),
      "grad_norm": grad_norm,
      "lr": lr,
      "kappa": k,
    }
    return (params, batch_stats, sampler_state), expected


def at_step(state, start: int):
  """``state`` as if ``start`` steps were done: the step and every optax count (the schedule's and
  Adam's, which the runner keeps equal to it) set to ``start``; Adam's moments stay zero."""

  def set_count(path, leaf):
    return jnp.full_like(leaf, start) if jax.tree_util.keystr(path).endswith(".count") else leaf

  opt_state = jax.tree_util.tree_map_with_path(set_count, state.opt_state)
  return state._replace(step=jnp.asarray(start, jnp.int32), opt_state=opt_state)


def host(tree):
  return jax.tree.map(np.asarray, tree)


def assert_step_matches(new_state, metrics, reference, lr):
  (params, batch_stats, sampler_state), expected = reference
  for name in ("lr", "kappa"):
    np.testing.assert_allclose(float(metrics[name]), expected[name], rtol=1e-6, err_msg=name)
  for name in ("loss", "weight_decay"):
    np.testing.assert_allclose(float(metrics[name]), expected[name], rtol=LOSS_RTOL, err_msg=name)
  np.testing.assert_allclose(
    float(metrics["grad_norm"]), expected["grad_norm"], rtol=GRAD_NORM_RTOL, err_msg="grad_norm"
  )
  got = jax.tree_util.tree_flatten_with_path(host(new_state.params))[0]
  want = jax.tree.leaves(host(params))
  for (path, a), b in zip(got, want, strict=True):
    np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=PARAM_ATOL_LR * lr, err_msg=jax.tree_util.keystr(path)
    )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    host(new_state.batch_stats),
    host(batch_stats),
  )
  # The chains are binary: equal. The running log Z (≈ 140, float32 spacing 1.5e-5) and its Kahan
  # compensation and variance: to a few of its ulps.
  for (path, a), b in zip(
    jax.tree_util.tree_flatten_with_path(host(new_state.sampler_state))[0],
    jax.tree.leaves(host(sampler_state)),
    strict=True,
  ):
    name = jax.tree_util.keystr(path)
    if name == ".z":
      np.testing.assert_array_equal(a, b, err_msg=name)
    else:
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-4, err_msg=name)


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request, data_dir):
  """(experiment, a function returning a fresh initial state, the jitted step) of one case."""
  name, overrides = CASES[request.param]
  config = tiny_config(name, data_dir, **STEP_CONFIG, **overrides)

  model_experiment, weights = experiment_lib.build_model(config)

  def fresh_state():
    return experiment_lib.create_train_state(model_experiment, jax.tree.map(jnp.copy, weights))

  experiment, _ = fresh_state()
  assert not experiment.dataset.dynamic_binarization  # the reference feeds the batch unchanged
  return experiment, lambda: fresh_state()[1], train_step.make_train_step(experiment)


@pytest.mark.parametrize("start, num_calls", [(10, 1), (0, 4)])
def test_step_matches_definitions(built, start, num_calls):
  """One call from step 10 (κ = 2/3, lr 3e-3) and four from step 0 (κ 0 → 1/5, the learning rate
  crossing its first boundary at step 1) equal the reference's trajectory."""
  experiment, fresh_state, step = built
  state = fresh_state()
  state = at_step(state, start)
  reference = Reference(experiment, state)
  train = np.asarray(experiment.dataset.train, np.float32)
  batch = experiment.config.batch_size
  ref_state = jax.tree.map(jnp.copy, state)  # the step donates its state
  for call in range(num_calls):
    x = jnp.asarray(train[call * batch : (call + 1) * batch])
    out = reference.step(ref_state, x)
    t = int(state.step)
    state, metrics = step(state, x)
    assert int(state.step) == t + 1
    assert_step_matches(state, metrics, out, out[1]["lr"])
    params, batch_stats, sampler_state = out[0]
    # Two trajectories: the step's carries its own state (optimiser, chains, step) forward.
    ref_state = ref_state._replace(
      step=ref_state.step + 1, params=params, batch_stats=batch_stats, sampler_state=sampler_state
    )


# A few hundred steps of the factorial prior (exact log Z: no sampler, no AIS) on the first 500
# training images; the validation NLL of 200 images before and after, with the same key (common
# random numbers), so the paired differences cancel most of the per-image spread.
NLL_STEPS, NLL_EXAMPLES, NLL_IW_SAMPLES, NLL_Z = 300, 200, 20, 5.0


def test_training_lowers_the_validation_nll(data_dir):
  """The decrease of the validation NLL exceeds 5 standard errors of its paired mean (measured:
  233 → 159 nats, a decrease of 74.0 ± 1.7 on binarized MNIST; 76.3 ± 1.6 on the committed
  subsets)."""
  config = tiny_config("dvae_sharp_factorial", data_dir, num_steps=NLL_STEPS, batch_size=50)
  experiment, state = experiment_lib.build(config)
  step = train_step.make_train_step(experiment)
  train = np.asarray(experiment.dataset.train[:500], np.float32)
  valid = jnp.asarray(experiment.dataset.valid[:NLL_EXAMPLES], jnp.float32)
  key = jax.random.key(1)

  @jax.jit
  def per_example_nll(params, batch_stats):
    model = nnx.merge(experiment.eval_graphdef, params["model"], batch_stats)
    return evaluation.evaluate(key, model, params["prior"], None, valid, NLL_IW_SAMPLES)["nll"]

  before = np.asarray(per_example_nll(state.params, state.batch_stats), np.float64)
  batches = len(train) // config.batch_size
  for t in range(NLL_STEPS):
    start = (t % batches) * config.batch_size
    state, _ = step(state, jnp.asarray(train[start : start + config.batch_size]))
  after = np.asarray(per_example_nll(state.params, state.batch_stats), np.float64)
  decrease = before - after
  stderr = decrease.std(ddof=1) / math.sqrt(NLL_EXAMPLES)
  assert decrease.mean() > NLL_Z * stderr, (decrease.mean(), stderr, before.mean(), after.mean())


def test_fused_steps_are_the_steps_one_at_a_time(built):
  """Three dispatches of 4 fused steps (``make_fused_steps``: a ``lax.scan`` over index slabs into
  the training set on the device) against 12 calls of the step on the host's batches
  (``data.train_batch``): every step's metrics, and the final state, bit for bit on CPU, except the
  running log Z's standard error (a sum of 1/ESS − 1/R, differences of two ≈ 1/R terms whose
  rounding XLA may order differently inside the scan: rtol 1e-5;
  tests/experiments/test_fused_steps.py)."""
  from dvae_jax import data as data_lib
  from dvae_jax.data import batching

  experiment, fresh_state, step = built
  config, dataset = experiment.config, experiment.dataset
  fused = train_step.make_fused_steps(experiment)
  train_x = train_step.prepare_train_x(experiment)
  state, one_by_one = fresh_state(), []
  for t in range(12):
    state, metrics = step(state, data_lib.train_batch(dataset, config.seed, t, config.batch_size))
    one_by_one.append(jax.device_get(metrics))
  fused_state, stacked = fresh_state(), []
  for first in range(0, 12, 4):
    idx = batching.slab_indices(config.seed, first, 4, config.batch_size, dataset.train.shape[0])
    fused_state, metrics = fused(fused_state, train_x, jnp.asarray(idx, jnp.int32))
    assert all(v.shape == (4,) for v in metrics.values())
    stacked.append(jax.device_get(metrics))
  for t in range(12):
    row = {k: v[t % 4] for k, v in stacked[t // 4].items()}
    assert row.keys() == one_by_one[t].keys()
    for key, value in one_by_one[t].items():
      if key == "sampler/log_z_stderr":
        np.testing.assert_allclose(row[key], value, rtol=1e-5, err_msg=f"step {t} {key}")
      else:
        np.testing.assert_array_equal(row[key], value, err_msg=f"step {t} {key}")
  assert int(fused_state.step) == 12
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(fused_state), strict=True):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
