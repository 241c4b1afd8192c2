"""Tests of experiments/config_lib.py and experiments/configs: names, overrides, β, refusals."""

import hypothesis
import hypothesis.strategies as st
import jax
import pytest
from ml_collections import config_dict

from experiments import config_lib


def test_every_named_config_resolves():
  from dvae_jax import objectives

  names = set(config_lib.CONFIG_NAMES)
  assert set(objectives.METHODS) <= names  # one config file per method
  assert "dvae_sharp_factorial" in names
  for name in config_lib.CONFIG_NAMES:
    config = config_lib.resolve_config(config_lib.load_config(name))
    assert config.method == name.removesuffix("_factorial")
    assert config.beta > 0 and config.num_steps >= 1
  assert config_lib.resolve_config(config_lib.load_config("dvae_sharp_factorial")).prior == (
    "factorial"
  )


def test_methods_match_the_library():
  from dvae_jax import objectives

  assert set(config_lib.METHODS) == set(objectives.METHODS)


# (dataset, struct, method, β) read off the math.md §6 table by hand.
@pytest.mark.parametrize(
  "dataset, struct, method, beta",
  [
    ("binarized_mnist", "1-layer-lin", "dvae_sharp", 40),
    ("binarized_mnist", "1-layer-lin", "dvae", 5),
    ("binarized_mnist", "1-layer-nonlin", "dvae_pp_exp", 14),
    ("binarized_mnist", "2-layer-nonlin", "dvae_sharp_gauss", 25),
    ("binarized_mnist", "4-layer-nonlin", "dvae_sharp_unexp", 16),
    ("binarized_mnist", "1-layer-nonlin", "dvae_sharp", 40),
    ("omniglot", "1-layer-lin", "dvae", 4),
    ("omniglot", "1-layer-nonlin", "dvae_sharp_gi", 30),
    ("omniglot", "2-layer-nonlin", "dvae_sharp", 20),
    ("omniglot", "4-layer-nonlin", "dvae_sharp_exp", 8),
    ("omniglot", "1-layer-nonlin", "dvae_pp_power", 40),
  ],
)
def test_beta_from_the_paper_table(dataset, struct, method, beta):
  config = config_lib.load_config(method)
  config.dataset, config.struct = dataset, struct
  assert config_lib.resolve_config(config).beta == beta
  config.beta = -1.0
  assert config_lib.resolve_config(config).beta == beta
  config.beta = 7.5
  assert config_lib.resolve_config(config).beta == 7.5


def test_paper_protocol_is_math_section_6():
  config = config_lib.load_config("dvae_sharp")
  config.protocol = "paper"
  c = config_lib.resolve_config(config)
  assert (c.num_steps, c.batch_size, c.learning_rate, c.adam_eps) == (1_000_000, 100, 3e-3, 1e-3)
  assert (c.num_prior_samples, c.num_sweeps, c.sampler) == (1000, 40, "pa")
  assert (c.eval_every, c.val_iw_samples, c.eval_iw_samples, c.eval_num_examples) == (
    20_000,
    100,
    4000,
    0,
  )
  assert (c.ais_num_chains, c.ais_num_temperatures) == (1024, 1000)
  assert (c.kl_warmup_fraction, c.weight_decay) == (0.3, 1e-4)


def test_cpu_protocol_is_smaller_and_overrides_win():
  config = config_lib.load_config("dvae_sharp")
  cpu = config_lib.resolve_config(config)
  assert cpu.protocol == "cpu" and cpu.num_steps < 1_000_000
  assert (cpu.num_prior_samples, cpu.num_sweeps) == (1000, 10)  # issue 10's sweep-budget study
  config.num_steps, config.protocol = 123, "paper"
  c = config_lib.resolve_config(config)
  assert c.num_steps == 123 and c.num_sweeps == 40
  assert config_lib.resolve_config(config, data_dir="/x").data_dir == "/x"


@pytest.mark.parametrize(
  "struct, protocol, sweeps",
  [
    ("1-layer-lin", "cpu", 10),
    ("1-layer-nonlin", "cpu", 10),
    # The sweep study: 10 sweeps lagged on the 400-unit prior (diagnostic 1.50–1.60), 40 did not.
    ("2-layer-nonlin", "cpu", 40),
    ("4-layer-nonlin", "cpu", 40),
    ("2-layer-nonlin", "paper", 40),
    ("1-layer-lin", "paper", 40),
  ],
)
def test_num_sweeps_default_follows_the_sweep_study_per_struct(struct, protocol, sweeps):
  config = config_lib.load_config("dvae")
  config.struct, config.protocol = struct, protocol
  assert config_lib.resolve_config(config).num_sweeps == sweeps
  config.num_sweeps = 3
  assert config_lib.resolve_config(config).num_sweeps == 3


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("sampler", "foo", r"invalid sampler 'foo'; valid values: pa, pcd"),
    ("struct", "bar", r"invalid struct 'bar'; valid values: 1-layer-lin, 1-layer-nonlin"),
    ("dataset", "baz", r"invalid dataset 'baz'; valid values: binarized_mnist, omniglot"),
    ("prior", "gauss", r"invalid prior 'gauss'; valid values: rbm, factorial, chimera"),
    ("protocol", "fast", r"invalid protocol 'fast'; valid values: paper, cpu"),
    ("method", "vae", r"invalid method 'vae'; valid values: dvae, "),
    ("beta", 0.0, r"invalid beta 0.0: must be > 0"),
    ("beta", -2.0, r"invalid beta -2.0: must be > 0"),
    ("k", 0, r"invalid k 0: must be an integer >= 1"),
    ("num_steps", 0, r"invalid num_steps 0"),
    ("batch_size", -1, r"invalid batch_size -1"),
    ("learning_rate", 0.0, r"invalid learning_rate 0.0: must be > 0"),
    ("kl_warmup_fraction", 1.5, r"kl_warmup_fraction 1.5"),
    ("log_z_tracker_target_ess", 1.0, r"invalid log_z_tracker_target_ess 1.0: must be in \(0, 1\)"),
    ("log_z_tracker_target_ess", 0.0, r"invalid log_z_tracker_target_ess 0.0: must be in"),
  ],
)
def test_bad_values_are_refused_by_name(key, value, message):
  config = config_lib.load_config("dvae_sharp")
  config[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.resolve_config(config)


def test_unknown_key_in_a_config_is_refused():
  config = config_lib.load_config("dvae_sharp")
  config.typo = 1
  with pytest.raises(config_lib.ConfigError, match=r"unknown config keys \['typo'\]"):
    config_lib.resolve_config(config)


def test_expand_config_argv_maps_names_to_files():
  argv = config_lib.expand_config_argv(["run", "--config=dvae_sharp", "--config.k=5"])
  assert (
    argv[1] == f"--config={config_lib.CONFIG_DIR / 'dvae_sharp.py'}" and argv[2] == "--config.k=5"
  )
  argv = config_lib.expand_config_argv(["run", "--config", "dvae", "--workdir=/w"])
  assert argv[2] == str(config_lib.CONFIG_DIR / "dvae.py")
  path = str(config_lib.CONFIG_DIR / "dvae.py")
  assert config_lib.expand_config_argv(["run", f"--config={path}"])[1] == f"--config={path}"
  assert config_lib.expand_config_argv(["run", "--workdir=/w"]) == ["run", "--workdir=/w"]


def test_expand_config_argv_refuses_unknown_names_and_keys():
  with pytest.raises(config_lib.ConfigError, match=r"unknown config 'nope'; valid configs: dvae, "):
    config_lib.expand_config_argv(["run", "--config=nope"])
  with pytest.raises(
    config_lib.ConfigError, match=r"unknown config key 'samplr'.*valid keys: .*sampler"
  ):
    config_lib.expand_config_argv(["run", "--config=dvae_sharp", "--config.samplr=pa"])
  with pytest.raises(config_lib.ConfigError, match="not found"):
    config_lib.expand_config_argv(["run", "--config=/no/such/file.py"])


def test_placeholders_keep_their_types():
  config = config_lib.load_config("dvae_sharp")
  assert isinstance(config, config_dict.ConfigDict)
  with pytest.raises(TypeError):
    config.num_steps = "many"


def test_gumbolt_beta_is_the_concrete_temperature():
  from dvae_jax import objectives

  for dataset in ("binarized_mnist", "omniglot"):
    config = config_lib.load_config("gumbolt")
    config.dataset, config.struct = dataset, "2-layer-nonlin"
    c = config_lib.resolve_config(config)
    assert c.beta == config_lib.GUMBOLT_TEMPERATURE
    method = objectives.get_method(c.method, c.beta)
    assert method.family == objectives.FAMILY_GUMBOLT and method.smoothing is None
  assert "gumbolt" not in config_lib.PAPER_METHODS and config_lib.METHODS[-1] == "gumbolt"


def test_graph_prior_resolves_its_topology_sizes():
  pytest.importorskip("dwave_networkx", reason="the [dwave] extra is not installed")
  config = config_lib.load_config("dvae_sharp")
  config.prior = "chimera"
  assert config_lib.resolve_config(config).topology == "5,5,4"  # 200 latents: C(5, 5, 4)
  config.topology = "6"
  assert config_lib.resolve_config(config).topology == "6,6,4"  # dwave-networkx's defaults
  config.struct = "2-layer-nonlin"
  config.topology = ""
  assert config_lib.resolve_config(config).topology == "8,8,4"  # 400 latents
  # An RBM config keeps topology '' (so runs made before the key existed still resume).
  assert config_lib.resolve_config(config_lib.load_config("dvae_sharp")).topology == ""


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      {"prior": "chimera", "topology": "4"},
      r"chimera\(4, 4, 4\) has 128 nodes, fewer than the 200",
    ),
    ({"prior": "zephyr", "topology": "2,4,1"}, r"invalid topology for prior 'zephyr'.*m\[,t\]"),
    ({"prior": "rbm", "topology": "5"}, r"topology '5' is given but prior 'rbm' is not a graph"),
    ({"prior": "pegasus", "rao_blackwell": "z2"}, r"rao_blackwell='z2' needs the RBM prior"),
  ],
)
def test_bad_graph_priors_are_refused_by_name(overrides, message):
  pytest.importorskip("dwave_networkx", reason="the [dwave] extra is not installed")
  config = config_lib.load_config("dvae_sharp")
  config.update(overrides)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.resolve_config(config)


# ----------------------------------------------------------------------------------------------
# steps_per_dispatch = 0 (auto): the largest S <= the backend's preferred value that divides every
# nonzero cadence.


def _brute_force_auto(cadences, preferred):
  """The largest S in 1..preferred that divides every nonzero cadence, by trying each S."""
  return max(s for s in range(1, preferred + 1) if all(c % s == 0 for c in cadences if c))


@hypothesis.settings(deadline=None, max_examples=300)
@hypothesis.given(
  cadences=st.lists(
    st.one_of(st.just(0), st.integers(1, 5000), st.sampled_from([100, 250, 2500, 5000, 20_000])),
    min_size=len(config_lib.DISPATCH_CADENCES),
    max_size=len(config_lib.DISPATCH_CADENCES),
  ),
  preferred=st.integers(1, 150),
)
def test_auto_steps_per_dispatch_is_the_largest_divisor_up_to_the_preferred(cadences, preferred):
  auto = config_lib.auto_steps_per_dispatch(cadences, preferred)
  assert auto == _brute_force_auto(cadences, preferred)
  assert 1 <= auto <= preferred
  assert all(c % auto == 0 for c in cadences)  # 0 % S == 0: a cadence of 0 (never) takes any S


def test_auto_steps_per_dispatch_examples():
  assert config_lib.auto_steps_per_dispatch([0, 0, 0, 0], 10) == 10  # nothing to land on
  assert config_lib.auto_steps_per_dispatch([], 100) == 100
  assert config_lib.auto_steps_per_dispatch([100, 5000, 2500, 0], 10) == 10  # the cpu protocol
  assert config_lib.auto_steps_per_dispatch([100, 5000, 2500, 0], 100) == 100
  assert config_lib.auto_steps_per_dispatch([100, 5000, 2500, 50], 100) == 50
  assert config_lib.auto_steps_per_dispatch([1, 2, 2, 1], 10) == 1  # log_every = 1: as S = 1
  assert config_lib.auto_steps_per_dispatch([12, 0, 18, 0], 10) == 6
  assert config_lib.auto_steps_per_dispatch([7, 7, 7, 7], 10) == 7
  assert config_lib.auto_steps_per_dispatch([13, 26, 0, 0], 10) == 1  # a prime above preferred


def _resolved(**overrides):
  config = config_lib.load_config("dvae_sharp")
  config.update(overrides)
  return config_lib.resolve_config(config)


def test_auto_steps_per_dispatch_by_backend(monkeypatch):
  """The default resolves from ``jax.default_backend()`` and the cadences; a backend without a
  preferred value gets 1."""
  assert config_lib.load_config("dvae_sharp").steps_per_dispatch == 0  # the default is auto
  assert config_lib.PREFERRED_STEPS_PER_DISPATCH == {"cpu": 10, "gpu": 100, "tpu": 100}
  # Default cadences: log 100, eval 5000, checkpoint 2500, no log Z refresh; paper: 100, 20k, 20k.
  for backend, s in (("cpu", 10), ("gpu", 100), ("tpu", 100), ("other", 1)):
    monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
    assert _resolved().steps_per_dispatch == s
    assert _resolved(protocol="paper").steps_per_dispatch == s
    assert _resolved(log_z_refresh_every=30).steps_per_dispatch == min(s, 10)
    assert _resolved(log_every=1).steps_per_dispatch == 1  # exactly today's one step per dispatch
    assert _resolved(log_every=7, eval_every=70, checkpoint_every=35).steps_per_dispatch == min(
      s, 7
    )


@hypothesis.settings(deadline=None, max_examples=60)
@hypothesis.given(
  log_every=st.integers(1, 400),
  eval_every=st.integers(1, 6000),
  checkpoint_every=st.integers(1, 6000),
  log_z_refresh_every=st.integers(0, 400),
)
def test_auto_never_moves_a_cadence_and_never_reaches_the_runner_as_zero(
  log_every, eval_every, checkpoint_every, log_z_refresh_every
):
  cadences = dict(
    log_every=log_every,
    eval_every=eval_every,
    checkpoint_every=checkpoint_every,
    log_z_refresh_every=log_z_refresh_every,
  )
  c = _resolved(**cadences)
  preferred = config_lib.PREFERRED_STEPS_PER_DISPATCH.get(jax.default_backend(), 1)
  assert c.steps_per_dispatch == _brute_force_auto(cadences.values(), preferred) >= 1
  assert {key: c[key] for key in cadences} == cadences  # the user's cadences, unmoved
  # The resolved config resolves to itself: S is now explicit and divides every cadence.
  assert config_lib.resolve_config(c).steps_per_dispatch == c.steps_per_dispatch


def test_explicit_steps_per_dispatch_is_kept_or_refused():
  for s in (1, 2, 4, 5, 10, 20, 50, 100):  # divisors of the cpu protocol's cadences, kept as given
    assert _resolved(steps_per_dispatch=s).steps_per_dispatch == s
  with pytest.raises(
    config_lib.ConfigError,
    match=r"steps_per_dispatch=30 must divide every cadence.*log_every=100 is not a multiple "
    r"\(nearest: 90 or 120\).*or leave steps_per_dispatch at 0 \(auto\)",
  ):
    _resolved(steps_per_dispatch=30)


@pytest.mark.parametrize("value", [-1, -10])
def test_negative_steps_per_dispatch_is_refused(value):
  with pytest.raises(
    config_lib.ConfigError,
    match=rf"invalid steps_per_dispatch {value}: must be an integer >= 1 .*or 0 \(the default\)",
  ):
    _resolved(steps_per_dispatch=value)
