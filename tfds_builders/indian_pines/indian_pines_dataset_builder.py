"""AVIRIS Indian Pines (145 x 145 x 200, 400-2489 nm), the demo's split, from the tensorly package.

The scene comes from the manual directory when Indian_pines_corrected (.mat/.npy) is there, else from
the copy in the installed tensorly package (the project's embedded default), else it is downloaded
from the GIC (UPV/EHU) scenes page. Neither paper uses it; the split is the demo configs': training
columns 0-71 and test columns 80-144 (an 8-column gap), each split one example (the whole region).
Values are min-max normalised with one global (lo, hi) over the training columns (stored); band
centres are the AVIRIS calibration of the 200 kept bands (spectral_diffusion.data).
"""
import importlib.util
import pathlib

import numpy as np

from spectral_diffusion.data import INDIAN_PINES_WAVELENGTHS_NM, datasets
from spectral_diffusion.data.patches import RegionSplit
from tfds_builders import scene_builder


def tensorly_file() -> pathlib.Path | None:
  """Indian_pines_corrected.npy inside the installed tensorly package (found without importing it)."""
  spec = importlib.util.find_spec("tensorly")
  for root in (spec.submodule_search_locations or []) if spec else []:
    path = pathlib.Path(root) / "datasets" / "data" / "Indian_pines_corrected.npy"
    if path.is_file():
      return path
  return None


class Builder(scene_builder.SceneBuilder):
  __doc__ = __doc__
  MANUAL_DOWNLOAD_INSTRUCTIONS = datasets.instructions("indian_pines")
  BUILDER_CONFIGS = [scene_builder.SceneConfig(
      name="demo", description="training columns 0-71, test columns 80-144, one example each, min-max",
      split=RegionSplit(axis=1, train=(0, 72), test=(80, 145)))]
  CITATION = """@misc{baumgardner2015indianpines,
  title={220 Band AVIRIS Hyperspectral Image Data Set: June 12, 1992 Indian Pine Test Site 3},
  author={Baumgardner, Marion F. and Biehl, Larry L. and Landgrebe, David A.},
  publisher={Purdue University Research Repository}, doi={10.4231/R7RX991C}, year={2015}}"""

  def locate(self, manual_dir):
    return super().locate(manual_dir) or tensorly_file()

  def default_wavelengths(self):
    return np.asarray(INDIAN_PINES_WAVELENGTHS_NM, np.float64)
