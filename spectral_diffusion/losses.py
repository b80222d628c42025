"""Training losses: the parameterisation's regression loss plus lambda * SAM loss on the predicted x0."""
import jax.numpy as jnp

from spectral_diffusion import predictions
from spectral_diffusion import schedules

PARAMETERISATIONS = predictions.PREDICTIONS


def to_eps_and_x0(schedule, parameterisation, x_t, t, out):
  """Network output -> (eps, x0_hat) for any parameterisation."""
  return (predictions.to_eps(schedule, parameterisation, x_t, t, out),
          predictions.to_x0(schedule, parameterisation, x_t, t, out))


def regression_target(schedule, parameterisation, x0, eps, t):
  if parameterisation == "eps":
    return eps
  if parameterisation == "x0":
    return x0
  sa, so = schedules.signal_and_noise(schedule, t, x0.ndim)
  return sa * eps - so * x0


def sam_loss(pred, target, eps=1e-8):
  """Per sample: 1 - mean over pixels of the cosine between spectra (last axis)."""
  dot = jnp.sum(pred * target, axis=-1)
  norm = jnp.linalg.norm(pred, axis=-1) * jnp.linalg.norm(target, axis=-1)
  cos = dot / jnp.maximum(norm, eps)
  return 1.0 - jnp.mean(cos.reshape(cos.shape[0], -1), axis=-1)


def diffusion_loss(schedule, parameterisation, kind, sam_weight, x0, x_t, t, eps, out, offset,
                   band_scale=None):
  """Per-sample loss. SAM is taken on data-space spectra: model-space x0 + `offset` (a global scale does not
  change angles), or x0 / band_scale + offset with a per-band scale (offset is then the reference)."""
  target = regression_target(schedule, parameterisation, x0, eps, t)
  err = out - target
  per_elem = jnp.abs(err) if kind == "l1" else jnp.square(err)
  loss = jnp.mean(per_elem.reshape(per_elem.shape[0], -1), axis=-1)
  if sam_weight:
    _, x0_hat = to_eps_and_x0(schedule, parameterisation, x_t, t, out)
    if band_scale is not None:
      x0_hat, x0 = x0_hat / band_scale, x0 / band_scale
    loss = loss + sam_weight * sam_loss(x0_hat + offset, x0 + offset)
  return loss


# AnyBand-Diff's multi-scale physical loss (MSPL): pixel, region and image terms on x0_hat, per sample.
MSPL_WEIGHTS = (1.0, 0.5, 0.2)  # pixel, region, image (the paper's lambda_px, lambda_reg, lambda_img)
INDEX_GRID = jnp.linspace(-1.0, 1.0, 65)  # where the index densities are compared


def band_correlation(x, eps=1e-10):
  """Pearson correlation between bands over the pixels of each sample: (B, H, W, N) -> (B, N, N)."""
  p = x.reshape(x.shape[0], -1, x.shape[-1])
  z = p - p.mean(1, keepdims=True)
  z = z / jnp.sqrt(jnp.mean(jnp.square(z), 1, keepdims=True) + eps)
  return jnp.einsum("bpi,bpj->bij", z, z) / p.shape[1]


def pixel_loss(x0_hat, corr_prior):
  """||corr(x0_hat) - S||_F^2, divided by N^2 so its weight means the same for any band count."""
  return jnp.mean(jnp.square(band_correlation(x0_hat) - corr_prior), axis=(1, 2))


def index_density(values, bandwidth=0.05, grid=INDEX_GRID):
  """Gaussian KDE of per-sample index values (B, P) on `grid`, normalised to sum to 1: (B, G)."""
  k = jnp.exp(-0.5 * jnp.square((grid[None, None, :] - values[..., None]) / bandwidth))
  dens = k.mean(1) + 1e-8
  return dens / dens.sum(-1, keepdims=True)


def region_loss(index_hat, index_true, bandwidth=0.05):
  """KL(p_true || p_hat) of the KDE densities of a spectral index over each sample's patch."""
  b = index_hat.shape[0]
  p = index_density(index_true.reshape(b, -1), bandwidth)
  q = index_density(index_hat.reshape(b, -1), bandwidth)
  return jnp.sum(p * (jnp.log(p) - jnp.log(q)), axis=-1)


def image_loss(project, refl_hat, refl_true):
  """||Phi(x0_hat) - Phi(x0)||^2 (mean over pixels and bands) with a frozen RTM emulator's projection."""
  err = jnp.square(project(refl_hat) - project(refl_true))
  return jnp.mean(err.reshape(err.shape[0], -1), axis=-1)
