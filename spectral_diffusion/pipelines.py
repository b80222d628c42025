"""Trained models as Python objects: arrays in, arrays out, in the data's own units.

    from spectral_diffusion import pipelines
    scdm = pipelines.SCDM.load("runs/demo")                       # EMA parameters + metadata only
    cube = scdm.sample(rgb, jax.random.key(0))                     # (H, W, 3) raw -> (H, W, bands) raw
    mean = scdm.sample(rgb, jax.random.key(0), estimator="mean", num_samples=8)  # = posterior_mean
    anyband = pipelines.AnyBand.load("runs/anyband")
    full = anyband.repair(cube_with_gaps, missing=[3, 50, 51], rng=jax.random.key(0))
    full = anyband.from_sensor(s2_bands, sensor="sentinel2a_msi", rng=jax.random.key(0))

Each pipeline has `.params` and a pure function of them for use inside your own `jit`, `vmap` or
sharding: `scdm.sample_fn(scdm.params, rgb_tiles, rng)` maps raw RGB tiles (B, h, w, 3) to raw cubes
(B, h, w, bands), all cascade stages and sampler steps in one program (each stage a `lax.scan`);
`anyband.repair_fn(anyband.params, cube_tiles, observed_mask, rng)` likewise. Images larger than a tile
run in overlapping tiles, blended with linear ramps.

How an image runs is `sample.program` (a load() keyword, or the config): "compiled" runs every tile
batch as one compiled call (gathering, all stages, all steps, blending: one dispatch per batch, nothing
back on the host in between); "python" is the host driver of the command line, which for SCDM samples
each stage over the whole image (tiles blended) before the next stage, with the samplers' own loop
(`sample.loop`); "auto" picks python on CPU (the command line's figures were measured with it) and
compiled on accelerators. The two give different draws for one rng (different tiling of the chain).

Bad input raises `errors.UserInputError` with a one-line message (the command line prints it and
exits with code 2).
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from spectral_diffusion import checkpoints, data, physics, pretrained, sampling, training
from spectral_diffusion.data import values
from spectral_diffusion.anyband import model as anyband_model
from spectral_diffusion.scdm import cascade
from spectral_diffusion.errors import UserInputError


def _config(workdir, meta, config, sample):
  """The config a pipeline runs with: the one given, else the one stored with the checkpoint (or in
  workdir/config.json for older checkpoints); `sample` keyword overrides replace sample.* fields."""
  if config is None:
    if "config" in meta:
      config = ml_collections.ConfigDict(meta["config"])
    else:
      path = os.path.join(workdir, "config.json")
      if not os.path.isfile(path):
        raise UserInputError(f"{workdir} has no stored config (config.json); pass config= (the "
                             f"experiment config it was trained with)")
      with open(path, encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
  else:
    config = ml_collections.ConfigDict(config.to_dict())  # a copy: overrides stay here
  settings = sampling.SampleSettings.from_config(config.sample, **sample)
  for key, value in sample.items():
    config.sample[key] = value
  return config, settings


def _as_image_batch(x, bands, what):
  """(images (n, H, W, C) float32 numpy or JAX, whether the input was one image)."""
  values.check_not_mask(x.dtype if isinstance(x, jax.Array) else np.asarray(x).dtype, what)
  x = x if isinstance(x, jax.Array) else np.asarray(x, np.float32)
  if x.ndim not in (3, 4) or x.shape[-1] != bands:
    raise UserInputError(f"{what} must be (H, W, {bands}) or (batch, H, W, {bands}); got shape "
                         f"{tuple(x.shape)}")
  if min(x.shape[-3:-1], default=0) < 1:
    raise UserInputError(f"{what} is empty (shape {tuple(x.shape)}); give an image at least one pixel "
                         f"high and wide")
  return (x[None] if x.ndim == 3 else x), x.ndim == 3


def _estimator(settings, estimator, num_samples):
  """(estimator, num_samples) of a sample or repair call: the arguments, else the config's (the mean
  averages sample.num_samples draws; a sample is one draw unless num_samples says more)."""
  estimator = estimator or settings.estimator
  if num_samples is None:
    num_samples = settings.num_samples if estimator == "mean" else 1
  return estimator, num_samples


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


class SCDM:
  """A trained SCDM cascade: RGB (raw values, as in training) -> every band.

  Attributes: params (one EMA parameter tree per stage), wavelengths (output band centres in nm, or
  None), rgb_bands (the output bands the three input channels are), num_bands, normaliser, settings
  (sampling.SampleSettings), config, value_range ((lo, hi) of the training data in raw units, or None
  for checkpoints written before it was stored).
  """

  def __init__(self, bundles, normaliser, wavelengths, rgb_bands, config, settings, workdir=None,
               value_range=None):
    self.workdir = workdir
    self.value_range = value_range
    self.bundles = list(bundles)
    self.normaliser = normaliser
    self.wavelengths = None if wavelengths is None else np.asarray(wavelengths, np.float64)
    self.rgb_bands = tuple(int(b) for b in rgb_bands)
    self.num_bands = len(self.bundles[-1].stage.out_bands)
    self.config, self.settings = config, settings
    self.schedule = training.make_schedule(config.diffusion)
    self.sample_fn = cascade.CascadeProgram(tuple(self.bundles), self.schedule, settings, normaliser)

  @classmethod
  def load(cls, workdir, config=None, **sample):
    """The cascade trained in workdir (workdir/stage_k), from EMA parameters and metadata alone.

    config: the experiment config (default: the one stored with the checkpoints); it must match the
    checkpoints' model, diffusion and stage count. Keywords override sample settings, e.g.
    num_steps=20, sampler="dpm_solver_pp", program="compiled".
    """
    workdir = os.path.abspath(pretrained.resolve(workdir))
    meta = checkpoints.load_meta(cascade.stage_dir(workdir, 0), "stage 1")
    config, settings = _config(workdir, meta, config, sample)
    stages = int(meta.get("num_stages", config.cascade.num_stages))
    if config.cascade.num_stages != stages:
      raise UserInputError(f"the checkpoints in {workdir} are a {stages}-stage cascade, the config asks "
                           f"for cascade.num_stages={config.cascade.num_stages}; use the config it was "
                           f"trained with")
    bundles = [cascade.load_stage(config, workdir, k)[0] for k in range(stages)]
    rgb = meta.get("rgb_bands") or meta["in_bands"]
    return cls(bundles, data.normaliser_from_dict(meta["normaliser"]), meta.get("wavelengths_nm"), rgb,
               config, settings, workdir, values.stored_range(meta))

  @property
  def params(self):
    return tuple(b.params for b in self.bundles)

  @property
  def min_size(self):
    return cascade.min_size(self.bundles)

  def check_input(self, rgb, what="rgb"):
    """Refuses raw RGB values (NaN = nodata) far from the training range, blank or boolean (one-line
    UserInputError naming `what`), unless settings.allow_out_of_range."""
    values.check_input(rgb, self.value_range, what, self.settings.allow_out_of_range)

  def sample(self, rgb, rng, num_samples=None, progress=None, estimator=None):
    """Every band for raw RGB (H, W, 3) or (batch, H, W, 3): (H, W, bands) or (batch, H, W, bands)
    float32 numpy in the data's units. The output bands the RGB channels are (rgb_bands) hold the input
    exactly.

    estimator: "sample" (one draw of the cascade) or "mean" (the mean of num_samples draws: the
    posterior-mean estimate, the one to score with PSNR, SAM and SSIM); default the config's
    sample.estimator. num_samples: draws the mean averages (default sample.num_samples); for "sample",
    num_samples > 1 (default 1) adds a leading axis of samples. Draw i uses jax.random.fold_in(rng, i)
    (one draw uses rng itself), image b of a batch fold_in(that, b). progress: an object with update(n)
    (e.g. progress.Progress), one per tile batch."""
    images, single = _as_image_batch(rgb, 3, "rgb")
    data.check_finite(images, "rgb")
    self.check_input(images)
    estimator, num_samples = _estimator(self.settings, estimator, num_samples)

    def draw(key):
      out = np.stack([self._sample_image(image, key if single else jax.random.fold_in(key, b), progress)
                      for b, image in enumerate(images)])
      values.check_output(out, "rgb")
      return out[0] if single else out

    return sampling.estimate(draw, rng, estimator, num_samples)

  def posterior_mean(self, rgb, rng, num_samples=8, progress=None):
    """The mean of num_samples samples: sample(..., estimator="mean")."""
    return self.sample(rgb, rng, num_samples, progress, estimator="mean")

  def num_tile_batches(self, height, width):
    """Tile batches one sample of an image takes (progress bars count these)."""
    height, width = max(height, self.min_size), max(width, self.min_size)  # strips are padded
    per_stage = sampling.num_tile_batches(self.min_size, self.settings, height, width)
    return per_stage if self.settings.compiled() else len(self.bundles) * per_stage

  def _sample_image(self, rgb, rng, progress):
    h, w = rgb.shape[:2]
    rgb = sampling.pad_to_min_size(rgb, self.min_size)
    if self.settings.compiled():
      out = sampling.run_tiled(self.sample_fn, self.params, rgb, rng, self.min_size, self.settings,
                               self.num_bands, progress)
      out = np.array(out)[:h, :w]
    else:
      x = self.normaliser.forward(np.asarray(rgb, np.float32))
      outputs = cascade.run_cascade(self.bundles, self.schedule, x, rng, self.settings, progress)
      out = self.normaliser.inverse(outputs[-1][:h, :w]).astype(np.float32)
    # The input bands, bit for bit: not through the normaliser or tile blending.
    return sampling.keep_observed(out, np.asarray(rgb, np.float32)[:h, :w], self.rgb_bands)


class _RepairTiles:
  """(params, mask) -> RepairProgram call: the shape run_tiled's tile_fn takes (hashable by identity)."""

  def __init__(self, program):
    self.program = program

  def __call__(self, params_and_mask, tiles, rng):
    params, mask = params_and_mask
    return self.program(params, tiles, mask, rng)


class AnyBand:
  """A trained AnyBand-Diff model: any subset of bands (raw values) -> every band of its grid.

  Attributes: params (EMA parameters), wavelengths (band centres in nm), num_bands, normaliser,
  settings, config, value_range (as SCDM's).
  """

  def __init__(self, bundle, config, settings):
    self.bundle = bundle
    meta = bundle.meta
    self.value_range = values.stored_range(meta)
    self.wavelengths = np.asarray(meta["wavelengths_nm"], np.float64)
    self.num_bands = int(meta["num_bands"])
    self.normaliser = data.normaliser_from_dict(meta["normaliser"])
    self.config, self.settings = config, settings
    self.schedule = training.make_schedule(config.diffusion)
    pgs = bool(config.physics.guidance_scale)
    self.phys = anyband_model.make_physics(config, self.wavelengths, self.normaliser,
                                         pgs and bool(config.physics.guidance_terms[2]))
    self._programs = {}

  @classmethod
  def load(cls, workdir, config=None, variant="anyband", **sample):
    """The model trained in workdir (workdir/anyband, or an ablation variant), EMA parameters only.
    config and keywords as SCDM.load."""
    workdir = os.path.abspath(pretrained.resolve(workdir))
    meta = checkpoints.load_meta(anyband_model.model_dir(workdir, variant), f"the {variant} model")
    config, settings = _config(workdir, meta, config, sample)
    return cls(anyband_model.load_model(config, workdir, variant), config, settings)

  @property
  def params(self):
    return self.bundle.params

  def repair_fn_for(self, guidance=True, num_steps=None):
    """The pure repair function (params, tiles, observed, rng) for a guidance / step-count choice."""
    key = (bool(guidance), num_steps or 0)
    if key not in self._programs:
      self._programs[key] = anyband_model.RepairProgram(
          self.bundle, self.schedule, self.config, self.phys, self.normaliser, pgs=key[0],
          num_steps=key[1], keep_observed=bool(self.config.repair.keep_observed))
    return self._programs[key]

  @property
  def repair_fn(self):
    """repair_fn(params, cube_tiles (B, h, w, N) raw, observed_mask (N,) or (B, N), rng) -> (B, h, w, N)
    raw: pure and traceable (see anyband.RepairProgram)."""
    return self.repair_fn_for()

  def check_input(self, cube, what="cube", observed=None):
    """As SCDM.check_input, for the bands `observed` (indices; default all) of a raw cube (NaN = nodata
    or missing)."""
    values.check_input(cube, self.value_range, what, self.settings.allow_out_of_range, observed)

  def observed_mask(self, cube, missing=None):
    """(N,) float32, 1 = observed: bands that are NaN at every pixel, or given in `missing` (a boolean
    mask with True = missing, or band indices), are missing."""
    n = self.num_bands
    isnan = _xp(cube).isnan  # band by band: no full-size boolean array
    mask = np.asarray([0.0 if bool(isnan(cube[..., i]).all()) else 1.0 for i in range(n)], np.float32)
    if missing is not None:
      missing = np.asarray(missing)
      if missing.dtype == bool:
        if missing.shape != (n,):
          raise UserInputError(f"missing is a boolean mask of shape {missing.shape}; give one entry per "
                               f"band ({n},), True = missing")
        mask[missing] = 0.0
      else:
        bad = [int(b) for b in missing.ravel() if not 0 <= b < n]
        if bad:
          raise UserInputError(f"missing bands {bad} are outside 0..{n - 1}")
        mask[missing.astype(int)] = 0.0
    if not mask.any():
      raise UserInputError("every band is missing: give at least one observed band")
    return mask

  def repair(self, cube, missing=None, *, rng, num_steps=None, guidance=True, progress=None, estimator=None,
             num_samples=None):
    """Rebuilds every band of raw cube(s) (H, W, N) or (batch, H, W, N) on the model's grid.

    missing: True-is-missing boolean mask (N,) or band indices; bands NaN at every pixel are missing
    too. Observed bands must be finite; they come back exactly as given (repair.keep_observed).
    num_steps: sampler steps (default sample.num_steps; 1 = the one-step estimate of E[x0 | bands]).
    guidance: physics-guided sampling when physics.guidance_scale is not 0.
    estimator, num_samples: as SCDM.sample ("sample": one draw; "mean": the mean of num_samples draws,
    default the config's sample.estimator and sample.num_samples).
    """
    images, single = _as_image_batch(cube, self.num_bands, "cube")
    mask = self.observed_mask(images, missing)
    observed = np.flatnonzero(mask)
    data.check_finite(images[..., observed], "the observed bands of cube")
    self.check_input(images, "the observed bands of cube", observed)
    estimator, num_samples = _estimator(self.settings, estimator, num_samples)

    def draw(key):
      out = np.stack([self._repair_image(image, mask, key if single else jax.random.fold_in(key, b),
                                         num_steps, guidance, progress) for b, image in enumerate(images)])
      values.check_output(out, "cube")
      return out[0] if single else out

    return sampling.estimate(draw, rng, estimator, num_samples)

  def from_sensor(self, bands, sensor, *, rng, num_steps=None, guidance=True, progress=None, estimator=None,
                  num_samples=None):
    """Every band from a sensor's band values (H, W, K) raw, K = the sensor's bands on the model's grid
    in physics.sensor_on_grid(sensor, wavelengths).band_names order; each sits at the nearest grid band."""
    on_grid = physics.sensor_on_grid(sensor, self.wavelengths)
    values, single = _as_image_batch(bands, len(on_grid.band_names),
                                     f"bands of {sensor} ({', '.join(on_grid.band_names)})")
    data.check_finite(values, "bands")
    cube, mask = physics.place_on_grid(np.asarray(values, np.float32), on_grid, self.num_bands)
    cube = np.where(np.asarray(mask) > 0, np.asarray(cube, np.float32), np.nan)
    return self.repair(cube[0] if single else cube, rng=rng, num_steps=num_steps, guidance=guidance,
                       progress=progress, estimator=estimator, num_samples=num_samples)

  def num_tile_batches(self, height, width):
    size = self.bundle.model.min_size
    return sampling.num_tile_batches(size, self.settings, max(height, size), max(width, size))

  def _repair_image(self, image, mask, rng, num_steps, guidance, progress):
    h, w = image.shape[:2]
    raw = sampling.pad_to_min_size(np.asarray(image, np.float32), self.bundle.model.min_size)
    if self.settings.compiled():
      key = ("tiles", bool(guidance), num_steps or 0)
      if key not in self._programs:
        self._programs[key] = _RepairTiles(self.repair_fn_for(guidance, num_steps))
      result = np.array(sampling.run_tiled(
          self._programs[key], (self.params, jnp.asarray(mask)), np.nan_to_num(raw), rng,
          self.bundle.model.min_size, self.settings, self.num_bands, progress))
    else:
      x_obs = self.normaliser.forward(raw).astype(np.float32, copy=False)
      x_obs[..., mask == 0] = 0.0  # missing bands may be NaN
      pgs = guidance and bool(self.config.physics.guidance_scale)
      out = anyband_model.repair(self.bundle, x_obs, mask, rng, self.config, self.phys, pgs=pgs,
                               progress=progress, num_steps=num_steps)
      result = self.normaliser.inverse(out).astype(np.float32, copy=False)
    if self.config.repair.keep_observed:  # bit-exact: not through blending or the normaliser
      observed = np.flatnonzero(mask)
      sampling.keep_observed(result, raw[..., observed], observed)
    return result[:h, :w]
