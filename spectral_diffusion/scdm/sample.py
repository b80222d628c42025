"""`--mode=sample`: run a trained cascade on a user's image file; write the cube (GeoTIFF or .npy) and a PNG.
sample.estimator picks one sample or the mean of sample.num_samples (pipelines.SCDM.sample)."""
import os

import jax
import numpy as np

from spectral_diffusion import data, physics, pipelines
from spectral_diffusion.data import geo, outputs, values
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.progress import Progress


def read_input(path, key, input_bands, rgb_bands, num_bands, grid_nm=None, wavelengths=None, sensor=None):
  """The RGB bands of an input file, raw values (H, W, 3), and the input scene.

  The three bands are, in order of precedence: --input_bands; the bands nearest the cascade's RGB
  band centres when the file (or --wavelengths, or --sensor's band centres) gives wavelengths and the
  checkpoint has a grid; a 3-band image as R, G, B; the trained RGB bands of a full-grid cube.
  Pixels NaN in all three bands (nodata) are kept NaN here; a NaN in only some is an error.
  """
  scene = data.load_scene(path, key)
  arr = scene.cube
  if sensor:
    if grid_nm is None:
      raise UserInputError("--sensor needs band wavelengths in the checkpoint, and this cascade was "
                           "trained without them; pass --input_bands=R,G,B instead")
    on_grid = physics.sensor_on_grid(sensor, grid_nm)
    if arr.shape[-1] != on_grid.num_bands:
      raise UserInputError(f"{path} has {arr.shape[-1]} bands; {sensor} has {on_grid.num_bands} on the "
                           f"model's grid, give them in this order: {', '.join(on_grid.band_names)}")
    wavelengths = on_grid.centres_nm
  scene = data.with_wavelengths(scene, wavelengths, "--sensor" if sensor else "--wavelengths")
  wl = scene.wavelengths_nm
  if input_bands is not None:
    if len(input_bands) != 3 or any(not 0 <= b < arr.shape[-1] for b in input_bands):
      raise UserInputError(f"--input_bands={input_bands} must be 3 indices below {arr.shape[-1]} "
                           f"(R, G, B of {path})")
    bands = list(input_bands)
  elif wl is not None and grid_nm is not None:
    bands = data.nearest_bands(wl, np.asarray(grid_nm)[list(rgb_bands)])
  elif data.is_raster(path) and arr.shape[-1] != 3:
    raise UserInputError(f"{path} has {arr.shape[-1]} bands and no band wavelengths in its metadata, so "
                         "the RGB bands cannot be found; pass --wavelengths=c1,c2,... (nm, one per band), "
                         "--sensor=NAME, or --input_bands=R,G,B")
  elif arr.shape[-1] == num_bands:
    bands = list(rgb_bands)   # a full cube: take the bands the cascade was trained on
  elif arr.shape[-1] == 3:
    bands = [0, 1, 2]
  else:
    raise UserInputError(f"{path} has {arr.shape[-1]} bands; the cascade takes 3 (RGB) or a full "
                         f"{num_bands}-band cube; pass --input_bands=R,G,B to pick three, or "
                         "--wavelengths=c1,c2,... (nm) to pick them by wavelength")
  rgb = arr[..., bands]
  nodata = data.nodata_pixels(rgb)
  data.check_finite(np.where(nodata[..., None], 0.0, rgb), path)
  return rgb, nodata, scene


def sample_file(config, workdir, input_path, output_path=None, input_key=None, input_bands=None,
                wavelengths=None, sensor=None):
  """Runs the cascade on a file; writes the cube (.tif/.tiff: GeoTIFF with the input's georeferencing
  and the grid's wavelengths; .npy otherwise) and a PNG: sample.estimator's output, the RGB bands
  exactly as read. Nodata pixels come out as nodata. Every check
  (output location, input values) runs before sampling; both files replace earlier ones only once
  both are complete."""
  if output_path is not None:
    geo.check_output_path(output_path)
    outputs.check_output(output_path, [input_path])
  scdm = pipelines.SCDM.load(workdir, config=config)
  grid = None if scdm.wavelengths is None else list(scdm.wavelengths)
  rgb, nodata, scene = read_input(input_path, input_key, input_bands, scdm.rgb_bands, scdm.num_bands,
                                  grid, wavelengths, sensor)
  scdm.check_input(rgb, input_path)  # wrong units, blank image, bytes read in the wrong order
  rgb = data.fill_nodata(rgb, nodata, input_path)
  if output_path is None:
    output_path = geo.default_output(input_path, os.path.join(workdir, "samples"), like=scene)
  png = os.path.splitext(output_path)[0] + ".png"
  for path in (output_path, png):
    outputs.check_output(path, [input_path])
  settings = scdm.settings
  what = settings.estimator_label()
  progress = Progress(settings.num_draws() * scdm.num_tile_batches(*rgb.shape[:2]), f"sampling {what}")
  cube = scdm.sample(rgb, jax.random.key(config.seed), progress=progress)  # sample.estimator
  progress.close()
  cube[nodata] = np.nan
  note = values.output_note(cube, scdm.value_range)  # NaN (nodata) counts as neither sign
  with outputs.Staged() as staged:
    data.write_cube(staged.path(output_path), cube, like=scene, wavelengths_nm=grid)
    _save_png(staged.path(png), cube, scdm.rgb_bands)
  print(f"wrote {output_path} {cube.shape} ({what}, RGB bands {list(scdm.rgb_bands)} as given) in the "
        f"training data's units"
        f"{f', {int(nodata.sum())} nodata pixels' if nodata.any() else ''}, and {png}{note}")
  return cube


def _save_png(path, cube, rgb_bands):
  from spectral_diffusion import plots
  import matplotlib.pyplot as plt
  spread = [int(i) for i in np.linspace(0, cube.shape[-1] - 1, 5)[1:4]]
  fig, axes = plt.subplots(1, 2, figsize=(8, 4))
  axes[0].imshow(plots.false_colour(cube, rgb_bands)[0])  # stage 1's inputs: the RGB bands
  axes[0].set_title("output, input (RGB) bands")
  axes[1].imshow(plots.false_colour(cube, spread)[0])
  axes[1].set_title(f"output, bands {spread}")
  for ax in axes:
    ax.set_xticks([]), ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
