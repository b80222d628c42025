"""AnyBand-Diff on Pavia University with the paper's settings (ROSIS, 610x340x103, 430-860 nm).

  python -m spectral_diffusion.main --config=configs/anyband_paviau.py --workdir=runs/anyband_paviau

PaviaU.mat comes from the GIC (UPV/EHU) hyperspectral scenes page; the TFDS builder
tfds_builders/pavia_university downloads it on the first run (or takes it from
~/tensorflow_datasets/downloads/manual) and builds 64 x 64 patches with stride 32 (the paper's) over
rows 0-481 for training and non-overlapping 64 x 64 patches over rows 482-609 for testing (the paper
gives no split: see the builder's docstring). The file has no band centres, so the nominal grid
linspace(430, 860, 103) is used, as is usual for this scene. The paper: 64x64 patches, U-Net base
128 with multipliers (1, 2, 4, 8), attention at 16x16 and 8x8, CAM after every res block; AdamW (0.9,
0.999, wd 1e-4), lr 1e-4, cosine with linear warm-up, batch 64; T = 1000, linear betas 1e-4..0.02,
eps-prediction, DDIM 50; MSPL weights 1.0 / 0.5 / 0.2. Reported: 50 % band masking 29.65 dB PSNR /
0.84 SSIM, NDVI CC 0.94 (here: means over the test patches). Expect days on a CPU; a GPU is the
intended target. `--mode=describe` prints the parameter count beside the paper's 278 M.
"""
import numpy as np

from configs import default


def get_config():
  c = default.get_config("anyband")
  c.data.name = "pavia_university"
  c.data.source = "tfds"             # the builder's patches, min-max statistics and band centres
  c.data.num_bands = 103
  # The nominal grid the builder stores too; stated here for tools that plan without data (benchmark).
  c.data.wavelengths = tuple(float(w) for w in np.linspace(430.0, 860.0, 103))
  c.data.reflectance_scale = 1e-4    # ROSIS reflectance x 1e4
  c.data.crop_size = 64

  c.model.name = "anyband_unet"
  c.model.channel_mults = (1, 2, 4, 8)
  c.model.attn_levels = (2, 3)       # 16x16 and 8x8 on 64x64 patches
  c.model.context_dim = 512

  c.diffusion.sam_weight = 0.0       # the paper's loss is eps MSE + MSPL

  c.train.batch_size = 64
  c.train.num_steps = 150_000        # about 500 epochs of the 64x64, stride-32 training patches
  c.train.optimizer = "adamw"
  c.train.weight_decay = 1e-4
  c.train.lr_schedule = "cosine"
  c.train.warmup_steps = 15_000      # the paper's 50-epoch warm-up
  c.train.ema_decay = 0.9999

  c.sample.num_steps = 50
  c.sample.tile_size = 64
  c.sample.tile_overlap = 16
  return c
