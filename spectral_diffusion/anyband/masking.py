"""Band masks for AnyBand-Diff: dual stochastic masking for training, the papers' masks for evaluation.

A sensor is a linear map on the spectral axis: its band values are SRF-weighted means of the grid's
bands, placed at the grid band nearest each sensor band's centre. So "simulate sensor s" is
x_obs = x @ transforms[s] with an (N, N) matrix, and the whole draw is a few gathers and one einsum
inside jit. With a global affine normaliser (min-max) the map commutes with normalisation, because every
SRF row sums to 1.
"""
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from spectral_diffusion.errors import UserInputError


class SensorBank(flax.struct.PyTreeNode):
  """The sensor library as arrays: entry s maps a cube to that sensor's observation on the grid.

  The last entry is the full grid itself (identity, every band observed).
  """
  transforms: jax.Array          # (S + 1, N, N)
  masks: jax.Array               # (S + 1, N): 1 where sensor s puts a value


def sensor_transform(sensor, num_bands):
  """(N, N) matrix and (N,) mask of one SensorOnGrid: simulate, then place_on_grid, as one map."""
  from spectral_diffusion.physics import srf  # physics imports data, so not at module level
  place = srf.placement_matrix(np.asarray(sensor.grid_index), num_bands)
  transform = np.asarray(sensor.response, np.float32).T @ place
  return transform.astype(np.float32), (place.sum(0) > 0).astype(np.float32)


def sensor_bank(library, num_bands):
  """A SensorBank from a list of physics.SensorOnGrid (plus the full grid as the last entry)."""
  transforms, masks = [], []
  for sensor in library:
    t, m = sensor_transform(sensor, num_bands)
    transforms.append(t)
    masks.append(m)
  transforms.append(np.eye(num_bands, dtype=np.float32))
  masks.append(np.ones(num_bands, np.float32))
  return SensorBank(jnp.asarray(np.stack(transforms)), jnp.asarray(np.stack(masks)))


def _at_least_one(rng, mask, allowed):
  """Where a draw dropped every band, observe one random band of `allowed` instead."""
  pick = jax.nn.one_hot(jnp.argmax(allowed * jax.random.uniform(rng, allowed.shape)), allowed.shape[-1])
  return jnp.where(mask.sum() > 0, mask, pick * allowed)


def dual_stochastic_mask(rng, x0, bank, p_full_grid=0.5, p_drop_range=(0.1, 0.7)):
  """AnyBand-Diff's DSM for a batch x0 (B, H, W, N): per sample, draw a sensor (or, with probability
  p_full_grid, the full grid), simulate it, then keep each of its bands with probability 1 - p_drop,
  p_drop ~ U[p_drop_range]. At least one band stays observed. Returns (x_obs, mask (B, N)); the
  network's condition is C = x_obs * mask.
  """
  b = x0.shape[0]
  r_full, r_sensor, r_p, r_keep, r_one = jax.random.split(rng, 5)
  num_sensors = bank.masks.shape[0] - 1
  sensor = jax.random.randint(r_sensor, (b,), 0, max(num_sensors, 1))
  full = jax.random.bernoulli(r_full, p_full_grid, (b,)) | (num_sensors == 0)
  s = jnp.where(full, num_sensors, sensor)
  x_obs = jnp.einsum("bhwn,bnm->bhwm", x0, bank.transforms[s])
  p_drop = jax.random.uniform(r_p, (b, 1), minval=p_drop_range[0], maxval=p_drop_range[1])
  keep = jax.random.bernoulli(r_keep, 1.0 - p_drop, bank.masks[s].shape).astype(x0.dtype)
  allowed = bank.masks[s]
  mask = jax.vmap(_at_least_one)(jax.random.split(r_one, b), allowed * keep, allowed)
  return x_obs, mask


def uniform_drop_mask(rng, x0, p_drop=0.5):
  """The "without DSM" ablation: true band values, each band dropped with a fixed probability."""
  b, n = x0.shape[0], x0.shape[-1]
  r_keep, r_one = jax.random.split(rng)
  keep = jax.random.bernoulli(r_keep, 1.0 - p_drop, (b, n)).astype(x0.dtype)
  ones = jnp.ones((b, n), x0.dtype)
  return x0, jax.vmap(_at_least_one)(jax.random.split(r_one, b), keep, ones)


def random_band_mask(rng: np.random.Generator, num_bands, missing_fraction):
  """Evaluation: exactly round(fraction * N) bands missing, chosen at random. (N,) float32."""
  missing = int(round(missing_fraction * num_bands))
  if not 0 < missing < num_bands:
    raise UserInputError(f"masking {missing_fraction:.0%} of {num_bands} bands leaves "
                         f"{num_bands - missing} observed; use a fraction that keeps some but not all")
  mask = np.ones(num_bands, np.float32)
  mask[rng.choice(num_bands, missing, replace=False)] = 0.0
  return mask


def k_band_mask(rng: np.random.Generator, num_bands, k):
  """Evaluation: k observed bands chosen at random, the rest missing. (N,) float32."""
  if not 0 < k < num_bands:
    raise UserInputError(f"{k} input bands out of {num_bands}: use 1 <= k < {num_bands}")
  mask = np.zeros(num_bands, np.float32)
  mask[rng.choice(num_bands, k, replace=False)] = 1.0
  return mask
