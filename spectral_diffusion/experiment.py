"""From a config to the data, the cascade plan and each stage's model space: shared by train, eval, sample."""
import dataclasses
import os

import numpy as np

from spectral_diffusion import baselines, cascade, data
from spectral_diffusion.errors import UserInputError

# Where the papers' scenes come from; they cannot ship with the package.
DATA_SOURCES = {
    "dfc2018": ("the 2018 IEEE GRSS Data Fusion Contest Houston hyperspectral cube (48 bands, 380-1050 nm), "
                "free after registration at the IEEE GRSS Data Fusion Contest site (hyperspectral "
                "'2018_IEEE_GRSS_DFC_HSI_TR'); convert it to .npy or .mat"),
    "pavia_center": ("Pavia Centre (Pavia.mat, 102 bands) from the Grupo de Inteligencia Computacional "
                     "(GIC, UPV/EHU) hyperspectral remote sensing scenes page"),
    "pavia_university": ("Pavia University (PaviaU.mat, 610x340x103, ROSIS) from the Grupo de Inteligencia "
                         "Computacional (GIC, UPV/EHU) hyperspectral remote sensing scenes page"),
    "washington_dc": ("the HYDICE Washington DC Mall cube (1208x307x191, 400-2400 nm) from Purdue's "
                      "MultiSpec page (dc.tif; save it as .npy with its band centres as a .mat "
                      "'wavelengths' variable or pass --config.data.wavelengths)"),
}


PRIOR_DEGREES = {"ridge": 1, "ridge_poly2": 2}


@dataclasses.dataclass
class Experiment:
  name: str
  wavelengths_nm: np.ndarray | None
  normaliser: object             # data.MinMax | data.Affine, fit on the training split
  train: np.ndarray              # (H, W, N) normalised
  test: np.ndarray
  rgb_bands: tuple
  stages: list                   # cascade.Stage

  @property
  def num_bands(self):
    return self.train.shape[-1]


def load_raw_scene(cfg):
  """The config's scene, raw values; data.wavelengths (nm), when given, replaces the file's."""
  scene = _read_scene(cfg)
  if cfg.wavelengths:
    if len(cfg.wavelengths) != scene.cube.shape[-1]:
      raise UserInputError(f"data.wavelengths has {len(cfg.wavelengths)} values for a "
                           f"{scene.cube.shape[-1]}-band cube; give one centre (nm) per band")
    scene = dataclasses.replace(scene, wavelengths_nm=np.asarray(cfg.wavelengths, np.float64))
  return scene


def _read_scene(cfg):
  if cfg.name == "indian_pines":
    return data.load_indian_pines()
  if cfg.name in ("file",) + tuple(DATA_SOURCES):
    if not cfg.path:
      source = DATA_SOURCES.get(cfg.name, "your .npy or .mat cube (H, W, bands)")
      raise UserInputError(f"data.path is not set: get {source} and pass --config.data.path=FILE")
    if not os.path.exists(cfg.path):
      source = DATA_SOURCES.get(cfg.name, "an (H, W, bands) cube")
      raise UserInputError(f"data file {cfg.path} does not exist: get {source} and pass its path "
                           f"as --config.data.path")
    return data.load_scene(cfg.path, key=cfg.key or None, wavelengths_key=cfg.wavelengths_key or None,
                           name=cfg.name)
  raise UserInputError(f"unknown data.name {cfg.name!r}: use indian_pines, file, "
                       f"{', '.join(DATA_SOURCES)}")


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


def load_split(config):
  """Scene -> finite check -> band count check -> spatial split -> normaliser fit on the training split.

  Returns (scene, normaliser, train, test), the splits normalised float32.
  """
  scene = load_raw_scene(config.data)
  data.check_finite(scene.cube, scene.name)
  num_bands = scene.cube.shape[-1]
  if config.data.num_bands and num_bands != config.data.num_bands:
    raise UserInputError(f"{scene.name} has {num_bands} bands, the config expects {config.data.num_bands}; "
                         f"use the matching cube or set --config.data.num_bands={num_bands}")
  train_raw, test_raw = data.spatial_split(scene.cube, tuple(config.data.train_cols),
                                           tuple(config.data.test_cols))
  if config.data.normalise == "minmax":
    normaliser = data.fit_minmax(train_raw)
  elif config.data.normalise == "affine":
    normaliser = data.Affine(offset=config.data.offset, scale=config.data.scale)
  else:
    raise UserInputError(f"unknown data.normalise {config.data.normalise!r}: use minmax or affine")
  return (scene, normaliser, normaliser.forward(train_raw).astype(np.float32),
          normaliser.forward(test_raw).astype(np.float32))


def load_experiment(config):
  """The SCDM experiment: the split scene and the cascade plan."""
  scene, normaliser, train, test = load_split(config)
  num_bands = scene.cube.shape[-1]
  rgb = rgb_bands(config.data, scene.wavelengths_nm, num_bands)
  stages = cascade.plan_stages(num_bands, rgb, config.cascade.num_stages)
  return Experiment(scene.name, scene.wavelengths_nm, normaliser, train, test, rgb, stages)


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
    prior = baselines.fit_ridge(train[..., list(stage.in_bands)], train[..., list(stage.out_bands)],
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
