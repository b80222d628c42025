"""Pavia Centre (ROSIS, 1096 x 715 x 102, 430-860 nm), SCDM's protocol.

Downloaded from the GIC (UPV/EHU) scenes page unless Pavia.mat is in the manual directory.

Protocol (SCDM paper, Sec. IV-A): 1024 x 715 pixels used, 8 * 6 = 48 patches of 128 x 128, 40 for
training and 8 for testing, no overlap between training and test data. Assumptions, stated here:
- The 1024 rows used are the first 1024 of 1096.
- The grid is stride 128 with the last column aligned to the border (columns 0, 128, ..., 512, 587):
  8 x 6 = 48 patches.
- The test patches are the first grid column (columns 0-127, all 8 rows). The paper's "no overlap"
  rules out the last two grid columns (587 overlaps 512); which of the others it tested is not said.
- Values are min-max normalised with one global (lo, hi) over the training patches (stored).
- The file has no band centres: 102 evenly spaced centres over 430-860 nm (nominal; the paper notes
  that the exact centres of the kept bands are not published).
"""
from spectral_diffusion.data import datasets
from spectral_diffusion.data.patches import GridSplit
from tfds_builders import scene_builder


class Builder(scene_builder.SceneBuilder):
  __doc__ = __doc__
  MANUAL_DOWNLOAD_INSTRUCTIONS = datasets.instructions("pavia_center")
  BUILDER_CONFIGS = [scene_builder.SceneConfig(
      name="scdm", description="48 patches of 128 x 128 over rows 0-1023 (40 train, 8 test), min-max",
      split=GridSplit(size=128, test=tuple(6 * r for r in range(8)), rows=1024))]
