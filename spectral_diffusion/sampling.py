"""What both methods share at sampling time: the sampler settings, the sampler dispatch, and large images
run as overlapping tiles through one compiled program per tile batch.

`SampleSettings` is the typed form of a config's `sample` section, checked once (`from_config`); library
code takes it instead of the ConfigDict. `estimate` turns draws of a sampler into what an estimator
returns (one sample, or the mean of several: the posterior-mean estimate), for both methods, and
`keep_observed` puts the input's own bands back into an output. `run_tiled` cuts an image already on
the device into tiles, runs `tile_fn(params, tiles, rng)` on each batch and blends the outputs with
linear ramps, gathering and blending inside the same compiled call: one device dispatch per tile
batch, no host round trip.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from spectral_diffusion import samplers, sharding
from spectral_diffusion.data import patches
from spectral_diffusion.errors import UserInputError

SAMPLERS = tuple(samplers.SAMPLERS)
PROGRAMS = ("auto", "compiled", "python")
PDT_TARGETS = ("eps", "state")
ESTIMATORS = ("sample", "mean")
DDPM_VARIANCES = ("beta", "posterior")
LOOPS = ("auto", "scan", "python")


def _tuple(value):
  return tuple(value) if isinstance(value, (tuple, list)) else (value,)


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """How to sample (the `sample` section of a config, see configs/default.py for each field)."""
  sampler: str = "ddim"
  num_steps: int = 10
  spacing: str = "logsnr"
  unipc_order: int = 2
  eta: float = 0.0
  ddpm_variance: str = "beta"
  icmg_scale: tuple = (0.0,)
  pdt_p_start: tuple = (1.0,)
  pdt_target: str = "state"
  estimator: str = "sample"
  num_samples: int = 1
  tile_size: int = 64
  tile_overlap: int = 16
  batch_size: int = 8
  loop: str = "auto"
  program: str = "auto"
  allow_out_of_range: bool = False   # run on input far from the training range (data.values)

  def __post_init__(self):
    for name, allowed in (("sampler", SAMPLERS), ("spacing", samplers.SPACINGS), ("pdt_target", PDT_TARGETS),
                          ("ddpm_variance", DDPM_VARIANCES), ("loop", LOOPS), ("program", PROGRAMS),
                          ("estimator", ESTIMATORS)):
      if getattr(self, name) not in allowed:
        raise UserInputError(f"unknown sample.{name} {getattr(self, name)!r}: use one of {', '.join(allowed)}")
    for name, low in (("num_steps", 1), ("num_samples", 1), ("tile_size", 1), ("batch_size", 1),
                      ("tile_overlap", 0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UserInputError(f"sample.{name} is {value!r}: use a whole number >= {low}")
    if self.unipc_order not in (2, 3):
      raise UserInputError(f"sample.unipc_order is {self.unipc_order!r}: use 2 or 3")
    if not isinstance(self.allow_out_of_range, (bool, np.bool_)):
      raise UserInputError(f"sample.allow_out_of_range is {self.allow_out_of_range!r}: use True or False")
    if self.eta < 0:
      raise UserInputError(f"sample.eta is {self.eta}: use a value >= 0 (0 = deterministic DDIM)")
    for p in self.pdt_p_start:
      if not 0.0 < p <= 1.0:
        raise UserInputError(f"sample.pdt_p_start has {p}: use percentiles in (0, 1] (1 = no PDT)")

  @classmethod
  def from_config(cls, sample_cfg, **overrides):
    """From a config's `sample` section (a ConfigDict or dict); unknown keys are errors."""
    values = dict(sample_cfg.items() if hasattr(sample_cfg, "items") else sample_cfg)
    values.update(overrides)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise UserInputError(f"unknown sample setting(s) {', '.join(unknown)}; the settings are "
                           f"{', '.join(sorted(fields))}")
    for key in ("icmg_scale", "pdt_p_start"):
      if key in values:
        values[key] = tuple(float(v) for v in _tuple(values[key]))
    for key in ("eta",):
      if key in values:
        values[key] = float(values[key])
    return cls(**values)

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  def num_draws(self):
    """Sampler runs per image: sample.num_samples for the mean estimator, else 1 (progress bars)."""
    return self.num_samples if self.estimator == "mean" else 1

  def estimator_label(self):
    """What a run returns, in words (progress bars and messages)."""
    return f"the mean of {self.num_samples} samples" if self.estimator == "mean" else "one sample"

  def compiled(self):
    """Whether images run as one compiled program per tile batch (program auto: on accelerators)."""
    if self.program == "auto":
      return jax.default_backend() != "cpu"
    return self.program == "compiled"


def sample_keys(rng, num_samples):
  """The keys of num_samples draws: rng itself for one, jax.random.fold_in(rng, i) for draw i of several."""
  return [rng] if num_samples == 1 else [jax.random.fold_in(rng, i) for i in range(num_samples)]


def estimate(draw, rng, estimator, num_samples):
  """What `estimator` returns from draw(key) -> one sample (an array, or a list of arrays).

  sample: draw(rng), or with num_samples > 1 the draws stacked on a new leading axis; mean: the mean of
  num_samples draws (the posterior-mean estimate PSNR, SAM and SSIM should score; with one sampler step
  each draw is already the network's estimate of E[x0 | input], so the mean only averages out x_T).
  Draw i uses sample_keys(rng, num_samples)[i]. The mean is a running float64 sum (memory for two
  outputs, not num_samples), so values equal in every draw (observed bands) come back exactly.
  """
  if estimator not in ESTIMATORS:
    raise UserInputError(f"unknown estimator {estimator!r}: use one of {', '.join(ESTIMATORS)}")
  if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
    raise UserInputError(f"num_samples is {num_samples!r}: use a whole number >= 1")
  keys = sample_keys(rng, num_samples)
  if estimator == "sample":
    draws = [draw(key) for key in keys]
    return draws[0] if num_samples == 1 else jax.tree.map(lambda *xs: np.stack(xs), *draws)
  return sample_and_mean(draw, keys)[1]


def sample_and_mean(draw, keys):
  """(draw(keys[0]), the float32 mean of draw(key) over keys): both estimators from one set of draws
  (what the evaluators report). A running float64 sum: memory for two outputs, not one per key."""
  first = total = None
  for key in keys:
    x = draw(key)
    first = x if first is None else first
    x = jax.tree.map(lambda a: np.asarray(a, np.float64), x)
    total = x if total is None else jax.tree.map(np.add, total, x)
  return first, jax.tree.map(lambda a: (a / len(keys)).astype(np.float32), total)


def keep_observed(out, observed, bands):
  """out (..., N) with its bands `bands` set to `observed` (..., len(bands)): the input's own values,
  bit for bit, where the output has bands the input gave. numpy arrays are changed in place (large
  scenes) and returned; JAX arrays (inside compiled programs) are returned updated."""
  bands = np.asarray(bands, np.int64)
  if isinstance(out, jax.Array):
    return out.at[..., bands].set(jnp.asarray(observed, out.dtype))
  out[..., bands] = observed
  return out


def run_sampler(settings, eps_fn, schedule, shape, rng, x_transform=None, num_steps=None, loop=None):
  """x0 from the sampler `settings` names (num_steps overrides settings.num_steps, loop settings.loop)."""
  name, steps = settings.sampler, num_steps or settings.num_steps  # names checked by SampleSettings
  if name != "ddpm" and not 1 <= steps <= schedule.num_timesteps:
    raise UserInputError(f"sample.num_steps is {steps}: use 1 to {schedule.num_timesteps} "
                         f"(diffusion.num_timesteps)")
  loop = loop or settings.loop
  if name == "ddim":
    return samplers.ddim(eps_fn, schedule, shape, rng, num_steps=steps, eta=settings.eta,
                         x_transform=x_transform, loop=loop)
  if name == "ddpm":  # every step of the schedule
    return samplers.ddpm(eps_fn, schedule, shape, rng, variance=settings.ddpm_variance,
                         x_transform=x_transform, loop=loop)
  extra = {"order": settings.unipc_order} if name == "unipc" else {}
  return samplers.SAMPLERS[name](eps_fn, schedule, shape, rng, num_steps=steps, spacing=settings.spacing,
                                 x_transform=x_transform, loop=loop, **extra)


def tile_size_for(min_size, settings, height, width):
  """The largest tile <= sample.tile_size that fits the image and the model's size multiple."""
  if settings.tile_size < min_size:
    raise UserInputError(f"sample.tile_size={settings.tile_size} is smaller than the model's minimum size "
                         f"{min_size}; use a multiple of {min_size}, e.g. {max(64 // min_size, 1) * min_size}")
  size = min(settings.tile_size, height, width) // min_size * min_size
  if size < min_size:
    raise UserInputError(f"the image is {height}x{width} pixels, smaller than the model's minimum size "
                         f"{min_size}x{min_size}; use a larger image (or pad it)")
  return size


def pad_to_min_size(image, min_size):
  """An (H, W, C) image edge-padded at the bottom and right to at least min_size on each side, so strips
  narrower than the model run (crop the output back to [:H, :W])."""
  h, w = image.shape[:2]
  if h >= min_size and w >= min_size:
    return image
  xp = jnp if isinstance(image, jax.Array) else np
  return xp.pad(image, ((0, max(min_size - h, 0)), (0, max(min_size - w, 0)), (0, 0)), mode="edge")


def tiling(min_size, settings, height, width):
  """(tile size, overlap, tile positions) for an image."""
  size = tile_size_for(min_size, settings, height, width)
  overlap = min(settings.tile_overlap, size // 2)
  return size, overlap, patches.tile_positions(height, width, size, overlap)


def num_tile_batches(min_size, settings, height, width):
  """Tile batches an image takes (for progress bars)."""
  return -(-len(tiling(min_size, settings, height, width)[2]) // settings.batch_size)


@functools.partial(jax.jit, static_argnames=("tile_fn", "size"), donate_argnames=("acc",))
def _tile_batch(tile_fn, params, image, acc, positions, valid, window, rng, size):
  """acc + the blended outputs of tile_fn on the tiles at `positions` (rows of (y, x)); one compiled call."""
  bands = image.shape[-1]
  tiles = jax.vmap(lambda p: jax.lax.dynamic_slice(image, (p[0], p[1], 0), (size, size, bands)))(positions)
  tiles = sharding.constrain_to_local_devices(tiles)  # data-parallel over this host's devices
  out = tile_fn(params, tiles, rng).astype(jnp.float32)

  def add(j, acc):
    y, x = positions[j, 0], positions[j, 1]
    here = jax.lax.dynamic_slice(acc, (y, x, 0), (size, size, acc.shape[-1]))
    return jax.lax.dynamic_update_slice(acc, here + valid[j] * window[:, :, None] * out[j], (y, x, 0))

  return jax.lax.fori_loop(0, positions.shape[0], add, acc)


def run_tiled(tile_fn, params, image, rng, min_size, settings, out_bands, progress=None):
  """Runs tile_fn(params, tiles (n, s, s, C), rng) -> (n, s, s, out_bands) over the overlapping tiles of
  `image` (H, W, C), settings.batch_size tiles per compiled call, and returns the blended (H, W, out)
  as a JAX array. Batch i uses jax.random.fold_in(rng, i); the last batch repeats its last tile (weight 0).

  tile_fn must be hashable (it is a static argument: the same tile_fn reuses the compiled program).
  """
  h, w = image.shape[:2]
  size, overlap, positions = tiling(min_size, settings, h, w)
  window = patches._window(size, overlap)
  weight = np.zeros((h, w, 1), np.float32)
  for y, x in positions:
    weight[y:y + size, x:x + size] += window[:, :, None]
  image = jnp.asarray(image, jnp.float32)
  acc = jnp.zeros((h, w, out_bands), jnp.float32)
  window = jnp.asarray(window)
  batch = settings.batch_size
  for i, start in enumerate(range(0, len(positions), batch)):
    chunk = positions[start:start + batch]
    valid = np.arange(batch) < len(chunk)
    chunk = np.asarray(chunk + [chunk[-1]] * (batch - len(chunk)), np.int32)
    acc = _tile_batch(tile_fn, params, image, acc, chunk, valid.astype(np.float32), window,
                      jax.random.fold_in(rng, i), size)
    if progress is not None:
      progress.update(1)
  return acc / jnp.asarray(weight)
