"""What every builder here shares: one scene file -> the protocol's train and test patches, normalised.

A builder finds its scene in the manual directory (or downloads it, or, for Indian Pines, takes the
copy in the tensorly package), reads it with spectral_diffusion.data.load_scene (.mat, .npy, .npz,
ENVI .hdr, GeoTIFF), cuts the windows of its config's split (patches.GridSplit / RegionSplit), fits
the normaliser on the training patches only, and writes one example per patch:
  cube            (h, w, B) float32, normalised
  wavelengths_nm  (B,) float32 band centres
  position        (2,) int32, the patch's top-left (row, col) in the scene
  index           int32, the patch's place in its split
The exact statistics and band centres (float64) are in info.metadata: normaliser (data.Normaliser
as a dict), wavelengths_nm, wavelengths_source, scene_shape, source_file, split.
"""
import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from spectral_diffusion import data
from spectral_diffusion.data import datasets
from spectral_diffusion.errors import UserInputError


@dataclasses.dataclass(eq=False)
class SceneConfig(tfds.core.BuilderConfig):
  """A protocol: how the scene is split into patches and how values are normalised."""
  split: object = None             # patches.GridSplit | patches.RegionSplit
  normalise: str = "minmax"        # minmax: global (x - lo) / (hi - lo) fit on the training patches
  offset: float = 0.0              # affine: (x - offset) / scale
  scale: float = 1.0


class SceneBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders in tfds_builders/ (not a dataset itself)."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: the papers' patch protocols."}
  CITATION = ""
  TAKE_FIRST_BANDS = False         # a file with more bands than the dataset: keep the first ones

  @classmethod
  def source(cls) -> datasets.Source:
    return datasets.SOURCES[cls.name]

  def locate(self, manual_dir) -> pathlib.Path | None:
    """The scene file available without a download, or None."""
    return datasets.find_source(self.name, manual_dir)

  def can_download(self) -> bool:
    return bool(self.source().url)

  def default_wavelengths(self) -> np.ndarray | None:
    return datasets.nominal_wavelengths(self.name)

  def _info(self) -> tfds.core.DatasetInfo:
    n = self.source().num_bands
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or "").strip(),
        features=tfds.features.FeaturesDict({
            "cube": tfds.features.Tensor(shape=(None, None, n), dtype=np.float32, encoding="bytes"),
            "wavelengths_nm": tfds.features.Tensor(shape=(n,), dtype=np.float32),
            "position": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "index": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage=self.source().homepage,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,    # patches in protocol order
    )

  def _find(self, dl_manager) -> pathlib.Path:
    try:
      manual = dl_manager.manual_dir
    except (AssertionError, ValueError):  # TFDS raises these for a missing or empty manual directory
      manual = None
    path = self.locate(manual)
    if path is None and self.can_download():
      path = pathlib.Path(dl_manager.download(self.source().url))
    if path is None:
      raise UserInputError(datasets.missing_message(self.name, manual or "the manual directory"))
    return path

  def read_scene(self, path) -> data.HyperspectralScene:
    """The scene with the dataset's band count and band centres (the file's, or the default grid)."""
    scene = data.load_scene(path, name=self.name)
    n, bands = self.source().num_bands, scene.cube.shape[-1]
    if bands > n and self.TAKE_FIRST_BANDS:
      wl = None if scene.wavelengths_nm is None else scene.wavelengths_nm[:n]
      scene = data.HyperspectralScene(scene.cube[..., :n], wl, self.name)
    elif bands != n:
      raise UserInputError(f"{path.name} has {bands} bands, {self.name} has {n}: "
                           f"{self.source().description}")
    data.check_finite(scene.cube, path.name)
    if scene.wavelengths_nm is None:
      scene = data.HyperspectralScene(scene.cube, self.default_wavelengths(), self.name)
      self.info.metadata["wavelengths_source"] = "default"
    else:
      self.info.metadata["wavelengths_source"] = "file"
    return scene

  def _split_generators(self, dl_manager):
    path = self._find(dl_manager)
    scene = self.read_scene(path)
    cfg = self.builder_config
    train, test = cfg.split.windows(*scene.cube.shape[:2])
    if cfg.normalise == "minmax":
      # One global pair over the training pixels only: band ratios survive and no test pixel leaks in.
      lo = min(float(scene.cube[r:r + h, c:c + w].min()) for r, c, h, w in train)
      hi = max(float(scene.cube[r:r + h, c:c + w].max()) for r, c, h, w in train)
      normaliser = data.MinMax(lo, hi)
    elif cfg.normalise == "affine":
      normaliser = data.Affine(cfg.offset, cfg.scale)
    else:
      raise UserInputError(f"unknown normalise {cfg.normalise!r} in builder config {cfg.name}: "
                           "use minmax or affine")
    self.info.metadata.update({
        "normaliser": normaliser.to_dict(),
        "wavelengths_nm": [float(w) for w in scene.wavelengths_nm],
        "scene_shape": list(scene.cube.shape),
        "source_file": path.name,
        "split": repr(cfg.split),
        "train_windows": [list(w) for w in train],
        "test_windows": [list(w) for w in test],
    })
    return {"train": self._generate_examples(scene, train, normaliser),
            "test": self._generate_examples(scene, test, normaliser)}

  def _generate_examples(self, scene, windows, normaliser):
    wl = np.asarray(scene.wavelengths_nm, np.float32)
    for i, (r, c, h, w) in enumerate(windows):
      cube = normaliser.forward(scene.cube[r:r + h, c:c + w]).astype(np.float32)
      yield i, {"cube": cube, "wavelengths_nm": wl, "position": np.array([r, c], np.int32), "index": i}
