"""Washington DC Mall (HYDICE, 1208 x 307 x 191, 400-2400 nm), AnyBand-Diff's protocol.

The scene (dc.tif from Purdue's MultiSpec page) must be put in the manual directory.

Protocol (AnyBand-Diff paper, App. A.3): 64 x 64 patches with stride 32, values normalised to
[-1, 1]. The paper gives no train/test split; assumptions, stated here:
- The last 256 rows (952-1207) are the test region, the 952 rows above it the training region.
- Training patches: 64 x 64, stride 32, last patch aligned to the region's border (261 patches);
  test patches: stride 64, so a pixel is scored about once (4 x 5 = 20 patches).
- Values are min-max normalised to [0, 1] with one global (lo, hi) over the training patches
  (stored); the AnyBand model maps them to [-1, 1].
- Band centres come from the file (ENVI header, GeoTIFF metadata or a .mat 'wavelengths' variable).
  dc.tif has none: then 191 evenly spaced centres over 400-2400 nm, which ignore the removed water
  bands; pass the true centres with --config.data.wavelengths when you have them.
"""
from spectral_diffusion.data import datasets
from spectral_diffusion.data.patches import RegionSplit
from tfds_builders import scene_builder


class Builder(scene_builder.SceneBuilder):
  __doc__ = __doc__
  MANUAL_DOWNLOAD_INSTRUCTIONS = datasets.instructions("washington_dc")
  BUILDER_CONFIGS = [scene_builder.SceneConfig(
      name="anyband", description="64 x 64 patches, stride 32 over rows 0-951 (train), 64 over 952-1207",
      split=RegionSplit(axis=0, train=(0, -256), test=(-256, None), size=64, train_stride=32,
                        test_stride=64))]
