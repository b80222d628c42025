"""`--mode=repair`: rebuild every band of a user's cube with a trained AnyBand model; write .npy and a PNG.

What is observed comes in one of three ways:
  - a full-grid cube whose missing bands are entirely NaN;
  - a full-grid cube plus --missing_bands (0-based indices; their values are ignored);
  - a named sensor's bands (--sensor, bands in the sensor's order) placed on the model's grid.
Values are in the training data's units; the output is too.
"""
import os

import jax
import numpy as np

from spectral_diffusion import anyband, cascade, data, physics
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.progress import Progress


def observed_bands(cube, missing_bands, num_bands, path):
  """(cube with missing bands zeroed, mask (N,)) from NaN bands or an index list; checks the rest."""
  if cube.shape[-1] != num_bands:
    raise UserInputError(f"{path} has {cube.shape[-1]} bands, the model's grid has {num_bands}; give a "
                         f"{num_bands}-band cube (missing bands NaN), or --sensor=NAME for a sensor's bands")
  nan_bands = np.isnan(cube).all(axis=(0, 1))
  mask = (~nan_bands).astype(np.float32)
  if missing_bands:
    bad = [b for b in missing_bands if not 0 <= b < num_bands]
    if bad:
      raise UserInputError(f"--missing_bands {bad} outside 0..{num_bands - 1}")
    mask[list(missing_bands)] = 0.0
  if not mask.any():
    raise UserInputError(f"every band of {path} is missing; at least one band must be observed")
  data.check_finite(cube[..., mask > 0], f"{path} (observed bands)")
  return np.where(mask > 0, cube, 0.0).astype(np.float32), mask


def sensor_bands(values, sensor_name, wavelengths_nm, num_bands, path):
  """A sensor's band values (H, W, K) -> (cube on the grid, mask): each band at the grid band nearest
  its centre. K must be the sensor's bands that fall on the grid, in the order the error lists them."""
  sensor = physics.sensor_on_grid(sensor_name, wavelengths_nm)
  if values.shape[-1] != len(sensor.band_names):
    skipped = f"; outside the grid: {', '.join(sensor.skipped)}" if sensor.skipped else ""
    raise UserInputError(f"{path} has {values.shape[-1]} bands; {sensor_name} has {len(sensor.band_names)} "
                         f"on the model's grid, give them in this order: {', '.join(sensor.band_names)}"
                         f"{skipped}")
  data.check_finite(values, path)
  cube, mask = physics.place_on_grid(values, sensor, num_bands)
  return np.asarray(cube, np.float32), np.asarray(mask, np.float32)


def repair_file(config, workdir, input_path, output_path=None, input_key=None, missing_bands=None,
                sensor=None):
  bundle = anyband.load_model(config, workdir)
  meta = bundle.meta
  n = meta["num_bands"]
  wl = np.asarray(meta["wavelengths_nm"])
  normaliser = data.normaliser_from_dict(meta["normaliser"])
  arr = data.load_array(input_path, input_key)
  if arr.ndim != 3:
    raise UserInputError(f"{input_path} has shape {arr.shape}; expected an (H, W, bands) cube")
  arr = arr.astype(np.float32)
  if sensor:
    cube, mask = sensor_bands(arr, sensor, wl, n, input_path)
  else:
    cube, mask = observed_bands(arr, missing_bands, n, input_path)
  if output_path is None:
    stem = os.path.splitext(os.path.basename(input_path))[0]
    output_path = os.path.join(workdir, "repaired", f"{stem}.npy")
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  pgs = bool(config.physics.guidance_scale)
  phys = anyband.make_physics(config, wl, normaliser, pgs and bool(config.physics.guidance_terms[2]))
  progress = Progress(cascade.num_tile_batches([bundle], config.sample, *cube.shape[:2]),
                      f"repairing {int(n - mask.sum())} of {n} bands")
  out = anyband.repair(bundle, normaliser.forward(cube) * mask, mask, jax.random.key(config.seed), config,
                       phys, pgs=pgs, progress=progress)
  progress.close()
  result = normaliser.inverse(out).astype(np.float32)
  if config.repair.keep_observed and not sensor:  # bit-exact, not through the normaliser round trip
    result[..., mask > 0] = arr[..., mask > 0]
  # A temporary name first, so a failure never leaves a half-written file under the real name.
  tmp = output_path + ".partial.npy"
  np.save(tmp, result)
  os.replace(tmp, output_path)
  png = os.path.splitext(output_path)[0] + ".png"
  _save_png(png, result, wl, mask)
  print(f"wrote {output_path} {result.shape} ({int(mask.sum())} observed bands kept"
        f"{'' if config.repair.keep_observed else ' as the model returned them'}), and {png}")
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

