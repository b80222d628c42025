"""DFC2018 Houston hyperspectral scene (CASI, 48 bands, 380-1050 nm, 1202 x 4172 pixels), SCDM's protocol.

The scene must be put in the manual directory (registration required): see
spectral_diffusion.data.datasets.SOURCES["dfc2018"] for the file names it accepts.

Protocol (SCDM paper, Sec. IV-A): 27 patches of 512 x 512, 3 for testing "without overlap", the others
for training (SCDM then trains on random 256 x 256 crops of them). The paper does not give the grid or
which patches are tested; assumptions, stated here:
- The grid is stride 512 with the last patch on each axis aligned to the border (rows 0, 512, 690;
  columns 0, 512, ..., 3584, 3660): 3 x 9 = 27 patches, the only 512-patch count that covers
  1202 x 4172 this way, and the count the paper gives.
- The test patches are row-major numbers 0, 3 and 6: the top row at columns 0, 1536 and 3072. They
  overlap no other patch (no test pixel is trained on), and spread over the scene's length.
- Values are normalised as (DN - 3693) / 7410 (official code); a file with more than 48 bands keeps
  the first 48 (the official code's img[..., 0:48]).
- Band centres come from the file (ENVI header or GeoTIFF metadata); without them, 48 evenly spaced
  centres over 380-1050 nm.
"""
from spectral_diffusion.data import datasets
from spectral_diffusion.data.patches import GridSplit
from tfds_builders import scene_builder


class Builder(scene_builder.SceneBuilder):
  __doc__ = __doc__
  MANUAL_DOWNLOAD_INSTRUCTIONS = datasets.instructions("dfc2018")
  TAKE_FIRST_BANDS = True
  BUILDER_CONFIGS = [scene_builder.SceneConfig(
      name="scdm", description="27 patches of 512 x 512 (24 train, 3 test), (DN - 3693) / 7410",
      split=GridSplit(size=512, test=(0, 3, 6)), normalise="affine", offset=3693.0, scale=7410.0)]
  CITATION = """@article{xu2019dfc2018,
  title={Advanced multi-sensor optical remote sensing for urban land use and land cover classification:
         Outcome of the 2018 {IEEE} {GRSS} data fusion contest},
  author={Xu, Yonghao and Du, Bo and Zhang, Liangpei and Cerra, Daniele and Pato, Miguel and Carmona,
          Emiliano and Prasad, Saurabh and Yokoya, Naoto and H{\\"a}nsch, Ronny and Le Saux, Bertrand},
  journal={IEEE J. Sel. Topics Appl. Earth Observ. Remote Sens.}, volume={12}, number={6},
  pages={1709--1724}, year={2019}}"""
