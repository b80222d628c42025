"""Pavia University (ROSIS, 610 x 340 x 103, 430-860 nm), AnyBand-Diff's protocol.

Downloaded from the GIC (UPV/EHU) scenes page unless PaviaU.mat is in the manual directory.

Protocol (AnyBand-Diff paper, App. A.3): 64 x 64 patches with stride 32, values normalised to
[-1, 1]. The paper gives no train/test split; assumptions, stated here:
- The last 128 rows (482-609) are the test region, the 482 rows above it the training region (the
  regions share no pixel).
- Training patches: 64 x 64, stride 32, the last patch on each axis aligned to the region's border
  (150 patches). The paper's "approx. 12,000 patches" cannot come from stride 32 on this scene.
- Test patches: 64 x 64, stride 64 (last aligned to the border), so a pixel is scored about once:
  2 x 6 = 12 patches.
- Values are min-max normalised to [0, 1] with one global (lo, hi) over the training patches
  (stored); the AnyBand model maps them to [-1, 1] (2x - 1), the paper's range.
- The file has no band centres: 103 evenly spaced centres over 430-860 nm (nominal, as usual).
"""
from spectral_diffusion.data import datasets
from spectral_diffusion.data.patches import RegionSplit
from tfds_builders import scene_builder


class Builder(scene_builder.SceneBuilder):
  __doc__ = __doc__
  MANUAL_DOWNLOAD_INSTRUCTIONS = datasets.instructions("pavia_university")
  BUILDER_CONFIGS = [scene_builder.SceneConfig(
      name="anyband", description="64 x 64 patches, stride 32 over rows 0-481 (train), 64 over 482-609",
      split=RegionSplit(axis=0, train=(0, -128), test=(-128, None), size=64, train_stride=32,
                        test_stride=64))]
