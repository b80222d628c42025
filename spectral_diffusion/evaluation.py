"""What both methods' evaluators share: a test split is one image (H, W, B) or a stack of patches
(P, h, w, B) scored patch by patch, every metric the mean over patches (the papers' protocol)."""
import jax
import numpy as np

from spectral_diffusion.data import patches


def mean_scores(scores):
  """The mean of each metric over a list of {metric: value} (one per patch)."""
  return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


def image_shape(cube):
  """(height, width) of an image (H, W, B), or of each patch of a stack (P, h, w, B)."""
  return tuple(np.shape(cube)[-3:-1])


def num_images(cube):
  return 1 if np.ndim(cube) == 3 else len(cube)


def per_image(fn, cube, rng):
  """fn(image, rng) -> list of arrays, on an image (H, W, B) as it is, or on each patch of a stack
  (P, h, w, B) with the key folded with the patch number, the outputs stacked (P, ...)."""
  if np.ndim(cube) == 3:
    return fn(cube, rng)
  outputs = [fn(image, jax.random.fold_in(rng, p)) for p, image in enumerate(cube)]
  return [np.stack(parts) for parts in zip(*outputs)]


def pixelwise(fn, train, test):
  """fn(train image, test image) -> {name: prediction} for per-pixel methods, with stacks of patches
  seen as one image each and the predictions given back in the test split's shape."""
  out = fn(patches.pixels(train), patches.pixels(test))
  return {m: np.reshape(p, np.shape(test)[:-1] + np.shape(p)[-1:]) for m, p in out.items()}


def split_description(test, config):
  """'test split columns (80, 145), 145x65 pixels', or for a stack of patches 'test split: 8 patches
  of 128x128 pixels from the pavia_center builder (metrics: mean over patches)'."""
  if np.ndim(test) == 3:
    return f"test split columns {tuple(config.data.test_cols)}, {test.shape[0]}x{test.shape[1]} pixels"
  return (f"test split: {len(test)} patches of {test.shape[1]}x{test.shape[2]} pixels from the "
          f"{config.data.name} builder (metrics: mean over patches)")
