"""AnyBand-Diff on Washington DC Mall with the paper's settings (HYDICE, 1208x307x191, 400-2400 nm).

  python -m spectral_diffusion.main --config=configs/anyband_wdc.py --workdir=runs/anyband_wdc \\
      --config.data.path=dc.npy --config.data.wavelengths='(...)'

The cube (dc.tif) comes from Purdue's MultiSpec page; save it as .npy (H, W, 191) and give its 191 band
centres in nm (or a .mat with a 'wavelengths' variable). Settings as configs/anyband_paviau.py (the
paper uses one recipe for both scenes); RTM emulator weights for this grid do not ship: train them with
`python -m spectral_diffusion.physics.rtm --wavelengths=GRID.npy --out=rtm_wdc.npz` and pass
--config.physics.rtm_weights=rtm_wdc.npz.
"""
from configs import anyband_paviau


def get_config():
  c = anyband_paviau.get_config()
  c.data.name = "washington_dc"
  c.data.key = ""
  c.data.num_bands = 191
  c.data.wavelengths = ()
  c.data.reflectance_scale = 1.0     # set to what turns the file's values into reflectance
  c.data.train_cols = (0, 220)
  c.data.test_cols = (236, 307)
  return c
