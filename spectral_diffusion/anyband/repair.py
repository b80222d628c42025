"""`--mode=repair`: rebuild every band of a user's cube with a trained AnyBand model; write the cube
(GeoTIFF or .npy) and a PNG: one sample, or with sample.estimator=mean the mean of sample.num_samples.

What is observed comes in one of three ways:
  - a full-grid cube whose missing bands are entirely NaN;
  - a full-grid cube plus --missing_bands (0-based indices; their values are ignored);
  - a named sensor's bands (--sensor, bands in the sensor's order) placed on the model's grid.
Values are in the training data's units; the output is too. Band centres from the file (ENVI header,
GeoTIFF metadata, .mat variable) or --wavelengths must match the model's grid; a GeoTIFF or ENVI
file without them needs --wavelengths or --sensor. Nodata pixels (the file's nodata value, or NaN in
every observed band) are filled for the network and written back as nodata.
"""
import os

import jax
import numpy as np

from spectral_diffusion import data, physics, pipelines
from spectral_diffusion.data import geo, outputs, values
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.progress import Progress


def observed_bands(cube, missing_bands, num_bands, path):
  """(cube with missing bands zeroed and nodata pixels filled, mask (N,), nodata (H, W)).

  A band is missing when it is NaN at every pixel or listed in missing_bands; a pixel is nodata when
  every observed band is NaN there. Any other NaN in an observed band is an error.
  """
  if cube.shape[-1] != num_bands:
    raise UserInputError(f"{path} has {cube.shape[-1]} bands, the model's grid has {num_bands}; give a "
                         f"{num_bands}-band cube (missing bands NaN), or --sensor=NAME for a sensor's bands")
  mask = np.ones(num_bands, np.float32)
  for i in range(num_bands):  # band by band: no (H, W, N) boolean array
    mask[i] = 0.0 if np.isnan(cube[..., i]).all() else 1.0
  if missing_bands:
    bad = [b for b in missing_bands if not 0 <= b < num_bands]
    if bad:
      raise UserInputError(f"--missing_bands {bad} outside 0..{num_bands - 1}")
    mask[list(missing_bands)] = 0.0
  if not mask.any():
    raise UserInputError(f"every band of {path} is missing; at least one band must be observed")
  observed = np.flatnonzero(mask)
  nodata = data.nodata_pixels(cube, observed)
  out = np.where(mask > 0, cube, np.float32(0.0))
  data.fill_nodata(out, nodata, path, observed)
  data.check_finite(out, f"{path} (observed bands)")
  return out, mask, nodata


def sensor_bands(values, sensor_name, wavelengths_nm, num_bands, path):
  """A sensor's band values (H, W, K) -> (cube on the grid, mask, nodata (H, W)): each band at the
  grid band nearest its centre. K must be the sensor's bands that fall on the grid, in the order the
  error lists them. Pixels NaN in all K bands are nodata."""
  sensor = physics.sensor_on_grid(sensor_name, wavelengths_nm)
  if values.shape[-1] != len(sensor.band_names):
    skipped = f"; outside the grid: {', '.join(sensor.skipped)}" if sensor.skipped else ""
    raise UserInputError(f"{path} has {values.shape[-1]} bands; {sensor_name} has {len(sensor.band_names)} "
                         f"on the model's grid, give them in this order: {', '.join(sensor.band_names)}"
                         f"{skipped}")
  nodata = data.nodata_pixels(values)
  values = data.fill_nodata(np.array(values, np.float32), nodata, path)
  data.check_finite(values, path)
  cube, mask = physics.place_on_grid(values, sensor, num_bands)
  return np.asarray(cube, np.float32), np.asarray(mask, np.float32), nodata


def check_grid(file_nm, grid_nm, path):
  """Refuses a cube whose band centres (file metadata or --wavelengths) are not the model's grid."""
  wl = physics.check_wavelengths(file_nm, len(file_nm))
  grid = np.asarray(grid_nm, np.float64)
  fix = ("resample the cube onto the model's grid, or pass --sensor=NAME if it holds a sensor's bands")
  if wl.shape != grid.shape:
    raise UserInputError(f"{path} has {wl.shape[0]} bands at {wl.min():.1f}-{wl.max():.1f} nm, the "
                         f"model's grid has {grid.shape[0]} at {grid.min():.1f}-{grid.max():.1f} nm; {fix}")
  # Calibrations of one instrument differ by about a nanometre; a quarter band step is another band.
  tol = max(1.0, 0.25 * float(np.median(np.abs(np.diff(grid))))) if grid.size > 1 else 1.0
  gap = np.abs(wl - grid)
  i = int(np.argmax(gap))
  if gap[i] > tol:
    raise UserInputError(f"{path}: band {i} is centred at {wl[i]:.1f} nm, the model's band {i} at "
                         f"{grid[i]:.1f} nm ({gap[i]:.1f} nm apart, more than {tol:.1f}); {fix}")


def repair_file(config, workdir, input_path, output_path=None, input_key=None, missing_bands=None,
                sensor=None, wavelengths=None):
  """Repairs a file; writes the full cube (.tif/.tiff: GeoTIFF with the input's georeferencing and
  the grid's wavelengths; .npy otherwise) and a PNG. Nodata pixels come out as nodata. Every check
  (output location, input values) runs before the repair; both files replace earlier ones only once
  both are complete."""
  if output_path is not None:
    geo.check_output_path(output_path)
    outputs.check_output(output_path, [input_path])
  model = pipelines.AnyBand.load(workdir, config=config)
  n, wl = model.num_bands, model.wavelengths
  scene = data.with_wavelengths(data.load_scene(input_path, input_key), wavelengths, "--wavelengths")
  arr = scene.cube
  if sensor:
    cube, mask, nodata = sensor_bands(arr, sensor, wl, n, input_path)
  else:
    if scene.wavelengths_nm is not None:
      check_grid(scene.wavelengths_nm, wl, input_path)
    elif data.is_raster(input_path):
      raise UserInputError(f"{input_path} has no band wavelengths in its metadata; pass "
                           f"--wavelengths=c1,c2,... (nm, one per band; the model's grid has {n} bands "
                           f"at {wl.min():.1f}-{wl.max():.1f} nm) or --sensor=NAME for a sensor's bands")
    cube, mask, nodata = observed_bands(arr, missing_bands, n, input_path)
  model.check_input(cube, input_path, np.flatnonzero(mask))  # wrong units, blank image, bytes in the wrong order
  if output_path is None:
    output_path = geo.default_output(input_path, os.path.join(workdir, "repaired"), like=scene)
  png = os.path.splitext(output_path)[0] + ".png"
  for path in (output_path, png):
    outputs.check_output(path, [input_path])
  settings = model.settings
  what = settings.estimator_label()
  progress = Progress(settings.num_draws() * model.num_tile_batches(*cube.shape[:2]),
                      f"repairing {int(n - mask.sum())} of {n} bands, {what}")
  result = model.repair(cube, missing=mask == 0, rng=jax.random.key(config.seed), progress=progress)
  progress.close()
  del cube  # large scenes: hold as few full-size copies as possible
  if config.repair.keep_observed and not sensor:  # the file's values, not the filled nodata pixels
    for i in np.flatnonzero(mask):
      result[..., i] = arr[..., i]
  result[nodata] = np.nan
  note = values.output_note(result, model.value_range)  # NaN (nodata) counts as neither sign
  fwhm = scene.fwhm_nm if not sensor and scene.wavelengths_nm is not None else None
  with outputs.Staged() as staged:
    data.write_cube(staged.path(output_path), result, like=scene, wavelengths_nm=wl, fwhm_nm=fwhm)
    _save_png(staged.path(png), result, wl, mask)
  print(f"wrote {output_path} {result.shape} ({what}; {int(mask.sum())} observed bands kept"
        f"{'' if config.repair.keep_observed else ' as the model returned them'}"
        f"{f', {int(nodata.sum())} nodata pixels' if nodata.any() else ''}), and {png}{note}")
  return result


def _save_png(path, cube, wl, mask):
  from spectral_diffusion import plots
  import matplotlib.pyplot as plt
  rgb = data.nearest_bands(wl, data.RGB_NM)
  fig, axes = plt.subplots(1, 2, figsize=(9, 4))
  axes[0].imshow(plots.false_colour(cube, rgb)[0])
  axes[0].set_title("repaired cube, bands nearest 640/550/460 nm")
  h, w = cube.shape[:2]
  order = np.argsort(wl)
  obs = np.flatnonzero(mask)
  for r, c in ((h // 4, w // 4), (h // 2, w // 2), (3 * h // 4, 3 * w // 4)):
    line, = axes[1].plot(wl[order], cube[r, c, order], lw=1, label=f"pixel ({r}, {c})")
    axes[1].plot(wl[obs], cube[r, c, obs], "o", ms=3, color=line.get_color(), mfc="none")
  axes[1].set_xlabel("wavelength (nm)")
  axes[1].set_title("spectra (circles: observed bands)")
  axes[1].legend(fontsize=7)
  axes[0].set_xticks([]), axes[0].set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)

