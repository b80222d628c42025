"""SCDM on the 2018 IEEE GRSS Data Fusion Contest Houston scene (48 bands, 380-1050 nm): the paper's setup.

  python -m spectral_diffusion.main --config=configs/scdm_dfc2018.py --workdir=runs/scdm_dfc2018

Data: the DFC2018 hyperspectral scene (1202 x 4172 x 48; free after registration at the IEEE GRSS
Data Fusion Contest site), read through the TFDS builder tfds_builders/dfc2018: put the file
(20170218_UH_CASI_S4_NAD83.tif, or the same name as .hdr/.mat/.npy) in
~/tensorflow_datasets/downloads/manual (or --config.data.manual_dir=DIR); the first run builds the
paper's 27 patches of 512 x 512 (24 train, 3 test: which ones is stated in the builder's docstring).
Two stages: RGB (paper bands 23, 12, 5, i.e. 0-based 22, 11, 4) -> 12 bands (every 4th) -> 48 bands;
stage-2 U-Net 77,557,168 parameters. Training as the paper: eps MSE + SAM loss (lambda 1), p_uncond
0.1, Adam 1e-4, batch 4, 100k steps per stage, EMA 0.9999 from step 2000, random 256x256 crops without
flips; DN normalised as (DN - 3693) / 7410. Sampling as the official code: 1000-step DDPM (sigma^2 =
beta), PDT p_start 0.96 / 0.88 on the state x_t (sample.pdt_target=state, as the official code, which
produced the published numbers), ICMG 2.5 in stage 2.
Expected (paper, metrics averaged over the 3 test patches): RMSE 359.48 DN, SAM 0.0672 rad, MSSIM
0.9887, MPSNR 47.21 dB. Paper-vs-code switches: diffusion.loss=l1 gives the official code's loss;
sample.pdt_target=eps the paper's printed PDT (clip the predicted noise), which is unstable: on an exact
Gaussian denoiser the samples' spread grows to 5-38x the data's, where the state form stays bounded.
"""
from configs import default

def get_config():
  c = default.get_config()  # its training, loss and guidance defaults are the paper's
  c.data.name = "dfc2018"
  c.data.source = "tfds"             # the paper's 27-patch protocol (tfds_builders/dfc2018)
  c.data.num_bands = 48
  c.data.rgb_bands = (22, 11, 4)
  c.data.normalise = "affine"
  c.data.offset = 3693.0
  c.data.scale = 7410.0              # the builder stores the same normaliser; a mismatch is an error
  c.data.crop_size = 256
  c.data.augment = False

  c.diffusion.target_scale = 1.0     # the normalised DN are diffused as they are

  c.sample.sampler = "ddpm"
  c.sample.pdt_target = "state"      # the official code (default.py); eps = the paper's text, unstable
  c.sample.tile_size = 256
  c.sample.tile_overlap = 32
  c.sample.batch_size = 1
  return c
