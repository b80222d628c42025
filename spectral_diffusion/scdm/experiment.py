"""The SCDM experiment from a config: the split data, the cascade plan and each stage's model space."""
import dataclasses

import numpy as np

from spectral_diffusion import baselines, data
from spectral_diffusion.data import splits
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.scdm import cascade

PRIOR_DEGREES = {"ridge": 1, "ridge_poly2": 2}


def rgb_bands(cfg, wavelengths_nm, num_bands):
  if cfg.rgb_bands:
    bands = tuple(int(b) for b in cfg.rgb_bands)
    if any(b < 0 or b >= num_bands for b in bands):
      raise UserInputError(f"data.rgb_bands {bands} out of range for a {num_bands}-band cube; "
                           f"use 0-based indices below {num_bands}")
    return bands
  if wavelengths_nm is None:
    raise UserInputError("the cube has no wavelengths, so RGB bands cannot be found by data.rgb_nm; "
                         "pass --config.data.rgb_bands='(r, g, b)' with 0-based band indices")
  return tuple(data.nearest_bands(wavelengths_nm, cfg.rgb_nm))


@dataclasses.dataclass
class Experiment(splits.Split):
  """The SCDM experiment: the split data and the cascade plan."""
  rgb_bands: tuple
  stages: list                   # cascade.Stage


def load_experiment(config):
  """The SCDM experiment: the split scene and the cascade plan."""
  split = splits.load_split(config)
  rgb = rgb_bands(config.data, split.wavelengths_nm, split.num_bands)
  stages = cascade.plan_stages(split.num_bands, rgb, config.cascade.num_stages)
  return Experiment(split.name, split.wavelengths_nm, split.normaliser, split.train, split.test, rgb, stages)


def plan_from_config(config):
  """The cascade plan without loading data when the config states num_bands and rgb_bands."""
  if config.data.num_bands and config.data.rgb_bands:
    n = config.data.num_bands
    return cascade.plan_stages(n, rgb_bands(config.data, None, n), config.cascade.num_stages)
  return load_experiment(config).stages


def fit_stage_space(config, stage, train):
  """The stage's model space; with a regression prior, fit it on the training split."""
  out_dim = len(stage.out_bands)
  prior = None
  kind = cascade.per_stage(config.diffusion.prior, stage.index, "diffusion.prior")
  if kind in PRIOR_DEGREES:
    pixels = data.patches.pixels(train)  # a stack of patches fits like one image
    prior = baselines.fit_ridge(pixels[..., list(stage.in_bands)], pixels[..., list(stage.out_bands)],
                                alpha=config.eval.ridge_alpha, degree=PRIOR_DEGREES[kind])
  elif kind != "none":
    raise UserInputError(f"unknown diffusion.prior {kind!r}: use none, ridge or ridge_poly2")
  scale = float(config.diffusion.target_scale)
  per_band = config.diffusion.residual_scale == "per_band"
  if per_band and prior is None:
    raise UserInputError("diffusion.residual_scale=per_band needs a regression prior (diffusion.prior "
                         "ridge or ridge_poly2): it divides each band by the prior's error std")
  if scale == 0 or per_band:  # auto: unit standard deviation of the diffused target on the training split
    space = cascade.StageSpace(out_dim, 1.0, prior)
    cond = train[..., list(stage.in_bands)]
    resid = space.to_model(train[..., list(stage.out_bands)], space.reference(cond))
    if per_band:  # target_scale (1 when auto) over each band's residual std: unit std per band when auto
      # Floored at 1 % of the all-band std: a band the prior reproduces exactly (a stage input band that
      # is also an output) would otherwise be scaled by ~1e6.
      band_std = np.maximum(resid.reshape(-1, out_dim).std(0), 0.01 * max(resid.std(), 1e-6))
      return cascade.StageSpace(out_dim, ((scale or 1.0) / band_std).astype(np.float32), prior)
    scale = float(1.0 / max(resid.std(), 1e-6))
  return cascade.StageSpace(out_dim, scale, prior)
