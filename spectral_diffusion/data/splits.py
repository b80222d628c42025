"""A config's data, ready to train and evaluate on (both methods): the scene or the TFDS builder's
patches, split, normalised on the training split, with the band centres."""
import dataclasses
import os

import numpy as np

from spectral_diffusion.data import datasets, normalise, patches, readers
from spectral_diffusion.errors import UserInputError


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
    return readers.load_indian_pines()
  if cfg.name in ("file",) + datasets.BUILDERS:
    if not cfg.path:
      source = _source(cfg.name, "your .npy or .mat cube (H, W, bands)")
      raise UserInputError(f"data.path is not set: get {source} and pass --config.data.path=FILE")
    if not os.path.exists(cfg.path):
      source = _source(cfg.name, "an (H, W, bands) cube")
      raise UserInputError(f"data file {cfg.path} does not exist: get {source} and pass its path "
                           f"as --config.data.path")
    return readers.load_scene(cfg.path, key=cfg.key or None, wavelengths_key=cfg.wavelengths_key or None,
                           name=cfg.name)
  raise UserInputError(f"unknown data.name {cfg.name!r}: use indian_pines, file, "
                       f"{', '.join(datasets.BUILDERS)}")


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
  readers.check_finite(scene.cube, scene.name)
  _check_band_count(cfg, scene.name, scene.cube.shape[-1])
  train_raw, test_raw = patches.spatial_split(scene.cube, tuple(cfg.train_cols), tuple(cfg.test_cols))
  if cfg.normalise == "minmax":
    normaliser = normalise.fit_minmax(train_raw)
  elif cfg.normalise == "affine":
    normaliser = normalise.Affine(offset=cfg.offset, scale=cfg.scale)
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
