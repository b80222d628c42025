"""The papers' scenes as TFDS datasets (tfds_builders/): where each comes from, building it once
(download_and_prepare into data.tfds_dir, array_record, no TensorFlow) and reading its splits as stacks
of normalised float32 patches with the stored statistics and band centres.

A config reads through a builder with data.source = "tfds" and data.name one of BUILDERS:

  python -m spectral_diffusion.main --config=configs/scdm_pavia_center.py --workdir=runs/pavia

The first run builds the dataset (Pavia is downloaded; DFC2018 and Washington DC must be put in the
manual directory, ~/tensorflow_datasets/downloads/manual by default); later runs read it.
"""
import dataclasses
import importlib
import os
import pathlib

import numpy as np

from spectral_diffusion.data import normalise
from spectral_diffusion.errors import UserInputError

BUILDERS = ("dfc2018", "pavia_center", "pavia_university", "washington_dc", "indian_pines")
# File types a builder reads from the manual directory (data.load_scene reads them all).
EXTENSIONS = (".tif", ".tiff", ".hdr", ".mat", ".npy", ".npz")
_GIC = "https://www.ehu.eus/ccwintco/uploads/"
GIC_PAGE = "https://www.ehu.eus/ccwintco/index.php/Hyperspectral_Remote_Sensing_Scenes"


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a scene comes from."""
  description: str     # what it is and where to get it (one line, for errors and instructions)
  file: str            # the file as distributed; the same name with any of EXTENSIONS is accepted
  num_bands: int
  nominal_nm: tuple = ()   # (first, last) band centre, evenly spaced, when the file has none
  url: str = ""        # a public download, when there is one
  homepage: str = ""
  aliases: tuple = ()  # other accepted names (without extension)

  @property
  def names(self):
    return (pathlib.Path(self.file).stem,) + tuple(self.aliases)


SOURCES = {
    "dfc2018": Source(
        "the 2018 IEEE GRSS Data Fusion Contest Houston hyperspectral image (48 bands, 1202x4172), free "
        "after registration at the contest site",
        "20170218_UH_CASI_S4_NAD83.tif", 48, (380.0, 1050.0), aliases=("dfc2018_hsi", "dfc2018"),
        homepage="https://machinelearning.ee.uh.edu/2018-ieee-grss-data-fusion-challenge-fusion-of-"
                 "multispectral-lidar-and-hyperspectral-data/"),
    "pavia_center": Source(
        "Pavia Centre (Pavia.mat, 102 bands) from the GIC (UPV/EHU) hyperspectral scenes page, "
        "ehu.eus/ccwintco",
        "Pavia.mat", 102, (430.0, 860.0), url=_GIC + "e/e3/Pavia.mat", homepage=GIC_PAGE,
        aliases=("pavia_center",)),
    "pavia_university": Source(
        "Pavia University (PaviaU.mat, 103 bands) from the GIC (UPV/EHU) hyperspectral scenes page, "
        "ehu.eus/ccwintco",
        "PaviaU.mat", 103, (430.0, 860.0), url=_GIC + "e/ee/PaviaU.mat", homepage=GIC_PAGE,
        aliases=("pavia_university",)),
    "washington_dc": Source(
        "the HYDICE Washington DC Mall cube (dc.tif, 191 bands) from Purdue's MultiSpec page, "
        "engineering.purdue.edu/~biehl/MultiSpec",
        "dc.tif", 191, (400.0, 2400.0), aliases=("washington_dc",),
        homepage="https://engineering.purdue.edu/~biehl/MultiSpec/hyperspectral.html"),
    "indian_pines": Source(
        "AVIRIS Indian Pines (200 bands): pip install tensorly, or Indian_pines_corrected.mat from the "
        "GIC (UPV/EHU) hyperspectral scenes page, ehu.eus/ccwintco",
        "Indian_pines_corrected.mat", 200, url=_GIC + "6/67/Indian_pines_corrected.mat",
        homepage=GIC_PAGE, aliases=("indian_pines",)),
}


def _check_name(name):
  if name not in SOURCES:
    raise UserInputError(f"no TFDS builder for data.name={name!r}: use one of {', '.join(BUILDERS)} "
                         f"(or data.source=scene for your own file)")
  return SOURCES[name]


def expected_files(name) -> str:
  """The accepted file names, for messages."""
  src = _check_name(name)
  return f"{src.file} (or {'/'.join(src.names[1:])}; as {'/'.join(EXTENSIONS)})"


def find_source(name, manual_dir) -> pathlib.Path | None:
  """The scene file in manual_dir or manual_dir/<name>/, matched by name (case-insensitively)."""
  src = _check_name(name)
  if not manual_dir:
    return None
  wanted = {(n + e).lower() for n in src.names for e in EXTENSIONS}
  for folder in (pathlib.Path(manual_dir), pathlib.Path(manual_dir) / name):
    if folder.is_dir():
      found = sorted(p for p in folder.iterdir() if p.name.lower() in wanted and p.is_file())
      if found:
        return found[0]
  return None


def missing_message(name, manual_dir) -> str:
  """One line (under the CLI's 400 characters for a short path): which file, where to get it, where
  to put it."""
  return (f"{name}: no {expected_files(name)} in {manual_dir}: get {_check_name(name).description}, "
          f"and put it there or set --config.data.manual_dir=DIR")


def instructions(name) -> str:
  """TFDS's MANUAL_DOWNLOAD_INSTRUCTIONS for a builder."""
  src = _check_name(name)
  return (f"Get {src.description} ({src.homepage}) and put it in the manual directory "
          f"(data.manual_dir; TFDS's default is ~/tensorflow_datasets/downloads/manual) as "
          f"{expected_files(name)}." + (f" Without it the builder downloads {src.url}." if src.url else ""))


def nominal_wavelengths(name) -> np.ndarray | None:
  src = _check_name(name)
  if not src.nominal_nm:
    return None
  return np.linspace(src.nominal_nm[0], src.nominal_nm[1], src.num_bands)


@dataclasses.dataclass
class PatchSplits:
  """A built dataset read back: the splits as stacks (P, h, w, B) of normalised float32 patches."""
  name: str
  wavelengths_nm: np.ndarray
  normaliser: object               # data.MinMax | data.Affine, as stored by the builder
  train: np.ndarray
  test: np.ndarray
  train_positions: np.ndarray      # (P, 2) top-left (row, col) of each patch in the scene
  test_positions: np.ndarray
  metadata: dict


def builder(name, data_dir="", config=None):
  """The dataset's TFDS builder (imports TFDS); config: a builder config name or object, None = the
  paper's."""
  _check_name(name)
  module = importlib.import_module(f"tfds_builders.{name}.{name}_dataset_builder")
  return module.Builder(data_dir=data_dir or None, config=config or None, file_format="array_record")


def default_manual_dir(b) -> pathlib.Path:
  """TFDS's own default: <data_dir>/downloads/manual."""
  return pathlib.Path(b.data_dir_root) / "downloads" / "manual"


def is_prepared(b) -> bool:
  return (pathlib.Path(b.data_dir) / "dataset_info.json").is_file()


def prepare(b, manual_dir="") -> float:
  """Builds the dataset unless it is built; returns the seconds it took (0 when it was built)."""
  if is_prepared(b):
    return 0.0
  import time  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  manual = pathlib.Path(manual_dir).expanduser() if manual_dir else default_manual_dir(b)
  if b.locate(manual) is None and not b.can_download():
    raise UserInputError(missing_message(b.name, manual))
  t0 = time.perf_counter()
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual),
                                        compute_stats=tfds.download.ComputeStatsMode.SKIP)
  try:
    b.download_and_prepare(download_config=config)
  except UserInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # A failed download (offline, moved page) is the common case; the way out is the manual file.
    text = " ".join(str(e).split())[:80]
    raise UserInputError(f"building failed ({type(e).__name__}: {text}); "
                         f"{missing_message(b.name, manual)}") from e
  return time.perf_counter() - t0


def read(b) -> PatchSplits:
  """The built dataset's splits, stacked, with the stored normaliser and band centres."""
  meta = dict(b.info.metadata)
  stacks = {}
  for split in ("train", "test"):
    source = b.as_data_source(split)
    examples = sorted((source[i] for i in range(len(source))), key=lambda ex: int(ex["index"]))
    shapes = {ex["cube"].shape for ex in examples}
    if len(shapes) != 1:
      raise UserInputError(f"{b.name}: the {split} split has patches of several sizes {sorted(shapes)}; "
                           "rebuild it with a builder config of one patch size")
    stacks[split] = (np.stack([ex["cube"] for ex in examples]).astype(np.float32),
                     np.stack([ex["position"] for ex in examples]).astype(np.int64))
  return PatchSplits(b.name, np.asarray(meta["wavelengths_nm"], np.float64),
                     normalise.normaliser_from_dict(meta["normaliser"]), stacks["train"][0],
                     stacks["test"][0], stacks["train"][1], stacks["test"][1], meta)


def load_builder(name, data_dir="", manual_dir="", config=None) -> PatchSplits:
  """A dataset's splits by name: builds it first if needed (into data_dir, "" = TFDS's default, from the
  scene file in manual_dir, "" = <data_dir>/downloads/manual), then reads it."""
  b = builder(name, data_dir, config)
  prepare(b, manual_dir)
  return read(b)


def load(cfg) -> PatchSplits:
  """The data section of a config (source tfds) -> its builder's splits, building them first if
  needed."""
  _check_name(cfg.name)
  if cfg.path:
    raise UserInputError(f"data.path is read with data.source=scene; with data.source=tfds the builder "
                         f"reads {expected_files(cfg.name)} from its manual directory (data.manual_dir): "
                         f"put the file there, or set --config.data.source=scene")
  return load_builder(cfg.name, cfg.tfds_dir, cfg.manual_dir, cfg.tfds_config or None)
