"""AnyBand-Diff on Washington DC Mall with the paper's settings (HYDICE, 1208x307x191, 400-2400 nm).

  python -m spectral_diffusion.main --config=configs/anyband_wdc.py --workdir=runs/anyband_wdc \\
      --config.data.wavelengths='(...)'

The cube (dc.tif) comes from Purdue's MultiSpec page: put it in ~/tensorflow_datasets/downloads/manual
(or --config.data.manual_dir=DIR); the TFDS builder tfds_builders/washington_dc builds 64 x 64
patches with stride 32 over rows 0-951 for training and non-overlapping ones over rows 952-1207 for
testing (see its docstring). dc.tif stores no band centres: the builder then uses 191 evenly spaced
centres over 400-2400 nm, so give the true ones with --config.data.wavelengths (or put a .mat with a
'wavelengths' variable, or an ENVI file, in place of dc.tif). Settings as configs/anyband_paviau.py (the
paper uses one recipe for both scenes); RTM emulator weights for this grid do not ship: train them with
`python -m spectral_diffusion.tools.train_rtm --wavelengths=GRID.npy --out=rtm_wdc.npz` and pass
--config.physics.rtm_weights=rtm_wdc.npz.
"""
from configs import anyband_paviau


def get_config():
  c = anyband_paviau.get_config()
  c.data.name = "washington_dc"
  c.data.num_bands = 191
  c.data.wavelengths = ()            # the file's band centres (or the builder's nominal grid)
  c.data.reflectance_scale = 1.0     # set to what turns the file's values into reflectance
  return c
