"""Noise schedules for eps-prediction diffusion and the x0 <-> eps conversions.

Conventions: ``t`` is an int32 array of shape (batch,) with 0 <= t <= T-1, and
``alphas_cumprod[t] = prod_{s <= t} (1 - betas[s])``. Arrays are channels-last
(B, H, W, C); per-timestep coefficients broadcast over all non-batch axes.
"""

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np


@struct.dataclass
class NoiseSchedule:
  """Per-timestep diffusion coefficients, all float32 arrays of shape (T,)."""

  betas: jax.Array
  alphas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array  # alphas_cumprod[t - 1], with 1 at t = 0.
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  posterior_variance: jax.Array  # beta tilde; 0 at t = 0.

  @property
  def num_timesteps(self) -> int:
    # A shape, so it stays a Python int under jit.
    return self.betas.shape[0]


def from_betas(betas) -> NoiseSchedule:
  """Builds a schedule from betas (computed in float64, stored as float32).

  Every beta lies in (0, 1), except that the last may be exactly 1: a zero-terminal-SNR schedule
  (``rescale_zero_terminal_snr``), whose alphas_cumprod ends at 0.
  """
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.size < 1:
    raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}.")
  if np.any(betas <= 0) or np.any(betas[:-1] >= 1) or betas[-1] > 1:
    raise ValueError("betas must lie in (0, 1) (the last may be 1: zero terminal SNR).")
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
  return NoiseSchedule(
      betas=f32(betas),
      alphas=f32(alphas),
      alphas_cumprod=f32(alphas_cumprod),
      alphas_cumprod_prev=f32(alphas_cumprod_prev),
      sqrt_alphas_cumprod=f32(np.sqrt(alphas_cumprod)),
      sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - alphas_cumprod)),
      posterior_variance=f32(posterior_variance),
  )


def linear(num_timesteps: int = 1000, beta_start: float = 1e-4,
           beta_end: float = 0.02) -> NoiseSchedule:
  """Linear betas from beta_start to beta_end (DDPM; SCDM and AnyBand-Diff use the defaults)."""
  return from_betas(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64))


def cosine(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
  """Nichol & Dhariwal (2021): alphas_cumprod(t) = f(t) / f(0), f(t) = cos(((t / T + s) / (1 + s)) pi / 2)^2,
  beta_t = min(1 - f(t + 1) / f(t), max_beta), t = 0 .. T-1."""
  f = lambda u: np.cos((u / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
  grid = np.arange(num_timesteps, dtype=np.float64)
  return from_betas(np.minimum(1.0 - f(grid + 1) / f(grid), max_beta))


def rescale_zero_terminal_snr(schedule: NoiseSchedule) -> NoiseSchedule:
  """Lin et al. (2024), "Common diffusion noise schedules and sample steps are flawed": shifts and scales
  sqrt(alphas_cumprod) so that it keeps its value at t = 0 and ends at exactly 0 at t = T-1 (the last
  beta becomes 1: the final x_T holds no signal, as the sampler's x_T ~ N(0, I) assumes).

  An eps-predicting network cannot recover x0 at zero SNR; train with v- or x0-prediction and wrap it with
  ``predictions.eps_from_v`` / ``eps_from_x0``. Samplers and predictions take alphas_cumprod there as
  ``MIN_ALPHAS_CUMPROD`` so that nothing divides by zero.
  """
  abar = np.cumprod(1.0 - np.asarray(schedule.betas, np.float64))
  root = np.sqrt(abar)
  first, last = root[0], root[-1]
  root = (root - last) * first / (first - last)
  abar = root**2
  alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
  return from_betas(1.0 - alphas)


# alphas_cumprod floor where x0 is computed from eps (zero-terminal-SNR schedules reach 0 at t = T-1): the
# value diffusers' Euler schedulers use, sqrt(2^-24) = 2^-12 as the signal scale.
MIN_ALPHAS_CUMPROD = 2.0**-24


def signal_and_noise(schedule: NoiseSchedule, t: jax.Array, ndim: int):
  """(sqrt(abar_t), sqrt(1 - abar_t)) at t, abar floored at MIN_ALPHAS_CUMPROD, shaped to broadcast
  against an array with ndim axes."""
  signal = jnp.maximum(_at(schedule.sqrt_alphas_cumprod, t, ndim), MIN_ALPHAS_CUMPROD**0.5)
  return signal, _at(schedule.sqrt_one_minus_alphas_cumprod, t, ndim)


def _at(coef: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """coef[t] reshaped to broadcast against an array with ndim axes."""
  c = coef[t]
  return jnp.reshape(c, jnp.shape(c) + (1,) * (ndim - jnp.ndim(c)))


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array,
             noise: jax.Array) -> jax.Array:
  """Draws x_t ~ q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) given the noise."""
  a = _at(schedule.sqrt_alphas_cumprod, t, x0.ndim)
  s = _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
  return a * x0 + s * noise


def predict_x0_from_eps(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array,
                        eps: jax.Array) -> jax.Array:
  """Tweedie's x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); no clipping (abar floored, see
  MIN_ALPHAS_CUMPROD)."""
  a, s = signal_and_noise(schedule, t, x_t.ndim)
  return (x_t - s * eps) / a


def predict_eps_from_x0(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array,
                        x0: jax.Array) -> jax.Array:
  """The eps that maps x0 to x_t: (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
  a, s = signal_and_noise(schedule, t, x_t.ndim)
  return (x_t - a * x0) / s
