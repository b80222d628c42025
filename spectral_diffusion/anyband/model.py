"""The AnyBand-Diff model on arrays: the experiment's data, the physical operators, the model space
over the regression prior, loading a trained model, and physics-guided repair of tiles.

What is observed is a band mask M (1 = observed) and the observed values; the network diffuses
scale * (x - reference), the reference being the Gaussian band regression from the observed bands
(`diffusion.prior = "ridge"`) or 0.5, the scale global or per band (`diffusion.residual_scale`);
sampling is DDIM or DPM-Solver++ with physics-guided eps (PGS) and observed bands kept as given. A
workdir holds anyband/ (the model), anyband_no_dsm/ and anyband_no_mspl/ (ablations) and eval/.
"""
import dataclasses
import os

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from spectral_diffusion import baselines, checkpoints, data, guidance, losses, models, physics, sampling
from spectral_diffusion import sharding, training
from spectral_diffusion.data import splits
from spectral_diffusion.errors import UserInputError

VARIANTS = ("anyband", "no_dsm", "no_mspl")  # the model and its two training ablations
PRIORS = ("none", "ridge")


@dataclasses.dataclass
class AnyBandData:
  name: str
  wavelengths_nm: np.ndarray
  normaliser: object
  train: np.ndarray                # (H, W, N) normalised, or patches (P, h, w, N) (data.source=tfds)
  test: np.ndarray
  library: list                    # physics.SensorOnGrid, the sensors DSM draws from
  gaussian: baselines.BandGaussian

  @property
  def num_bands(self):
    return self.train.shape[-1]


def load_data(config):
  check_config(config)
  split = splits.load_split(config)
  if split.wavelengths_nm is None:
    raise UserInputError(f"{split.name} has no band wavelengths, which anyband needs (sensors, indices): "
                         f"set --config.data.wavelengths_key=NAME (a variable in the .mat file) or "
                         f"--config.data.wavelengths='(c1, c2, ...)' in nm")
  wl = physics.check_wavelengths(split.wavelengths_nm, split.num_bands)
  library = physics.sensor_library(wl, names=tuple(config.masking.sensors) or None)
  return AnyBandData(split.name, wl, split.normaliser, split.train, split.test, library,
                     baselines.fit_band_gaussian(data.patches.pixels(split.train)))


class Physics(flax.struct.PyTreeNode):
  """Normalised cube -> reflectance, and the physical operators on it (a pytree, so it can be a jit
  argument). Index bands are found once from the wavelengths (static)."""
  lo: float
  span: float
  reflectance_scale: float
  emulator: object = None          # physics.RTMEmulator or None
  wavelengths_nm: tuple = flax.struct.field(pytree_node=False, default=())

  def reflectance(self, x):
    return (x * self.span + self.lo) * self.reflectance_scale

  def indices(self, refl):
    """(NDVI, NDWI) of a reflectance cube; values floored at 1e-3 so a noisy x0_hat cannot divide by 0."""
    safe = jnp.maximum(refl, 1e-3)
    wl = np.asarray(self.wavelengths_nm)
    return physics.ndvi(safe, wl), physics.ndwi(safe, wl)


def make_physics(config, wavelengths_nm, normaliser, need_emulator):
  emulator = None
  if need_emulator:
    emulator = physics.load_emulator(wavelengths_nm, config.physics.rtm_weights or None)
  return Physics(float(normaliser.lo), float(normaliser.span), float(config.data.reflectance_scale),
                 emulator, tuple(float(w) for w in wavelengths_nm))


class Frame(flax.struct.PyTreeNode):
  """Where one batch's model space sits: x = y / scale + mean. mean (B, H, W, N) is the reference (it
  holds X_obs at the observed bands); scale (B, 1, 1, N) is target_scale, divided per band by the
  regression's conditional std when ModelSpace.per_band_scale."""
  mean: jax.Array
  scale: jax.Array


class ModelSpace(flax.struct.PyTreeNode):
  """Normalised cube <-> what the network diffuses: scale * (x - reference), where the reference is the
  Gaussian regression from the observed bands (prior "ridge") or 0.5 (prior "none"), and the scale is
  target_scale, per band divided by the regression's conditional std for this mask when per_band_scale
  (diffusion.residual_scale = "per_band"): each missing band's residual then has about unit variance,
  so noise and loss are sized to what the regression leaves unexplained in that band, not to the
  hardest mask's residual."""
  gaussian: baselines.BandGaussian
  target_scale: float
  use_prior: bool = flax.struct.field(pytree_node=False, default=True)
  per_band_scale: bool = flax.struct.field(pytree_node=False, default=False)

  def reference(self, x_obs, mask):
    """The Frame for observed values x_obs (B, H, W, N) and band mask (B, N), 1 = observed."""
    scale = jnp.full(mask.shape, self.target_scale, jnp.float32)
    if self.per_band_scale:
      mean, std = baselines.conditional_moments(self.gaussian, x_obs, mask)
      scale = scale / std
    elif self.use_prior:
      mean = baselines.conditional_mean(self.gaussian, x_obs, mask)
    else:
      mean = jnp.full(x_obs.shape, 0.5, x_obs.dtype)
    return Frame(mean, scale[:, None, None, :])

  def condition(self, x_obs, mask, frame):
    """What the network sees besides x_t and M, mapped to about [-1, 1]: C = X_obs * M, or, with the
    prior, the reference itself, which holds X_obs at the observed bands and the regression elsewhere
    (so it carries C, and C is reference * M)."""
    if self.use_prior:
      return 2.0 * frame.mean - 1.0
    return (2.0 * x_obs - 1.0) * mask[:, None, None, :]

  def to_model(self, x, frame):
    return frame.scale * (x - frame.mean)

  def from_model(self, y, frame):
    return y / frame.scale + frame.mean


def _one(value):
  """diffusion.prior as one value (a cascade's per-stage tuple of one entry, or the value)."""
  values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  if len(values) != 1:
    raise UserInputError(f"anyband takes one diffusion.prior, not {values}")
  return values[0]


def check_config(config):
  training.check_diffusion_settings(config.diffusion)
  prior = _one(config.diffusion.prior)
  if prior not in PRIORS:
    raise UserInputError(f"anyband takes diffusion.prior none or ridge, not {prior!r}")
  if config.diffusion.get("residual_scale") == "per_band" and prior != "ridge":
    raise UserInputError("diffusion.residual_scale=per_band needs diffusion.prior=ridge (it scales by "
                         "the regression's conditional std)")
  if config.data.normalise != "minmax":  # sensor simulation commutes only with one global affine map
    raise UserInputError("anyband needs data.normalise=minmax (one global scale keeps sensor "
                         "simulation valid in normalised units)")
  if config.model.name != "anyband_unet":
    raise UserInputError(f"method=anyband needs model.name=anyband_unet, not {config.model.name!r}")
  terms = tuple(config.physics.mspl_terms)
  if len(terms) != 3 or len(tuple(config.physics.guidance_terms)) != 3:
    raise UserInputError("physics.mspl_terms and physics.guidance_terms take three weights each")
  if config.physics.guidance_gradient not in guidance.JACOBIANS:
    raise UserInputError(f"unknown physics.guidance_gradient {config.physics.guidance_gradient!r}: use "
                         f"{' or '.join(guidance.JACOBIANS)}")
  return prior


def ablations(config):
  wanted = tuple(config.eval.ablations)
  for a in wanted:
    if a not in VARIANTS[1:]:
      raise UserInputError(f"unknown eval.ablations entry {a!r}: use {', '.join(VARIANTS[1:])}")
  return wanted


def needs_emulator(config, variant="anyband"):
  image_term = config.physics.mspl_weight and config.physics.mspl_terms[2] and variant != "no_mspl"
  return bool(image_term or (config.physics.guidance_scale and config.physics.guidance_terms[2]))


def model_dir(workdir, variant):
  return os.path.join(os.path.abspath(workdir), "anyband" if variant == "anyband" else f"anyband_{variant}")


@dataclasses.dataclass
class Bundle:
  """A trained AnyBand model ready to repair cubes (EMA parameters)."""
  model: object
  params: dict
  space: ModelSpace
  parameterisation: str
  meta: dict


def load_model(config, workdir, variant="anyband"):
  """A trained model of the experiment (EMA parameters, no optimizer), checked against the config."""
  directory = model_dir(workdir, variant)
  params, meta = checkpoints.load(directory, f"the {variant} model")
  checkpoints.check_metadata(meta, checkpoints.model_settings(config), directory)
  return bundle_from_checkpoint(params, meta, check_config(config))


def bundle_from_checkpoint(params, meta, prior):
  """A Bundle from EMA parameters and checkpoint metadata; prior is diffusion.prior (none | ridge)."""
  model = models.build_model(ml_collections.ConfigDict(meta["model"]), meta["num_bands"])
  gaussian = baselines.BandGaussian(*(jnp.asarray(meta["gaussian"][k], jnp.float32)
                                      for k in baselines.BandGaussian._fields))
  residual_scale = meta["diffusion"].get("residual_scale", "global")
  space = ModelSpace(gaussian, meta["target_scale"], prior == "ridge", residual_scale == "per_band")
  return Bundle(model, params, space, meta["diffusion"]["parameterisation"], meta)


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """eps(x_t, t) of the AnyBand model, hashable so a jax.tree_util.Partial of it reuses compiled steps."""
  model: object
  parameterisation: str

  def __call__(self, params, cond, mask, schedule, x_t, t):
    out = self.model.apply({"params": params}, x_t, t, cond, mask)
    return losses.to_eps_and_x0(schedule, self.parameterisation, x_t, t, out)[0]


@dataclasses.dataclass(frozen=True)
class GuidanceLoss:
  """PGS's physical loss of x0_hat (model space), per sample: observed-index consistency (NDVI and NDWI
  against the values the observed bands give, where they include the index bands), squared excursion
  outside the valid reflectance range, and the RTM emulator's manifold loss (its gradient taken as that
  of a squared distance to the manifold: the emulator's projection is held fixed)."""
  weights: tuple
  valid_range: tuple
  index_bands: tuple                # (red, green, nir) grid indices

  def __call__(self, phys, space, frame, x_obs, mask, y0_hat):
    w_idx, w_range, w_rtm = self.weights
    x0 = space.from_model(y0_hat, frame)
    refl = phys.reflectance(x0)
    b = x0.shape[0]
    total = jnp.zeros(b)
    if w_idx:
      red, green, nir = self.index_bands
      ndvi, ndwi = phys.indices(refl)
      ndvi_obs, ndwi_obs = phys.indices(phys.reflectance(x_obs))
      has_ndvi = mask[:, red] * mask[:, nir]
      has_ndwi = mask[:, green] * mask[:, nir]
      err = lambda a, c: jnp.mean(jnp.square(a - c).reshape(b, -1), axis=-1)
      total += w_idx * (has_ndvi * err(ndvi, ndvi_obs) + has_ndwi * err(ndwi, ndwi_obs))
    if w_range:
      lo, hi = self.valid_range
      out = jnp.square(jax.nn.relu(lo - refl)) + jnp.square(jax.nn.relu(refl - hi))
      total += w_range * jnp.mean(out.reshape(b, -1), axis=-1)
    if w_rtm:
      # Manifold loss = mean (x - Phi(x))^2. For a nearest-point projection Phi the gradient of this
      # squared distance is 2 (x - Phi(x)) / n exactly (J_Phi^T maps the normal x - Phi(x) to 0), so the
      # emulator is not differentiated (its MLPs run at every pixel; at the demo's size their backward
      # pass cost about 0.4 U-Net forwards).
      proj = jax.lax.stop_gradient(phys.emulator.project(refl))
      total += w_rtm * jnp.mean(jnp.square(refl - proj).reshape(b, -1), axis=-1)
    return total


@dataclasses.dataclass(frozen=True)
class PhysicsGuided:
  """guidance.physics_guidance as a hashable callable (see Denoiser); jacobian is
  physics.guidance_gradient ("network": the paper's gradient through the U-Net; "identity": skip it)."""
  jacobian: str = "network"

  def __call__(self, eps_fn, loss_fn, schedule, scale, x_t, t):
    # physics.guidance_scale > 0 lowers the loss (physics_guidance's default sign).
    return guidance.physics_guidance(eps_fn, loss_fn, schedule, scale, self.jacobian)(x_t, t)


def _guided_eps(bundle, params, schedule, x_obs, m, config, phys, pgs):
  """(eps_fn, frame) for normalised observed tiles x_obs (n, h, w, N) and band masks m (n, N): the
  model's eps, with physics guidance when pgs and physics.guidance_scale say so."""
  space = bundle.space
  frame = space.reference(x_obs, m)
  eps_fn = jax.tree_util.Partial(Denoiser(bundle.model, bundle.parameterisation), params,
                                 space.condition(x_obs, m, frame), m, schedule)
  scale = float(config.physics.guidance_scale) if pgs else 0.0
  if scale:
    wl = np.asarray(phys.wavelengths_nm)
    bands = tuple(physics.band_index(wl, nm) for nm in (physics.RED_NM, physics.GREEN_NM, physics.NIR_NM))
    loss = GuidanceLoss(tuple(float(w) for w in config.physics.guidance_terms),
                        tuple(float(v) for v in config.physics.valid_range), bands)
    eps_fn = jax.tree_util.Partial(PhysicsGuided(config.physics.guidance_gradient), eps_fn,
                                   jax.tree_util.Partial(loss, phys, space, frame, x_obs, m), schedule,
                                   jnp.float32(scale))
  return eps_fn, frame


def _check_sampler(settings):
  if settings.sampler == "ddpm":  # it would ignore num_steps (1 = the one-step estimate)
    raise UserInputError("anyband samples with ddim or dpm_solver_pp (physics guidance acts on their eps), "
                         "not ddpm; set sample.sampler")


def repair_tiles(bundle, schedule, x_obs, mask, rng, config, phys, pgs, num_steps):
  """Samples full cubes for a batch of tiles (n, h, w, N) in normalised units with band mask (N,), on
  the host driver (the sampler's own loop)."""
  settings = sampling.SampleSettings.from_config(config.sample)
  _check_sampler(settings)
  n = x_obs.shape[0]
  m = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), (n, mask.shape[-1]))
  params, x_obs, m = sharding.shard_for_sampling(bundle.params, jnp.asarray(x_obs, jnp.float32), m)
  eps_fn, frame = _guided_eps(bundle, params, schedule, x_obs, m, config, phys, pgs)
  y0 = sampling.run_sampler(settings, eps_fn, schedule, x_obs.shape, rng, num_steps=num_steps)
  return np.asarray(bundle.space.from_model(y0, frame))


@dataclasses.dataclass(frozen=True, eq=False)
class RepairProgram:
  """Repair of a batch of raw tiles as one traceable function:
  program(params, tiles (B, h, w, N) raw, observed (N,) or (B, N) with 1 = observed, rng) -> (B, h, w, N)
  raw, observed bands returned exactly as given when keep_observed. Missing bands may hold anything,
  NaN included. The sampler is a lax.scan, so under jit a batch is one program. Hashable by identity."""
  bundle: object
  schedule: object
  config: object             # the physics and sample sections are read at trace time
  phys: object
  normaliser: object
  pgs: bool = True
  num_steps: int = 0         # 0 = sample.num_steps
  keep_observed: bool = True

  def __call__(self, params, tiles, observed, rng):
    settings = sampling.SampleSettings.from_config(self.config.sample)
    _check_sampler(settings)
    tiles = jnp.asarray(tiles, jnp.float32)
    m = jnp.broadcast_to(jnp.asarray(observed, jnp.float32), (tiles.shape[0], tiles.shape[-1]))
    seen = m[:, None, None, :] > 0
    x_obs = jnp.where(seen, self.normaliser.forward(jnp.where(seen, tiles, 0.0)), 0.0)
    eps_fn, frame = _guided_eps(self.bundle, params, self.schedule, x_obs, m, self.config, self.phys, self.pgs)
    y0 = sampling.run_sampler(settings, eps_fn, self.schedule, x_obs.shape, rng,
                              num_steps=self.num_steps or None, loop="scan")
    out = self.normaliser.inverse(self.bundle.space.from_model(y0, frame)).astype(jnp.float32)
    return jnp.where(seen, tiles, out) if self.keep_observed else out


def repair(bundle, cube_obs, mask, rng, config, phys, pgs=True, progress=None, num_steps=None):
  """Rebuilds every band of a normalised cube (H, W, N) from the bands where mask (N,) is 1.

  Missing bands may hold anything (they are multiplied by the mask). The image is sampled in
  overlapping tiles with sample.sampler, ddim or dpm_solver_pp (num_steps, default sample.num_steps; 1
  gives the network's estimate of E[x0 | C, M] with no sampling noise); observed bands are copied back
  exactly when repair.keep_observed is set.
  """
  mask = np.asarray(mask, np.float32)
  if not mask.any():
    raise UserInputError("every band is missing: give at least one observed band")
  cube = np.where(mask > 0, np.asarray(cube_obs, np.float32), 0.0).astype(np.float32)
  size, overlap, _ = sampling.tiling(bundle.model.min_size, sampling.SampleSettings.from_config(config.sample),
                                     *cube.shape[:2])
  schedule = training.make_schedule(config.diffusion)
  calls = iter(range(1 << 30))

  def fn(tiles):
    out = repair_tiles(bundle, schedule, tiles, mask, jax.random.fold_in(rng, next(calls)), config, phys,
                       pgs, num_steps or config.sample.num_steps)
    if progress is not None:
      progress.update(1)
    return out

  out = data.predict_tiled(fn, cube, size, overlap, config.sample.batch_size)
  if config.repair.keep_observed:
    observed = np.flatnonzero(mask)
    sampling.keep_observed(out, cube[..., observed], observed)
  return out


