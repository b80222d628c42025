"""`--mode=sample`: run a trained cascade on a user's image file; write the cube (.npy) and a PNG."""
import os

import jax
import numpy as np

from spectral_diffusion import cascade, data, train
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.progress import Progress


def load_cascade_from_workdir(config, workdir):
  """Every stage of the cascade, from the checkpoints alone (no training data needed)."""
  bundles, metas = [], []
  for k in range(config.cascade.num_stages):
    bundle, meta = train.load_stage(config, workdir, k)
    bundles.append(bundle)
    metas.append(meta)
  return bundles, metas


def read_input(path, key, input_bands, rgb_bands, num_bands):
  """The RGB bands of an input file, raw values (H, W, 3): an RGB image, or a cube with band indices."""
  arr = data.load_array(path, key)
  if arr.ndim != 3:
    raise UserInputError(f"{path} has shape {arr.shape}; expected an (H, W, bands) image")
  arr = arr.astype(np.float32)
  if input_bands is not None:
    if len(input_bands) != 3 or any(not 0 <= b < arr.shape[-1] for b in input_bands):
      raise UserInputError(f"--input_bands={input_bands} must be 3 indices below {arr.shape[-1]} "
                           f"(R, G, B of {path})")
    arr = arr[..., input_bands]
  elif arr.shape[-1] == num_bands:
    arr = arr[..., list(rgb_bands)]   # a full cube: take the bands the cascade was trained on
  elif arr.shape[-1] != 3:
    raise UserInputError(f"{path} has {arr.shape[-1]} bands; the cascade takes 3 (RGB) or a full "
                         f"{num_bands}-band cube; pass --input_bands=R,G,B to pick three")
  data.check_finite(arr, path)
  return arr


def sample_file(config, workdir, input_path, output_path=None, input_key=None, input_bands=None):
  bundles, metas = load_cascade_from_workdir(config, workdir)
  meta = metas[0]
  normaliser = data.normaliser_from_dict(meta["normaliser"])
  rgb = read_input(input_path, input_key, input_bands, meta["in_bands"], meta["num_bands"])
  if output_path is None:
    stem = os.path.splitext(os.path.basename(input_path))[0]
    output_path = os.path.join(workdir, "samples", f"{stem}.npy")
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  schedule = train.make_schedule(config.diffusion)
  progress = Progress(cascade.num_tile_batches(bundles, config.sample, *rgb.shape[:2]), "sampling")
  outputs = cascade.run_cascade(bundles, schedule, normaliser.forward(rgb), jax.random.key(config.seed),
                                config.sample, progress)
  progress.close()
  cube = normaliser.inverse(outputs[-1]).astype(np.float32)
  # Write to a temporary name first so a failure never leaves a half-written file under the real name.
  tmp = output_path + ".partial.npy"
  np.save(tmp, cube)
  os.replace(tmp, output_path)
  png = os.path.splitext(output_path)[0] + ".png"
  _save_png(png, cube, meta)
  print(f"wrote {output_path} {cube.shape} in the training data's units, and {png}")
  return cube


def _save_png(path, cube, meta):
  from spectral_diffusion import plots
  import matplotlib.pyplot as plt
  spread = [int(i) for i in np.linspace(0, cube.shape[-1] - 1, 5)[1:4]]
  fig, axes = plt.subplots(1, 2, figsize=(8, 4))
  axes[0].imshow(plots.false_colour(cube, meta["in_bands"])[0])  # stage 1's inputs: the RGB bands
  axes[0].set_title("output, input (RGB) bands")
  axes[1].imshow(plots.false_colour(cube, spread)[0])
  axes[1].set_title(f"output, bands {spread}")
  for ax in axes:
    ax.set_xticks([]), ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
