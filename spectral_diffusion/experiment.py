"""From a config to the data, the cascade plan and each stage's model space: shared by train, eval, sample."""
import dataclasses
import os

import numpy as np

from spectral_diffusion import baselines, cascade, data
from spectral_diffusion.data import datasets
from spectral_diffusion.errors import UserInputError

PRIOR_DEGREES = {"ridge": 1, "ridge_poly2": 2}


def load_raw_scene(cfg):
  """The config's scene, raw values; data.wavelengths (nm), when given, replaces the file's."""
  scene = _read_scene(cfg)
  if cfg.wavelengths:
    if len(cfg.wavelengths) != scene.cube.shape[-1]:
      raise UserInputError(f"data.wavelengths has {len(cfg.wavelengths)} values for a "
                           f"{scene.cube.shape[-1]}-band cube; give one centre (nm) per band")
    scene = dataclasses.replace(scene, wavelengths_nm=np.asarray(cfg.wavelengths, np.float64))
  return scene


def _source(name, default):
  return datasets.SOURCES[name].description if name in datasets.SOURCES else default


def _read_scene(cfg):
  if cfg.name == "indian_pines":
    return data.load_indian_pines()
  if cfg.name in ("file",) + datasets.BUILDERS:
    if not cfg.path:
      source = _source(cfg.name, "your .npy or .mat cube (H, W, bands)")
      raise UserInputError(f"data.path is not set: get {source} and pass --config.data.path=FILE")
    if not os.path.exists(cfg.path):
      source = _source(cfg.name, "an (H, W, bands) cube")
      raise UserInputError(f"data file {cfg.path} does not exist: get {source} and pass its path "
                           f"as --config.data.path")
    return data.load_scene(cfg.path, key=cfg.key or None, wavelengths_key=cfg.wavelengths_key or None,
                           name=cfg.name)
  raise UserInputError(f"unknown data.name {cfg.name!r}: use indian_pines, file, "
                       f"{', '.join(datasets.BUILDERS)}")


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
class Split:
  """A config's data, ready to train and evaluate on."""
  name: str
  wavelengths_nm: np.ndarray | None
  normaliser: object             # data.MinMax | data.Affine, fit on the training split
  train: np.ndarray              # (H, W, N) normalised float32, or (P, h, w, N) patches (source=tfds)
  test: np.ndarray

  @property
  def num_bands(self):
    return self.train.shape[-1]


@dataclasses.dataclass
class Experiment(Split):
  """The SCDM experiment: the split data and the cascade plan."""
  rgb_bands: tuple
  stages: list                   # cascade.Stage


def load_split(config):
  """The config's training and test data, normalised float32, with the normaliser and band centres.

  data.source = scene: scene -> finite check -> band count check -> split by columns -> normaliser
  fit on the training split. data.source = tfds: data.name's TFDS builder (built on first use) gives
  stacks of patches, the normaliser it stored and its band centres.
  """
  cfg = config.data
  if cfg.source == "tfds":
    return _load_tfds_split(cfg)
  if cfg.source != "scene":
    raise UserInputError(f"unknown data.source {cfg.source!r}: use scene or tfds")
  scene = load_raw_scene(cfg)
  data.check_finite(scene.cube, scene.name)
  _check_band_count(cfg, scene.name, scene.cube.shape[-1])
  train_raw, test_raw = data.spatial_split(scene.cube, tuple(cfg.train_cols), tuple(cfg.test_cols))
  if cfg.normalise == "minmax":
    normaliser = data.fit_minmax(train_raw)
  elif cfg.normalise == "affine":
    normaliser = data.Affine(offset=cfg.offset, scale=cfg.scale)
  else:
    raise UserInputError(f"unknown data.normalise {cfg.normalise!r}: use minmax or affine")
  return Split(scene.name, scene.wavelengths_nm, normaliser, normaliser.forward(train_raw).astype(np.float32),
               normaliser.forward(test_raw).astype(np.float32))


def _check_band_count(cfg, name, num_bands):
  if cfg.num_bands and num_bands != cfg.num_bands:
    raise UserInputError(f"{name} has {num_bands} bands, the config expects {cfg.num_bands}; "
                         f"use the matching cube or set --config.data.num_bands={num_bands}")


def _load_tfds_split(cfg):
  splits = datasets.load(cfg)
  _check_band_count(cfg, splits.name, splits.train.shape[-1])
  stored = splits.normaliser.to_dict()
  if stored["kind"] != cfg.normalise or (
      cfg.normalise == "affine" and (stored["offset"], stored["scale"]) != (cfg.offset, cfg.scale)):
    raise UserInputError(f"the {splits.name} dataset is normalised as {stored}, the config asks for "
                         f"data.normalise={cfg.normalise} (offset {cfg.offset}, scale {cfg.scale}); "
                         f"set the config to match the builder's protocol")
  wl = splits.wavelengths_nm
  if cfg.wavelengths:  # e.g. the true band centres of a file that stores none
    if len(cfg.wavelengths) != splits.train.shape[-1]:
      raise UserInputError(f"data.wavelengths has {len(cfg.wavelengths)} values for the "
                           f"{splits.train.shape[-1]} bands of {splits.name}; give one centre (nm) per band")
    wl = np.asarray(cfg.wavelengths, np.float64)
  return Split(splits.name, wl, splits.normaliser, splits.train, splits.test)


def load_experiment(config):
  """The SCDM experiment: the split scene and the cascade plan."""
  split = load_split(config)
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
  if scale == 0:  # auto: unit standard deviation of the diffused target on the training split
    space = cascade.StageSpace(out_dim, 1.0, prior)
    cond = train[..., list(stage.in_bands)]
    resid = space.to_model(train[..., list(stage.out_bands)], space.reference(cond))
    scale = float(1.0 / max(resid.std(), 1e-6))
  return cascade.StageSpace(out_dim, scale, prior)


def stage_dir(workdir, stage_index):
  return os.path.join(os.path.abspath(workdir), f"stage_{stage_index}")
