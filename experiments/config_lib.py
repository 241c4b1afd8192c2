"""Named configs, command-line overrides, validation and the protocol defaults (math.md §6).

``--config=NAME`` names a file ``experiments/configs/NAME.py`` (:func:`expand_config_argv` rewrites
it to the path that ``ml_collections.config_flags`` loads); ``--config.KEY=VALUE`` overrides keys.
:func:`resolve_config` fills the keys left at ``None`` (β from the math.md §6 table, the budget from
the protocol) and refuses unknown or invalid values with a message that lists the valid ones.
"""

from __future__ import annotations

import math
import pathlib
import re
from collections.abc import Iterable, Sequence

from ml_collections import config_dict

from dvae_jax import data, models, objectives, optim, priors, samplers
from dvae_jax.graphs import topologies

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"
CONFIG_NAMES = tuple(
  sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "base"))
)

# The objectives of math.md §4 in the column order of the §6 β table.
PAPER_METHODS = (
  "dvae",
  "dvae_pp_exp",
  "dvae_pp_power",
  "dvae_sharp_gi",
  "dvae_sharp_gauss",
  "dvae_sharp_exp",
  "dvae_sharp_unexp",
  "dvae_sharp",
)
# GumBolt (Khoshaman & Amin 2018) is not in the DVAE# paper's table. Its β is the binary concrete
# temperature τ (smaller = closer to discrete, unlike a smoothing's sharpness); one value for every
# dataset and struct. 0.5 is the best of τ ∈ {1/7, 0.2, 0.5, 1} on MNIST 1-layer-nonlin, K = 5,
# 6k steps, 2 seeds, paired (1/7: +0.41 nats, 0.2: +0.32, 1: +2.23; docs/results.md "GumBolt's
# temperature"). D-Wave's PyTorch plugin uses 1/7 (after Vinci et al. 2020); the GumBolt paper's own
# value could not be found.
GUMBOLT_TEMPERATURE = 0.5
METHODS = PAPER_METHODS + ("gumbolt",)
PRIORS = ("rbm", "factorial") + topologies.TOPOLOGIES
SAMPLERS = ("pa", "pcd", "dimod")

_MNIST_BETAS = {
  "1-layer-lin": (5, 12, 40, 40, 40, 12, 40, 40),
  "1-layer-nonlin": (5, 14, 30, 30, 30, 12, 30, 40),
  "2-layer-nonlin": (4, 10, 30, 30, 25, 10, 16, 30),
  "4-layer-nonlin": (4, 10, 30, 30, 25, 10, 16, 30),
}
_OMNIGLOT_BETAS = {
  "1-layer-lin": (4, 14, 40, 40, 40, 12, 40, 40),
  "1-layer-nonlin": (4, 12, 40, 30, 25, 10, 16, 30),
  "2-layer-nonlin": (4, 10, 30, 25, 25, 8, 16, 20),
  "4-layer-nonlin": (4, 10, 30, 25, 25, 8, 16, 20),
}
# BETA_TABLE[dataset][struct][method] (math.md §6). The papers give no Caltech-101 values for these
# methods; Caltech uses the MNIST column (both are fixed-binarization 28×28 sets), and so does any
# other data (file:, tfds:, bars_and_stripes:), for want of a better default: set beta to tune it.
BETA_TABLE = {
  dataset: {
    struct: {
      **dict(zip(PAPER_METHODS, map(float, row), strict=True)),
      "gumbolt": GUMBOLT_TEMPERATURE,
    }
    for struct, row in table.items()
  }
  for dataset, table in (
    ("binarized_mnist", _MNIST_BETAS),
    ("omniglot", _OMNIGLOT_BETAS),
    ("caltech101_silhouettes", _MNIST_BETAS),
  )
}

# Budgets. 'paper' is math.md §6. 'cpu' does the same work per step (batch 100, 1000 prior samples,
# the same evaluation) except fewer Gibbs sweeps per step on the 1-layer structs: 10 instead of 40
# (the sweep-budget study, docs/results.md: there the population stays within 1.5× noise and the
# test NLL within the seed spread, at 2.4–3.0× the steps per second; on 2-layer-nonlin 10 sweeps
# lagged (diagnostic 1.50–1.60) and only 40 stayed within, so the 400-unit priors of the deeper
# structs keep 40). It trains for 20k steps instead of 1M,
# validates every 5k steps and tests with 1000 instead of 4000 importance samples, so that the
# default run finishes on a 2-core laptop CPU in minutes. The schedules (learning
# rate, KL warm-up) are fractions of num_steps, so they scale with it. Only keys the user left at
# None are filled from here; a dict value is looked up by struct.
PROTOCOLS = {
  "paper": {
    "num_steps": 1_000_000,
    "num_prior_samples": 1000,
    "num_sweeps": 40,
    "eval_every": 20_000,
    "val_iw_samples": 100,
    "eval_iw_samples": 4000,
    "eval_num_examples": 0,
    "ais_num_chains": 1024,
    "ais_num_temperatures": 1000,
    "checkpoint_every": 20_000,
  },
  "cpu": {
    "num_steps": 20_000,
    "num_prior_samples": 1000,
    "num_sweeps": {
      "1-layer-lin": 10,
      "1-layer-nonlin": 10,
      "2-layer-nonlin": 40,
      "4-layer-nonlin": 40,
    },
    "eval_every": 5_000,
    "val_iw_samples": 100,
    "eval_iw_samples": 1000,
    "eval_num_examples": 0,
    "ais_num_chains": 1024,
    "ais_num_temperatures": 1000,
    "checkpoint_every": 2_500,
  },
}

# Keys that must be >= the given minimum once resolved.
_MINIMUM = {
  "k": 1,
  "num_steps": 1,
  "batch_size": 1,
  "num_prior_samples": 1,
  "num_sweeps": 1,
  "eval_every": 1,
  "val_iw_samples": 1,
  "eval_iw_samples": 1,
  "eval_num_examples": 0,
  "eval_batch_size": 1,
  "ais_num_chains": 1,
  "ais_num_temperatures": 2,
  "sampler_diagnostic_replicas": 0,
  "log_z_refresh_every": 0,
  "log_z_tracker_replicas": 1,
  "log_z_tracker_sweeps": 1,
  "train_ais_num_chains": 0,
  "train_ais_num_temperatures": 2,
  "sampler_diagnostic_temperatures": 2,
  "log_every": 1,
  "checkpoint_every": 1,
  "max_checkpoints": 1,
  "num_image_samples": 1,
  "seed": 0,
  "guard_grad_norm_steps": 1,
}
_POSITIVE = (
  "learning_rate",
  "adam_eps",
  "guard_max_nats",
  "guard_max_log_z",
  "guard_max_grad_norm",
)
_NON_NEGATIVE = ("weight_decay", "kl_warmup_fraction")
_CHOICES = {
  "method": METHODS,
  "protocol": tuple(PROTOCOLS),
  "struct": tuple(models.STRUCTS),
  "prior": PRIORS,
  "sampler": SAMPLERS,
  "relaxed_sampler": objectives.RELAXED_SAMPLERS,
  "adam_eps_mode": optim.EPS_MODES,
  "rao_blackwell": priors.RAO_BLACKWELL_MODES,
}


class ConfigError(ValueError):
  """An unknown config name, key or an invalid value."""


def config_path(name: str) -> pathlib.Path:
  """``experiments/configs/NAME.py`` for a config name, or a given ``.py`` path as is."""
  if name.endswith(".py") or "/" in name or ":" in name:
    path = pathlib.Path(name.split(":", 1)[0])
    if not path.is_file():
      raise ConfigError(f"config file {name!r} not found")
    return path
  if name not in CONFIG_NAMES:
    raise ConfigError(f"unknown config {name!r}; valid configs: {', '.join(CONFIG_NAMES)}")
  return CONFIG_DIR / f"{name}.py"


def load_config(name: str) -> config_dict.ConfigDict:
  """The (unresolved) ConfigDict of a named config or config file."""
  import importlib.util

  path = config_path(name)
  spec = importlib.util.spec_from_file_location(f"_dvae_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def expand_config_argv(argv: Sequence[str], flag: str = "config") -> list[str]:
  """Rewrites ``--config=NAME`` (or ``--config NAME``) to the config file's path and checks that
  every ``--config.KEY`` override names an existing key.

  Raises:
    ConfigError: unknown config name or key (the message lists the valid ones).
  """
  argv = list(argv)
  value_index = None
  for i, arg in enumerate(argv):
    if arg in (f"--{flag}", f"-{flag}") and i + 1 < len(argv):
      value_index = i + 1
    elif re.match(rf"^--?{flag}=", arg):
      value_index = i
  if value_index is None:
    return argv
  arg = argv[value_index]
  prefix, name = (arg.split("=", 1)[0] + "=", arg.split("=", 1)[1]) if "=" in arg else ("", arg)
  path = config_path(name)
  suffix = ":" + name.split(":", 1)[1] if ":" in name else ""
  argv[value_index] = f"{prefix}{path}{suffix}"
  keys = set(load_config(name).keys())
  for arg in argv:
    match = re.match(rf"^--?(?:no)?{flag}\.([^=]+)", arg)
    if match and match.group(1).split(".")[0] not in keys:
      raise ConfigError(
        f"unknown config key {match.group(1)!r} in {arg!r}; valid keys: {', '.join(sorted(keys))}"
      )
  return argv


def resolve_config(
  config: config_dict.ConfigDict, *, data_dir: str | None = None
) -> config_dict.FrozenConfigDict:
  """Fills the keys left at None and validates every value.

  β: None or -1 → ``BETA_TABLE[dataset][struct][method]``.
  Budget keys: None → ``PROTOCOLS[protocol]`` (per struct where it is a dict: ``num_sweeps``).
  ``steps_per_dispatch``: 0 (auto) → the largest S <= ``PREFERRED_STEPS_PER_DISPATCH`` of
  ``jax.default_backend()`` that divides every nonzero cadence (``auto_steps_per_dispatch``).
  ``data_dir`` (the ``--data_dir`` flag) replaces ``config.data_dir`` when given.

  Returns:
    A frozen, fully specified copy.

  Raises:
    ConfigError: an invalid value; the message names the key and lists or states what is valid.
  """
  c = config_dict.ConfigDict(config.to_dict())
  base_keys = set(_base_keys())
  unknown = set(c.keys()) - base_keys
  if unknown:
    raise ConfigError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(base_keys)}")
  for key, choices in _CHOICES.items():
    if c[key] not in choices:
      raise ConfigError(f"invalid {key} {c[key]!r}; valid values: {', '.join(choices)}")
  if data_dir:
    c.data_dir = data_dir
  _resolve_dataset(c)
  for key, value in PROTOCOLS[c.protocol].items():
    if c[key] is None:
      c[key] = value[c.struct] if isinstance(value, dict) else value
  if c.beta is None or c.beta == -1:
    c.beta = BETA_TABLE.get(c.dataset, BETA_TABLE["binarized_mnist"])[c.struct][c.method]
  elif not c.beta > 0:
    raise ConfigError(
      f"invalid beta {c.beta}: must be > 0 (or -1 / unset for the math.md §6 table)"
    )
  for key, minimum in _MINIMUM.items():
    if not isinstance(c[key], int) or c[key] < minimum:
      raise ConfigError(f"invalid {key} {c[key]!r}: must be an integer >= {minimum}")
  for key in _POSITIVE:
    if not c[key] > 0:
      raise ConfigError(f"invalid {key} {c[key]!r}: must be > 0")
  for key in _NON_NEGATIVE:
    if not c[key] >= 0:
      raise ConfigError(f"invalid {key} {c[key]!r}: must be >= 0")
  if not 0 < c.log_z_tracker_target_ess < 1:
    raise ConfigError(
      f"invalid log_z_tracker_target_ess {c.log_z_tracker_target_ess!r}: must be in (0, 1)"
    )
  if c.sampler_diagnostic_replicas % samplers.diagnostics.NUM_GROUPS:
    raise ConfigError(
      f"invalid sampler_diagnostic_replicas {c.sampler_diagnostic_replicas}: must be a multiple of "
      f"{samplers.diagnostics.NUM_GROUPS} (0 = off)"
    )
  _resolve_steps_per_dispatch(c)
  _resolve_seeds(c)
  _resolve_topology(c)
  if (c.sampler == "dimod") != bool(c.dimod_sampler):
    raise ConfigError(
      "sampler='dimod' needs dimod_sampler (simulated_annealing, tabu, steepest_descent, random or "
      "module.path:Name)"
      if c.sampler == "dimod"
      else f"dimod_sampler {c.dimod_sampler!r} is given but sampler is {c.sampler!r}; use "
      "sampler='dimod'"
    )
  if c.dimod_kwargs and c.sampler != "dimod":
    raise ConfigError(f"dimod_kwargs {c.dimod_kwargs!r} is given but sampler is {c.sampler!r}")
  if c.kl_warmup_fraction > 1:
    raise ConfigError(f"invalid kl_warmup_fraction {c.kl_warmup_fraction}: must be in [0, 1]")
  return config_dict.FrozenConfigDict(c)


def _resolve_dataset(c: config_dict.ConfigDict) -> None:
  """Checks the dataset and its options; names it canonically (a file by its absolute path, so
  that config.json names the data wherever the run is read from)."""
  if not data.is_known(c.dataset):
    raise ConfigError(
      f"invalid dataset {c.dataset!r}; valid values: {', '.join(data.dataset_forms())}"
    )
  try:
    source = data.get_source(c.dataset, binarization=c.binarization, feature=c.data_feature)
  except ValueError as err:
    raise ConfigError(f"invalid dataset {c.dataset!r}: {err}") from err
  c.dataset = source.name


def with_data_identity(config, dataset: data.Dataset) -> config_dict.FrozenConfigDict:
  """``config`` with ``dataset_md5`` = the loaded data's identity (``Dataset.identity``).

  Raises:
    data.DataFileError: ``config`` already names an identity (a run's config.json, or the user's
      pin) and the data found differs from it.
  """
  if config.dataset_md5 and config.dataset_md5 != dataset.identity:
    raise data.DataFileError(
      f"dataset {config.dataset} ({dataset.source}) is not the data of this run: its content md5 "
      f"is {dataset.identity or 'that of a built-in dataset'}, the run's config records "
      f"dataset_md5={config.dataset_md5}; restore the run's data or start a new run"
    )
  c = config_dict.ConfigDict(config.to_dict())
  c.dataset_md5 = dataset.identity
  return config_dict.FrozenConfigDict(c)


# The periods of the work done between train dispatches (0: never), which must fall on their ends.
DISPATCH_CADENCES = ("log_every", "eval_every", "checkpoint_every", "log_z_refresh_every")

# The fused steps per dispatch that steps_per_dispatch = 0 (auto, the default) aims for, by
# jax.default_backend(); a backend not listed gets 1. cpu: 10, measured by benchmarks.throughput
# (1-layer-lin, idle 2-core CPU; benchmarks/results/throughput/throughput_cpu.md): the runner trains
# 38.7 steps/s at S = 1 and 44.1 at S = 10, near the jitted step alone (45.6), and the run is the
# same bit for bit. gpu / tpu: 100, not measured yet; an accelerator at these model sizes is bound
# by launching kernels, which is what fusing steps saves (benchmarks.throughput /
# benchmarks.gpu_check on the device is how to confirm or replace this value).
PREFERRED_STEPS_PER_DISPATCH = {"cpu": 10, "gpu": 100, "tpu": 100}

# What a config.json lacking a key means, for the keys whose default has changed since runs were
# first written: a run from before steps_per_dispatch existed ran one step per dispatch.
UNRECORDED_KEYS = {"steps_per_dispatch": 1}


def auto_steps_per_dispatch(cadences: Iterable[int], preferred: int) -> int:
  """The largest S <= ``preferred`` that divides every nonzero cadence (``preferred`` when all are
  0): the fused steps that keep each period on a dispatch's end without moving it.

  Args:
    cadences: periods in steps (0: never), each >= 0.
    preferred: the backend's preferred S, >= 1.
  """
  period = math.gcd(*cadences)  # 0 when every cadence is 0 (or none is given)
  if not period:
    return preferred
  return max(d for d in range(1, min(preferred, period) + 1) if period % d == 0)


def _resolve_steps_per_dispatch(c: config_dict.ConfigDict) -> None:
  """Fills ``steps_per_dispatch`` = 0 (auto) with ``auto_steps_per_dispatch`` of the cadences and
  the backend's ``PREFERRED_STEPS_PER_DISPATCH``; refuses an explicit S that does not divide a
  period of ``DISPATCH_CADENCES``: the runner acts only between dispatches of S steps (rounding
  would silently move a user's cadence)."""
  s = c.steps_per_dispatch
  if not isinstance(s, int) or s < 0:
    raise ConfigError(
      f"invalid steps_per_dispatch {s!r}: must be an integer >= 1 (train steps per dispatch), or 0 "
      "(the default) for the largest S up to the backend's preferred value that divides every "
      f"cadence ({', '.join(DISPATCH_CADENCES)})"
    )
  if s == 0:
    import jax

    preferred = PREFERRED_STEPS_PER_DISPATCH.get(jax.default_backend(), 1)
    c.steps_per_dispatch = auto_steps_per_dispatch((c[key] for key in DISPATCH_CADENCES), preferred)
    return
  bad = [key for key in DISPATCH_CADENCES if c[key] % s]
  if bad:
    raise ConfigError(
      f"steps_per_dispatch={s} must divide every cadence (the runner logs, evaluates, checkpoints "
      "and refreshes log Z between dispatches of that many steps): "
      + "; ".join(
        f"{key}={c[key]} is not a multiple (nearest: {_nearest_multiples(c[key], s)})"
        for key in bad
      )
      + "; or leave steps_per_dispatch at 0 (auto) for the largest S that divides them all"
    )


def _resolve_seeds(c: config_dict.ConfigDict) -> None:
  """Checks ``seeds`` (several runs in one program) and writes it canonically ('0,1,2,3')."""
  if c.seeds is None:
    return
  how = "give distinct integers >= 0 separated by commas (e.g. 0,1,2,3), or leave seeds unset"
  entries = [e.strip() for e in str(c.seeds).split(",")]
  if not any(entries):
    raise ConfigError(f"invalid seeds {c.seeds!r}: an empty list; {how}")
  bad = [e for e in entries if not re.fullmatch(r"[+-]?\d+", e)]
  if bad:
    named = ", ".join(map(repr, bad))
    raise ConfigError(f"invalid seeds {c.seeds!r}: {named} not an integer; {how}")
  seeds = [int(e) for e in entries]
  negative = [s for s in seeds if s < 0]
  if negative:
    raise ConfigError(f"invalid seeds {c.seeds!r}: {', '.join(map(str, negative))} negative; {how}")
  repeated = sorted({s for s in seeds if seeds.count(s) > 1})
  if repeated:
    raise ConfigError(f"invalid seeds {c.seeds!r}: {', '.join(map(str, repeated))} repeated; {how}")
  if c.seed != 0 and c.seed not in seeds:
    raise ConfigError(
      f"seed={c.seed} is not one of seeds={c.seeds}: seed names the single run, seeds the runs of "
      "one program; set seeds alone"
    )
  if c.sampler == "dimod":
    raise ConfigError(
      "seeds is not available with sampler='dimod' (its population is drawn on the host, one run "
      "at a time): run each seed on its own with --config.seed"
    )
  c.seeds = ",".join(map(str, seeds))


def seed_list(config) -> tuple[int, ...]:
  """The seeds of a config's runs in one program, in order; () for a single run (``seeds`` unset).

  Raises:
    ConfigError: invalid ``seeds`` (see ``resolve_config``).
  """
  if config.get("seeds") is None:
    return ()
  c = config_dict.ConfigDict({"seeds": config.seeds, "seed": config.get("seed", 0)})
  c.sampler = config.get("sampler", "")
  _resolve_seeds(c)
  return tuple(int(s) for s in c.seeds.split(","))


def seed_config(config, seed: int) -> config_dict.FrozenConfigDict:
  """The config of the single run of ``seed`` among a program's ``seeds``: ``config`` with
  ``seed=seed`` and ``seeds`` unset (what that run's config.json records)."""
  c = config_dict.ConfigDict(config.to_dict())
  c.seed, c.seeds = seed, None
  return config_dict.FrozenConfigDict(c)


def _nearest_multiples(value: int, step: int) -> str:
  below = value // step * step
  return f"{below} or {below + step}" if below else str(step)


def _resolve_topology(c: config_dict.ConfigDict) -> None:
  """Checks ``topology`` and fills the sizes of a graph prior (so config.json names its graph)."""
  if c.prior not in topologies.TOPOLOGIES:
    if c.topology:
      raise ConfigError(
        f"topology {c.topology!r} is given but prior {c.prior!r} is not a graph prior; use "
        f"--config.prior={'|'.join(topologies.TOPOLOGIES)}"
      )
    return
  if c.rao_blackwell != "none":
    raise ConfigError(
      f"rao_blackwell={c.rao_blackwell!r} needs the RBM prior (its conditionals given one side); "
      f"prior {c.prior!r} is a general graph: use rao_blackwell='none'"
    )
  num_latent = models.get_struct(c.struct).num_latent
  try:
    sizes = (
      topologies.parse_sizes(c.prior, c.topology)
      if c.topology
      else topologies.smallest_sizes(c.prior, num_latent)
    )
    topologies.latent_graph(c.prior, num_latent, sizes)  # refuses a topology that is too small
  except (ValueError, ImportError) as err:
    raise ConfigError(f"invalid topology for prior {c.prior!r}: {err}") from err
  c.topology = ",".join(map(str, sizes))


def _base_keys():
  from experiments.configs import base

  return base.get_config().keys()
