"""Defaults of every experiment; each experiment file starts from get_config(method) here.

The sections both methods read come first, then each method's own (scdm_sections, anyband_sections).
Every field below is a documented knob; an override of a key that is not here is an error.
"""
import ml_collections


def get_config(method="scdm"):
  """The defaults of `method` (scdm | anyband): the shared sections below, then the method's own."""
  if method not in METHOD_SECTIONS:
    raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHOD_SECTIONS)}")
  c = ml_collections.ConfigDict()
  c.method = method                  # scdm (RGB -> all bands, a cascade) | anyband (any bands -> all)
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "indian_pines"       # indian_pines | file | a TFDS builder: dfc2018, pavia_center,
                                     # pavia_university, washington_dc (see the paper configs)
  c.data.source = "scene"            # scene: read the whole scene and split it by columns (below) |
                                     # tfds: read data.name's TFDS builder (its patches, splits, stats)
  c.data.tfds_dir = ""               # tfds: where built datasets live ("" = $TFDS_DATA_DIR or
                                     # ~/tensorflow_datasets)
  c.data.manual_dir = ""             # tfds: where the downloaded scene file is ("" = TFDS's default,
                                     # <tfds_dir>/downloads/manual)
  c.data.tfds_config = ""            # tfds: the builder's config ("" = the paper's protocol)
  c.data.path = ""                   # source=scene: .npy / .mat / ENVI / GeoTIFF cube for name=file
  c.data.key = ""                    # variable name inside a .mat file ("" = the only large array)
  c.data.wavelengths_key = ""        # variable with band centres inside a .mat file
  c.data.wavelengths = ()            # band centres in nm, when the file has none (overrides the file's)
  c.data.normalise = "minmax"        # minmax (global over the training split) | affine
  c.data.offset = 0.0                # affine: (x - offset) / scale
  c.data.scale = 1.0
  c.data.num_bands = 0               # expected band count (0 = whatever the cube has); lets
                                     # `describe` plan the cascade without the data
  c.data.train_cols = (0, 72)        # source=scene: split by image columns [start, stop), no overlap
  c.data.test_cols = (80, 145)
  c.data.crop_size = 32              # random training crops
  c.data.augment = True              # random flips and rot90 of training crops
  c.data.reflectance_scale = 1.0     # raw value * this = reflectance (physics: indices, RTM emulator)

  c.model = ml_collections.ConfigDict()
  c.model.name = "scdm_unet"
  c.model.base_channels = 128
  c.model.channel_mults = (1, 2, 2, 2, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_levels = (3,)
  c.model.dropout = 0.1
  c.model.num_groups = 32
  c.model.time_embed_dim = 512
  c.model.dtype = "float32"          # compute dtype (bfloat16 for GPU/TPU); parameters stay float32
  c.model.remat = False              # jax.checkpoint the res blocks: less memory, more compute
  c.model.context_dim = 512          # anyband_unet: width of the CAM context vector h(C, M)

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02
  c.diffusion.parameterisation = "eps"   # eps (papers) | x0 | v : what the network predicts
  c.diffusion.loss = "mse"           # mse (paper) | l1 (official code), on the network's target
  c.diffusion.sam_weight = 1.0       # lambda for the SAM loss on the predicted x0
  c.diffusion.p_uncond = 0.1         # condition zeroed with this probability (for ICMG)
  c.diffusion.prior = ("none",)      # none | ridge | ridge_poly2 (one, or one per stage): diffuse the
                                     # residual over a ridge regression from the stage's input bands
  c.diffusion.target_scale = 2.0     # model space x0 = target_scale * (y - reference); 0 = auto (unit std)
  c.diffusion.residual_scale = "global"  # global: one target_scale | per_band: each band's residual over
                                     # the prior divided by the prior's error std in that band (needs a prior)

  c.train = ml_collections.ConfigDict()
  c.train.stages = ()                # which stages to train (0-based); () = all
  c.train.batch_size = 4
  c.train.num_steps = 100_000        # per stage
  c.train.optimizer = "adam"         # adam | adamw
  c.train.learning_rate = 1e-4
  c.train.lr_schedule = "constant"   # constant | cosine
  c.train.warmup_steps = 0
  c.train.weight_decay = 0.0
  c.train.grad_clip = 0.0            # global norm; 0 = off
  c.train.ema_decay = 0.9999
  c.train.ema_start = 2000           # EMA weights equal the raw weights before this step
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3

  c.sample = ml_collections.ConfigDict()
  c.sample.sampler = "ddim"          # ddim | ddpm | dpm_solver_pp | dpm_solver_pp_3m | sde_dpm_solver_pp | unipc
  c.sample.num_steps = 10            # network calls (DDIM 10 was best on the demo, README); ddpm takes all T
  c.sample.spacing = "logsnr"        # timesteps of the DPM-Solver++ and UniPC samplers: logsnr | linspace |
                                     # time_uniform | leading | trailing | karras (samplers.timesteps); ddim: linspace
  c.sample.unipc_order = 2           # unipc only: 2 or 3
  c.sample.eta = 0.0                 # ddim only
  c.sample.ddpm_variance = "beta"    # beta (official code) | posterior
  c.sample.estimator = "sample"      # what sample/repair return: sample (one draw: realistic texture) |
                                     # mean (the mean of num_samples draws: the posterior-mean estimate,
                                     # the one to judge by PSNR/SAM/SSIM; with num_steps=1 each draw is
                                     # already the network's one-step estimate of E[x0 | input])
  c.sample.num_samples = 1           # draws the mean averages; eval reports the first draw and, if >1,
                                     # their mean (one row per estimator)
  c.sample.tile_size = 64            # images are sampled in overlapping tiles of this size
  c.sample.tile_overlap = 16
  c.sample.batch_size = 8            # tiles per network call
  c.sample.loop = "auto"             # auto | scan | python (see samplers)
  c.sample.program = "auto"          # compiled: each tile batch is one compiled program (gathering,
                                     # every stage and step, blending) | python: stage by stage over the
                                     # whole image on the host (the figures in the README) | auto:
                                     # python on CPU, compiled elsewhere (see pipelines)
  c.sample.allow_out_of_range = False  # True: run on input whose values are far from the training
                                     # data's range, or blank (refused by default: wrong units or bytes
                                     # read in the wrong order give plausible-looking garbage)

  c.eval = ml_collections.ConfigDict()
  c.eval.ridge_alpha = 1e-3
  c.eval.spectra_pixels = 4          # pixels whose spectra are plotted

  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = False   # call jax.distributed.initialize() (multi-host)
  METHOD_SECTIONS[method](c)
  return c


def scdm_sections(c):
  """SCDM: the RGB bands, the cascade, and ICMG and PDT per stage."""
  c.data.rgb_nm = (640.0, 550.0, 460.0)   # RGB = bands nearest these wavelengths ...
  c.data.rgb_bands = ()              # ... unless 0-based band indices are given here
  c.cascade = ml_collections.ConfigDict()
  c.cascade.num_stages = 2           # band counts grow geometrically from RGB to all bands

  c.sample.icmg_scale = (0.0, 2.5)   # per stage; 0 = plain conditional (paper's best: ICMG in stage 2)
  c.sample.pdt_p_start = (0.96, 0.88)  # per stage; 1.0 = off
  c.sample.pdt_target = "state"      # state (official code, default: clamp x_t before the network call;
                                     # the published numbers came from it) | eps (the paper's text: clamp
                                     # the predicted noise; unstable: on an exact Gaussian denoiser the
                                     # clipped noise stays in the samples, whose spread grows to 5-38x
                                     # the data's; see README)


def anyband_sections(c):
  """AnyBand-Diff: dual stochastic masking, physical losses, physics-guided sampling, repair, protocols."""
  c.masking = ml_collections.ConfigDict()
  c.masking.dsm = True               # dual stochastic masking; False = each band dropped with p_drop_fixed
  c.masking.sensors = ()             # sensor library (physics.sensor_names()); () = every sensor that
                                     # has at least 2 bands on the data's grid
  c.masking.p_full_grid = 0.5        # per sample: the full grid instead of a simulated sensor
  c.masking.p_drop = (0.1, 0.7)      # band drop probability ~ U[p_drop] (paper)
  c.masking.p_drop_fixed = 0.5       # dsm=False

  c.physics = ml_collections.ConfigDict()
  c.physics.mspl_weight = 1.0        # training loss = diffusion loss + this * MSPL; 0 = no MSPL
  c.physics.mspl_terms = (1.0, 0.5, 0.2)   # pixel, region, image weights (paper); 0 switches one off
  c.physics.kde_bandwidth = 0.05     # region term: KDE of NDVI / NDWI over each patch
  c.physics.rtm_weights = ""         # RTM emulator .npz; "" = the one shipped for the data's grid
  c.physics.guidance_scale = 1.0     # physics-guided sampling scale s; 0 = off
  c.physics.guidance_terms = (1.0, 1.0, 0.1)  # observed-index consistency, valid range, RTM manifold
  c.physics.guidance_gradient = "network"  # network (paper: the gradient goes through the U-Net; a step
                                     # costs 2.4-3.2x an unguided one on CPU) | identity (skips the U-Net's
                                     # Jacobian: one forward pass, 1.4-1.5x; see guidance.physics_guidance)
  c.physics.valid_range = (0.0, 1.0) # reflectance outside this range is penalised by guidance

  c.repair = ml_collections.ConfigDict()
  c.repair.keep_observed = True      # observed bands come back exactly as given

  c.eval.missing_fractions = (0.1, 0.3, 0.5)  # anyband: random band masking protocols
  c.eval.input_band_counts = (3, 5, 7)        # anyband: k observed bands
  c.eval.sensors = ("sentinel2a_msi", "landsat8_oli")  # anyband: repair from a simulated sensor
  c.eval.ablations = ("no_dsm", "no_mspl")    # anyband: models trained without DSM / without MSPL


METHOD_SECTIONS = {"scdm": scdm_sections, "anyband": anyband_sections}
