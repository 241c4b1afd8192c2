"""Base configuration shared by every named experiment (math.md §6).

Keys left at ``None`` are filled in by ``experiments.config_lib.resolve_config``:

* ``beta`` (also ``-1``): from the β table of math.md §6 for the method, dataset and struct (for
  ``gumbolt``, the concrete temperature ``config_lib.GUMBOLT_TEMPERATURE``);
* the budget keys (``num_steps``, ``num_prior_samples``, ``num_sweeps``, ``eval_every``,
  ``eval_iw_samples``, ``val_iw_samples``, ``eval_num_examples``, ``ais_num_chains``,
  ``ais_num_temperatures``, ``checkpoint_every``): from the chosen ``protocol``, ``'cpu'`` (the
  default: a short run that finishes on a laptop CPU) or ``'paper'`` (math.md §6's full protocol).

``steps_per_dispatch`` = 0 (auto) is resolved there too, from the backend and the cadences.

Any key given on the command line (``--config.KEY=VALUE``) wins over both.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.method = "dvae_sharp"  # Objective, one of objectives.METHODS (each named config sets it).
  c.protocol = "cpu"  # 'cpu' (short default run) or 'paper' (math.md §6, 1M steps).

  # Data and model.
  # binarized_mnist | omniglot | caltech101_silhouettes, or the user's data (docs/data.md):
  # file:PATH (.npz / .npy) | tfds:NAME[:CONFIG] (prepared by tensorflow-datasets) |
  # bars_and_stripes:SIDE (generated; entropy known). Struct widths follow the data's dimension.
  c.dataset = "binarized_mnist"
  c.data_dir = ""  # '' = search path of dvae_jax.data (also --data_dir, $DVAE_JAX_DATA_DIR).
  # Grey values in [0, 1] of the user's data: 'dynamic' (train re-binarized every batch, valid /
  # test once) or 'static' (all once); the built-in datasets keep their papers' (leave 'dynamic').
  c.binarization = "dynamic"
  c.data_feature = ""  # tfds: the examples' feature to model; '' = 'image' or the only one.
  # Content MD5 of the user's data (dvae_jax.data.Dataset.identity), filled in when the data is
  # loaded and recorded in config.json: a resume or evaluation on other data is refused.
  c.dataset_md5 = ""
  c.struct = "1-layer-lin"  # 1-layer-lin | 1-layer-nonlin | 2-layer-nonlin | 4-layer-nonlin
  c.prior = "rbm"  # rbm | factorial | chimera | pegasus | zephyr (a quantum-annealer graph)
  # Sizes of a graph prior's topology: chimera 'm[,n[,t]]', pegasus 'm', zephyr 'm[,t]'; '' = the
  # smallest square one with num_latent nodes. Latent unit k is node k (topologies.latent_graph).
  c.topology = ""
  c.k = 1  # Importance samples K of the training objective (math.md §4).
  c.beta = config_dict.placeholder(float)  # Sharpness (gumbolt: temperature τ); None/-1: table.
  # Relaxed posterior samples (math.md §1): 'ancestral' or 'inverse_cdf'; the same estimator in law,
  # ancestral is 12-18x faster for the numerically inverted smoothings (power, Gaussian, un+exp).
  c.relaxed_sampler = "ancestral"

  # Optimisation (math.md §6).
  c.num_steps = config_dict.placeholder(int)
  c.batch_size = 100
  c.learning_rate = 3e-3  # Base of the piecewise-constant schedule.
  c.adam_eps = 1e-3
  # Where ε enters Adam: 'optax' (after bias correction) or 'tf1' (before it, as the reference
  # code's tf.train.AdamOptimizer: effective ε/√(1 − 0.999ᵗ); dvae_jax.optim).
  c.adam_eps_mode = "optax"
  c.weight_decay = 1e-4  # Coefficient of ½‖w‖² (dense kernels, BN scales, RBM W).
  c.kl_warmup_fraction = 0.3  # κ = min(t / (fraction · num_steps), 1).
  # Train steps per dispatch S (experiments.train_step.make_fused_steps): S steps in one jitted
  # lax.scan over S batches gathered on the device; the same run as S = 1 (bitwise on CPU). Logs,
  # evaluations, checkpoints and log Z refreshes happen between dispatches: log_every, eval_every,
  # checkpoint_every and log_z_refresh_every must be multiples of S. 0 (auto): the largest S up to
  # the backend's preferred value (config_lib.PREFERRED_STEPS_PER_DISPATCH: cpu 10, gpu/tpu 100)
  # that divides every nonzero cadence (1 when log_every = 1); config.json records the S chosen.
  c.steps_per_dispatch = 0

  # Prior sampler (math.md §3).
  c.sampler = "pa"  # pa | pcd | dimod (each step's states drawn by a dimod sampler on the host)
  # With sampler='dimod' (the [dwave] extra; samplers.external): simulated_annealing | tabu |
  # steepest_descent | random | module.path:Name of any dimod.Sampler (a QPU's, a user's), and its
  # .sample keyword arguments as KEY=VALUE,... (num_reads defaults to num_prior_samples, seed to
  # one drawn from the step's key). One device; num_sweeps is not used.
  c.dimod_sampler = ""
  c.dimod_kwargs = ""
  c.num_prior_samples = config_dict.placeholder(int)
  c.num_sweeps = config_dict.placeholder(int)
  # Gradient of log Z from the samples (RBM.rao_blackwellize): 'none' (sampled z1, z2: math.md §2),
  # 'z2' (E[z2|z1] for z2) or 'symmetric' (both conditional means, averaged): same expectation,
  # lower variance (1.9x per sample on the default prior); not the default: changes the trajectory.
  c.rao_blackwell = "none"
  # The log Z tracker (dvae_jax.samplers.log_z_tracking): every this many steps an independent
  # population of log_z_tracker_replicas, moved along the same parameters by persistent PA with
  # log_z_tracker_sweeps sweeps, replaces the sampler's running log Z (which drifts low). 0: off,
  # the default since the training AIS below re-anchors that value at every logged step (the
  # tracker was good to ± 0.6 nats; docs/training.md "The training log Z"); 50 was the default
  # before.
  c.log_z_refresh_every = 0
  c.log_z_tracker_replicas = 512
  # 200: 40 left the tracker −0.44 / −0.72 nats low at steps 2,500 / 5,000 of the default run.
  c.log_z_tracker_sweeps = 200
  # ESS fraction below which a refresh splits the parameter change into stages (0.99: ≈ 3× the
  # stages of 0.9, spread 0.16 instead of 0.21–0.26 nats after 2,500 steps; docs/results.md).
  c.log_z_tracker_target_ess = 0.99
  # The reported training log Z at every logged step (and through it loss, kl, neg_elbo,
  # neg_iw_bound, log_prior): a fresh AIS of this many chains × temperatures for the step's prior
  # (experiments.sampler_monitor.TrainLogZ), its error bar logged as terms/log_z_stderr; the
  # sampler's running value is re-anchored to it. 0 chains: off (the running / tracked value).
  c.train_ais_num_chains = 512
  c.train_ais_num_temperatures = 300

  # Evaluation: the discrete model, AIS log Z (math.md §3, §6).
  c.eval_every = config_dict.placeholder(int)  # Validation NLL every this many steps.
  c.val_iw_samples = config_dict.placeholder(int)  # Importance samples of the validation NLL.
  c.eval_iw_samples = config_dict.placeholder(int)  # Importance samples of the final test NLL.
  c.eval_num_examples = config_dict.placeholder(int)  # Examples per split; 0 = the whole split.
  c.eval_batch_size = 100  # Examples per evaluation batch.
  c.ais_num_chains = config_dict.placeholder(int)
  c.ais_num_temperatures = config_dict.placeholder(int)
  # Sampler diagnostic at every evaluation (dvae_jax.samplers.diagnostics, docs/training.md "Reading
  # the sampler diagnostic"): the persistent population's moment error against two fresh population-
  # annealing runs of this many replicas × temperatures for its own parameters. 0 replicas: off.
  c.sampler_diagnostic_replicas = 2048
  c.sampler_diagnostic_temperatures = 1000

  # Bookkeeping.
  c.seed = 0
  # Several independent runs in one program (experiments.train, docs/training.md "Many seeds in one
  # program"): distinct integers >= 0 separated by commas, e.g. '0,1,2,3'. Each seed's run is the
  # single run of seed=N, written to WORKDIR/seed_N/; `seed`, if set (not 0), must be one of them.
  # Unset (None): one run of `seed`.
  c.seeds = config_dict.placeholder(str)
  c.log_every = 100  # Metrics row every this many steps (and at the last step).
  c.checkpoint_every = config_dict.placeholder(int)
  c.max_checkpoints = 2  # Latest checkpoints kept (the best-validation one is kept too).
  c.num_image_samples = 64  # Model samples / reconstructions in each PNG grid.

  # Divergence guard (experiments/guards.py; docs/reliability.md): the run stops, naming the step,
  # the term and its value, when a value leaves the range of healthy runs (largest seen: -ELBO 451,
  # log Z 290, gradient norm 71; benchmarks/healthy_ranges.py). Each limit
  # may be inf (no check).
  c.guard_max_nats = 1e4  # |training loss / -ELBO| and validation NLL, nats per example.
  c.guard_max_log_z = 1e4  # |log Z| of the RBM prior (sampler's tracked value and AIS).
  c.guard_max_grad_norm = 1e4  # Gradient norm limit ...
  c.guard_grad_norm_steps = 20  # ... exceeded at this many consecutive steps.

  c.debug_nan_step = 0  # Test hook: if > 0, feed NaN data to the step numbered so (NaN guard).
  c.debug_signal_step = 0  # Test hook: if > 0, the run sends itself SIGTERM after that step.
  return c
