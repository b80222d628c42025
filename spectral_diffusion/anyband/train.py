"""AnyBand-Diff training (masked conditional diffusion) on the shared loop (`training.fit`): each
sample's condition comes from dual stochastic masking (a simulated sensor or the full grid, then random
band drops), the network predicts the cube in the model space over the regression prior, and the loss
adds the multi-scale physical loss (MSPL). Ablations: no_dsm (uniform band drops), no_mspl.
"""
import jax
import jax.numpy as jnp
import numpy as np

from spectral_diffusion import baselines, checkpoints, data, losses, models, physics, schedules, training
from spectral_diffusion.anyband import masking
from spectral_diffusion.anyband.model import VARIANTS, ModelSpace, ablations, check_config, load_data
from spectral_diffusion.anyband.model import make_physics, model_dir, needs_emulator
from spectral_diffusion.data import values

def mspl(phys, weights, bandwidth, corr_prior, x0_hat, x0):
  """Per-sample multi-scale physical loss on normalised cubes (B, H, W, N)."""
  w_px, w_reg, w_img = weights
  total = jnp.zeros(x0.shape[0])
  if w_px:
    total += w_px * losses.pixel_loss(x0_hat, corr_prior)
  if w_reg or w_img:
    r_hat, r = phys.reflectance(x0_hat), phys.reflectance(x0)
    if w_reg:
      (ndvi_hat, ndwi_hat), (ndvi, ndwi) = phys.indices(r_hat), phys.indices(r)
      total += w_reg * (losses.region_loss(ndvi_hat, ndvi, bandwidth) +
                        losses.region_loss(ndwi_hat, ndwi, bandwidth))
    if w_img:
      total += w_img * losses.image_loss(phys.emulator.project, r_hat, r)
  return total


def make_train_step(model, schedule, optimizer, config, variant, space, bank, phys, corr_prior):
  """Pure (state, batch, rng) -> (state, metrics), as scdm.train.make_train_step, for masked conditional
  diffusion: masks are drawn inside the step."""
  dc, tc = config.diffusion, config.train
  use_dsm = config.masking.dsm and variant != "no_dsm"
  mspl_weight = 0.0 if variant == "no_mspl" else float(config.physics.mspl_weight)
  terms = tuple(float(w) for w in config.physics.mspl_terms)
  T = schedule.num_timesteps

  def step_fn(state, batch, rng):
    x0 = batch["x0"]
    b = x0.shape[0]
    rng = jax.random.fold_in(rng, state.step)
    r_mask, r_t, r_noise, r_drop = jax.random.split(rng, 4)
    if use_dsm:
      x_obs, mask = masking.dual_stochastic_mask(r_mask, x0, bank, config.masking.p_full_grid,
                                                 tuple(config.masking.p_drop))
    else:
      x_obs, mask = masking.uniform_drop_mask(r_mask, x0, config.masking.p_drop_fixed)
    frame = space.reference(x_obs, mask)
    cond = space.condition(x_obs, mask, frame)
    y0 = space.to_model(x0, frame)
    t = jax.random.randint(r_t, (b,), 0, T)
    eps = jax.random.normal(r_noise, y0.shape, y0.dtype)
    y_t = schedules.q_sample(schedule, y0, t, eps)

    def loss_fn(params):
      out = model.apply({"params": params}, y_t, t, cond, mask, train=True, rngs={"dropout": r_drop})
      # SAM is taken on the data-space cube: a per-band model space changes spectral angles
      per_sample = losses.diffusion_loss(schedule, dc.parameterisation, dc.loss, 0.0, y0, y_t, t, eps, out,
                                         None)
      if dc.sam_weight or mspl_weight:
        x0_hat = space.from_model(losses.to_eps_and_x0(schedule, dc.parameterisation, y_t, t, out)[1], frame)
      if dc.sam_weight:
        per_sample += dc.sam_weight * losses.sam_loss(x0_hat, x0)
      if mspl_weight:
        per_sample += mspl_weight * mspl(phys, terms, config.physics.kde_bandwidth, corr_prior, x0_hat, x0)
      return per_sample.mean(), per_sample

    return training.apply_gradients(state, loss_fn, optimizer, tc, t, T)

  return step_fn


def correlation_prior(train_cube, crop_size, seed, num_crops=256):
  """S for the pixel term: the mean band correlation over random training crops of the training size."""
  rng = np.random.default_rng([seed, 7])
  crops = data.random_crops(train_cube, rng, num_crops, crop_size, False)
  return jnp.mean(jax.jit(losses.band_correlation)(jnp.asarray(crops)), axis=0)


def fit_model_space(config, d, bank, prior):
  """The model space; target_scale 0 = auto: unit std of the residual under DSM on training crops (with
  a per-band scale, unit RMS of the scaled residual over the missing bands)."""
  gaussian = baselines.BandGaussian(*(jnp.asarray(a) for a in d.gaussian))
  per_band = config.diffusion.residual_scale == "per_band"
  scale = float(config.diffusion.target_scale)
  if scale:
    return ModelSpace(gaussian, scale, prior == "ridge", per_band)
  space = ModelSpace(gaussian, 1.0, prior == "ridge", per_band)
  crops = jnp.asarray(data.random_crops(d.train, np.random.default_rng([config.seed, 8]), 64,
                                        config.data.crop_size, False))
  x_obs, mask = masking.dual_stochastic_mask(jax.random.key(config.seed), crops, bank,
                                             config.masking.p_full_grid, tuple(config.masking.p_drop))
  resid = space.to_model(crops, space.reference(x_obs, mask))
  if per_band:
    missing = jnp.broadcast_to(mask[:, None, None, :] == 0, resid.shape)
    spread = jnp.sqrt(jnp.sum(jnp.where(missing, jnp.square(resid), 0.0)) / jnp.maximum(jnp.sum(missing), 1))
  else:
    spread = jnp.std(resid)
  return ModelSpace(gaussian, float(1.0 / max(float(spread), 1e-6)), prior == "ridge", per_band)


def metadata(config, d, space, variant):
  """What repair needs besides the weights: data space, prior, band grid (JSON beside the checkpoint)."""
  return {
      "method": "anyband", "variant": variant, "num_bands": d.num_bands,
      "wavelengths_nm": [float(w) for w in d.wavelengths_nm],
      "normaliser": d.normaliser.to_dict(), "target_scale": space.target_scale,
      "value_range": values.value_range(d.normaliser, d.train),  # input checks at repair time
      "gaussian": {k: np.asarray(v).tolist() for k, v in d.gaussian._asdict().items()},
      "sensors": [s.name for s in d.library], "crop_size": config.data.crop_size,
      **checkpoints.model_settings(config), "config": checkpoints.config_dict(config),
  }


def example_args(num_bands, crop_size):
  cube = jnp.zeros((1, crop_size, crop_size, num_bands), jnp.float32)
  return cube, jnp.zeros((1,), jnp.int32), cube, jnp.zeros((1, num_bands), jnp.float32)


def train_variant(config, workdir, d, variant, mesh=None):
  """Trains (or resumes) one model of the experiment; returns its final TrainState."""
  prior = check_config(config)
  n = d.num_bands
  model = models.build_model(config.model, n)
  training.check_crop_size(config, model)
  optimizer = training.make_optimizer(config.train)
  bank = masking.sensor_bank(d.library, n)
  space = fit_model_space(config, d, bank, prior)
  phys = make_physics(config, d.wavelengths_nm, d.normaliser, needs_emulator(config, variant))
  pixel_term = variant != "no_mspl" and config.physics.mspl_weight and config.physics.mspl_terms[0]
  corr = correlation_prior(d.train, config.data.crop_size, config.seed) if pixel_term else None
  init = training.state_initializer(model, optimizer,
                                 example_args(n, config.data.crop_size))
  step_fn = make_train_step(model, training.make_schedule(config.diffusion), optimizer, config, variant, space,
                            bank, phys, corr)
  stream = VARIANTS.index(variant)
  return training.fit(config, model_dir(workdir, variant), init, step_fn,
                   lambda step: {"x0": data.random_crops(d.train, np.random.default_rng([config.seed, stream, step]),
                                                         config.train.batch_size, config.data.crop_size,
                                                         config.data.augment)},
                   metadata(config, d, space, variant), stream=stream, desc=f"anyband ({variant})",
                   workdir=workdir, mesh=mesh)


def train(config, workdir):
  """Trains the model and the configured ablations (each resumed when checkpoints exist); returns the
  experiment's data."""
  d = load_data(config)
  # Sensor bands outside the grid are skipped, never used silently: say which.
  print("sensor library on this grid:\n  " + "\n  ".join(physics.describe_library(d.library)))
  training.write_config(config, workdir)
  for variant in ("anyband",) + ablations(config):
    train_variant(config, workdir, d, variant)
  return d


def train_and_evaluate(config, workdir):
  """Trains the model and the configured ablations, then writes workdir/eval; returns the report."""
  from spectral_diffusion.anyband import evaluate  # evaluation pulls in matplotlib; training does not need it
  return evaluate.evaluate(config, workdir, train(config, workdir))
