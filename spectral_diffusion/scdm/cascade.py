"""Band allocation over cascade stages, and the mapping between bands and each stage's model space.

A stage maps its input bands (the RGB bands, or the previous stage's output) to its output bands.
The network diffuses x0 = target_scale * (y - reference), where the reference is 0.5 (centre of
min-max normalised data) or, with a regression prior, the (degree-1 or degree-2) ridge prediction of y
from the input bands; the network's condition is the input bands, plus the prior prediction when there is one.
"""
import dataclasses
import math
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from spectral_diffusion import baselines, checkpoints, data, guidance, losses, models, sampling, sharding
from spectral_diffusion.errors import UserInputError


def first_stage_bands(num_bands):
  """Bands produced by stage 1 of a two-stage cascade from RGB: floor(3 * sqrt(N / 3))."""
  return int(math.floor(3 * math.sqrt(num_bands / 3)))


def stage_band_counts(num_bands, num_stages, num_input_bands=3):
  """Band counts after each stage, growing geometrically from the input count to all bands."""
  if num_stages < 1:
    raise ValueError(f"num_stages must be >= 1, got {num_stages}")
  counts = [int(math.floor(num_input_bands * (num_bands / num_input_bands) ** (k / num_stages)))
            for k in range(1, num_stages)]
  return counts + [num_bands]


def equal_interval_bands(num_bands, count):
  """`count` band indices at equal intervals of the full grid (N=48, 12 -> every 4th band)."""
  if count >= num_bands:
    return tuple(range(num_bands))
  stride = num_bands // count
  return tuple(int(i) * stride for i in range(count))


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  in_bands: tuple    # indices into the full band grid
  out_bands: tuple


def plan_stages(num_bands, rgb_bands, num_stages):
  """The cascade: RGB -> ... -> all bands. Stage k's input is exactly stage k-1's output."""
  stages, previous = [], tuple(int(b) for b in rgb_bands)
  for k, count in enumerate(stage_band_counts(num_bands, num_stages, len(previous))):
    out = equal_interval_bands(num_bands, count)
    stages.append(Stage(k, previous, out))
    previous = out
  return stages


@dataclasses.dataclass
class StageSpace:
  """Maps normalised band values to one stage's model space and back: numpy on host arrays, JAX (float32,
  traceable) on JAX arrays, so one definition serves the host driver and the compiled cascade."""
  out_dim: int
  target_scale: object             # a float, or (out_dim,) float32 per band (diffusion.residual_scale)
  prior: Optional[object] = None   # baselines.RidgeModel when the stage diffuses a residual

  def reference(self, cond):
    if isinstance(cond, jax.Array):
      if self.prior is None:
        return jnp.full(cond.shape[:-1] + (self.out_dim,), 0.5, jnp.float32)
      return baselines.predict_ridge_jax(self.prior, cond)
    if self.prior is None:
      return np.full(cond.shape[:-1] + (self.out_dim,), 0.5, np.float32)
    flat = np.asarray(cond).reshape(-1, cond.shape[-1])
    return baselines.predict_ridge(self.prior, flat).astype(np.float32).reshape(cond.shape[:-1] + (-1,))

  def condition_bands(self, num_in):
    return num_in + (self.out_dim if self.prior is not None else 0)

  def network_condition(self, cond, reference):
    """What the network sees: the inputs (and the prior prediction) mapped to about [-1, 1]."""
    xp = jnp if isinstance(cond, jax.Array) else np
    parts = [2.0 * cond - 1.0] + ([2.0 * reference - 1.0] if self.prior is not None else [])
    return xp.concatenate(parts, axis=-1).astype(xp.float32)

  def to_model(self, y, reference):
    return (self.target_scale * (y - reference)).astype(np.float32)

  def from_model(self, x, reference):
    if isinstance(reference, jax.Array):
      return x.astype(jnp.float32) / self.target_scale + reference
    return np.asarray(x, np.float32) / self.target_scale + reference


@dataclasses.dataclass(frozen=True)
class StageDenoiser:
  """eps(x_t, t) of one stage with its guidance, as a hashable callable.

  Used as jax.tree_util.Partial(denoiser, params, cond, schedule): the arrays are pytree leaves and the
  denoiser is static and compared by value, so a sampler's compiled step is reused across tiles,
  images and calls instead of being traced again for every new closure.
  """
  model: object                 # a Flax module (hashable by its fields)
  parameterisation: str
  icmg_scale: float
  pdt_p_start: float            # 1.0 = no PDT
  pdt_target: str               # eps (paper) | state (official code; see pdt_state_transform)

  def __call__(self, params, cond, schedule, x_t, t):
    def model_fn(x, tt, c):
      out = self.model.apply({"params": params}, x, tt, c)
      return losses.to_eps_and_x0(schedule, self.parameterisation, x, tt, out)[0]

    eps_fn = guidance.icmg_eps_fn(model_fn, cond, self.icmg_scale)  # one batched call when scale != 0
    if self.pdt_target == "eps" and self.pdt_p_start < 1.0:
      eps_fn = guidance.pdt_eps_fn(eps_fn, schedule.num_timesteps, self.pdt_p_start)
    return eps_fn(x_t, t)


def pdt_state_transform(p_start, num_timesteps, x_t, t):
  """The official code's PDT (clamp the state x_t before the network call), for a tree_util.Partial."""
  return guidance.pdt_x_transform(num_timesteps, p_start)(x_t, t)


@dataclasses.dataclass
class StageBundle:
  """A trained stage, ready to sample: plan, model space, module, (EMA) parameters, parameterisation."""
  stage: Stage
  space: StageSpace
  model: object
  params: dict
  parameterisation: str


def per_stage(value, k, what):
  """Stage k's setting from a config value that is either one value for all stages or one per stage."""
  values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  if len(values) == 1:
    return values[0]
  if k >= len(values):
    raise UserInputError(f"{what} has {len(values)} values but the cascade has stage {k + 1}; "
                         f"give one value per stage")
  return values[k]


def _stage_eps(bundle, params, schedule, cond, settings):
  """(eps_fn, x_transform, reference) of one stage for input-band tiles `cond` (numpy or JAX)."""
  k = bundle.stage.index
  p_start = float(per_stage(settings.pdt_p_start, k, "sample.pdt_p_start"))
  denoiser = StageDenoiser(bundle.model, bundle.parameterisation,
                           float(per_stage(settings.icmg_scale, k, "sample.icmg_scale")),
                           p_start, settings.pdt_target)
  reference = bundle.space.reference(cond)
  net_cond = jnp.asarray(bundle.space.network_condition(cond, reference))
  if not isinstance(cond, jax.Array):  # host driver: place the batch over the devices here
    params, net_cond = sharding.shard_for_sampling(params, net_cond)
  eps_fn = jax.tree_util.Partial(denoiser, params, net_cond, schedule)
  x_transform = None
  if settings.pdt_target == "state" and p_start < 1.0:
    x_transform = jax.tree_util.Partial(pdt_state_transform, jnp.float32(p_start), schedule.num_timesteps)
  return eps_fn, x_transform, reference


def sample_stage(bundle, schedule, cond, rng, settings):
  """Samples one stage's output bands (normalised units) for a batch of input-band tiles (n, h, w, in)
  on the host driver (numpy in and out, the sampler's own loop)."""
  eps_fn, x_transform, reference = _stage_eps(bundle, bundle.params, schedule, cond, settings)
  shape = cond.shape[:-1] + (bundle.space.out_dim,)
  x0 = sampling.run_sampler(settings, eps_fn, schedule, shape, rng, x_transform=x_transform)
  return bundle.space.from_model(x0, reference)


@dataclasses.dataclass(frozen=True, eq=False)
class CascadeProgram:
  """The whole cascade on a batch of raw input tiles as one traceable function:
  program(params, tiles (B, h, w, in) raw, rng) -> (B, h, w, N) raw, the output bands the input bands
  are (stage 1's in_bands) holding the input exactly. params is one parameter tree per
  stage; stage k uses jax.random.fold_in(rng, k), and its output feeds stage k+1 on the device. Each
  stage's sampler is a lax.scan, so under jit the batch is one program with one loop per stage.
  Hashable by identity: one instance reuses its compiled program."""
  bundles: tuple
  schedule: object
  settings: object           # sampling.SampleSettings
  normaliser: object         # data.MinMax | data.Affine

  def __call__(self, params, tiles, rng):
    x = self.normaliser.forward(jnp.asarray(tiles, jnp.float32)).astype(jnp.float32)
    for bundle, p in zip(self.bundles, params):
      eps_fn, x_transform, reference = _stage_eps(bundle, p, self.schedule, x, self.settings)
      shape = x.shape[:-1] + (bundle.space.out_dim,)
      x0 = sampling.run_sampler(self.settings, eps_fn, self.schedule, shape,
                                jax.random.fold_in(rng, bundle.stage.index), x_transform=x_transform,
                                loop="scan")
      x = bundle.space.from_model(x0, reference)
    out = self.normaliser.inverse(x).astype(jnp.float32)
    return sampling.keep_observed(out, jnp.asarray(tiles, jnp.float32), self.bundles[0].stage.in_bands)


def min_size(bundles):
  return max(b.model.min_size for b in bundles)


def run_cascade(bundles, schedule, inputs, rng, settings, progress=None):
  """The host driver: chains the stages over a whole image (H, W, in), each stage over all its
  overlapping tiles (blended) before the next; returns each stage's output (normalised units).

  Stage k+1's input bands are exactly stage k's output bands, so the chain passes the full output on.
  """
  size, overlap, _ = sampling.tiling(min_size(bundles), settings, *inputs.shape[:2])
  outputs, current = [], inputs
  for bundle in bundles:
    calls = iter(range(1 << 30))

    def fn(tiles, bundle=bundle, calls=calls):
      stage_rng = jax.random.fold_in(rng, bundle.stage.index)
      out = sample_stage(bundle, schedule, tiles, jax.random.fold_in(stage_rng, next(calls)), settings)
      if progress is not None:
        progress.update(1)
      return out

    current = data.predict_tiled(fn, current, size, overlap, settings.batch_size)
    outputs.append(current)
  return outputs


def num_tile_batches(bundles, settings, height, width):
  """Network-call batches run_cascade makes for an image (for progress bars)."""
  return len(bundles) * sampling.num_tile_batches(min_size(bundles), settings, height, width)


# ------------------------------------------------------------------------- trained stages


def stage_dir(workdir, stage_index):
  return os.path.join(os.path.abspath(workdir), f"stage_{stage_index}")


def stage_bundle(params, meta):
  """A trained stage ready to sample, from its EMA parameters and checkpoint metadata alone."""
  stage = Stage(int(meta["stage"]), tuple(meta["in_bands"]), tuple(meta["out_bands"]))
  prior = None
  if meta["prior"] is not None:
    prior = baselines.RidgeModel(**{k: (np.asarray(v) if isinstance(v, list) else v)
                                    for k, v in meta["prior"].items()})
  scale = meta["target_scale"]
  space = StageSpace(len(stage.out_bands), np.asarray(scale, np.float32) if isinstance(scale, list) else scale,
                     prior)
  model = models.build_model(ml_collections.ConfigDict(meta["model"]), len(stage.out_bands))
  return StageBundle(stage, space, model, params, meta["diffusion"]["parameterisation"])


def load_stage(config, workdir, stage_index, step=None):
  """A trained stage from workdir/stage_k (EMA weights, no optimizer), checked against the config:
  everything else comes from the checkpoint, so sampling needs no training data.
  Returns (StageBundle, metadata)."""
  sdir = stage_dir(workdir, stage_index)
  params, meta = checkpoints.load(sdir, f"stage {stage_index + 1}", step)
  checkpoints.check_metadata(meta, checkpoints.model_settings(config), sdir)
  return stage_bundle(params, meta), meta
