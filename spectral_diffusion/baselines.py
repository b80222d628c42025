"""Non-diffusion baselines for spectral super-resolution (few input bands -> all bands).

Reported beside the diffusion model: per-pixel ridge regression (linear and degree-2 features) and
linear interpolation along wavelength. Plain numpy, float64, fit in well under a second.
"""

from typing import Dict, NamedTuple, Sequence

import numpy as np

from spectral_diffusion.errors import UserInputError


class RidgeModel(NamedTuple):
  """A fitted per-pixel ridge map. Features are built from standardised inputs, then standardised."""
  degree: int
  in_mean: np.ndarray  # (b,)
  in_std: np.ndarray  # (b,)
  feat_mean: np.ndarray  # (F,)
  feat_std: np.ndarray  # (F,)
  coef: np.ndarray  # (F, B), on standardised features
  intercept: np.ndarray  # (B,)


def _as_pixels(x, name: str) -> np.ndarray:
  """(N, c) or (H, W, c) -> (N, c) float64, checked finite."""
  a = np.asarray(x, dtype=np.float64)
  if a.ndim == 3:
    a = a.reshape(-1, a.shape[-1])
  if a.ndim != 2:
    raise UserInputError(f"{name} must be (N, bands) or (H, W, bands); got shape {np.shape(x)}.")
  if not np.isfinite(a).all():
    raise UserInputError(f"{name} has NaN or Inf values.")
  return a


def _features(z: np.ndarray, degree: int) -> np.ndarray:
  """Monomials of the standardised inputs z (N, b): degree 1, or degree 1 plus all degree-2 terms."""
  if degree == 1:
    return z
  i, j = np.triu_indices(z.shape[1])  # squares and pairwise products, each once
  return np.concatenate([z, z[:, i] * z[:, j]], axis=1)


def fit_ridge(x_in, y, alpha: float = 1e-3, degree: int = 1) -> RidgeModel:
  """Fits y ~ features(x_in) by ridge regression with an unpenalised intercept.

  Args:
    x_in: inputs, (N, b) or (H, W, b).
    y: targets, (N, B) or (H, W, B), same pixels as x_in.
    alpha: ridge strength in sklearn's convention: minimises |y - Xw|^2 + alpha |w|^2 (sums over
      pixels, intercept unpenalised), where X has zero-mean unit-variance columns, so X'X has diagonal
      N. The default 1e-3 is therefore a tiny jitter next to N (thousands of pixels): the fit is
      effectively least squares, kept solvable when input bands are collinear. Stronger shrinkage
      hurts here: with 3 visible bands of Indian Pines, alpha = 1e-3 * N loses 0.4-0.6 dB MPSNR.
    degree: 1 (linear) or 2 (adds squares and pairwise products of the standardised inputs).

  Returns:
    A `RidgeModel` for `predict_ridge`.
  """
  x = _as_pixels(x_in, "x_in")
  t = _as_pixels(y, "y")
  if x.shape[0] != t.shape[0]:
    raise UserInputError(f"x_in has {x.shape[0]} pixels but y has {t.shape[0]}.")
  if degree not in (1, 2):
    raise UserInputError(f"degree must be 1 or 2; got {degree}.")
  if not alpha >= 0:
    raise UserInputError(f"alpha must be >= 0; got {alpha}.")
  in_mean, in_std = x.mean(0), x.std(0)
  in_std = np.where(in_std > 0, in_std, 1.0)  # a constant input band carries no information
  f = _features((x - in_mean) / in_std, degree)
  feat_mean, feat_std = f.mean(0), f.std(0)
  feat_std = np.where(feat_std > 0, feat_std, 1.0)
  f = (f - feat_mean) / feat_std
  y_mean = t.mean(0)
  # Centred features and targets make the intercept exactly y_mean, so it is not penalised.
  gram = f.T @ f + alpha * np.eye(f.shape[1])
  rhs = f.T @ (t - y_mean)
  try:
    coef = np.linalg.solve(gram, rhs)
  except np.linalg.LinAlgError:  # only with alpha = 0 and collinear features
    coef = np.linalg.lstsq(gram, rhs, rcond=None)[0]
  return RidgeModel(degree, in_mean, in_std, feat_mean, feat_std, coef, y_mean)


def predict_ridge(model: RidgeModel, x_in) -> np.ndarray:
  """Applies a `RidgeModel`: (N, b) -> (N, B) or (H, W, b) -> (H, W, B), float64."""
  shape = np.shape(x_in)
  x = _as_pixels(x_in, "x_in")
  if x.shape[1] != model.in_mean.size:
    raise UserInputError(f"model was fit on {model.in_mean.size} input bands; got {x.shape[1]}.")
  f = _features((x - model.in_mean) / model.in_std, model.degree)
  out = (f - model.feat_mean) / model.feat_std @ model.coef + model.intercept
  return out.reshape(*shape[:-1], out.shape[-1])


def predict_ridge_jax(model: RidgeModel, x_in):
  """`predict_ridge` in JAX (float32, traceable), for priors inside compiled samplers: (..., b) -> (..., B)."""
  import jax.numpy as jnp  # baselines stay numpy-only for everything else
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  z = (x_in - f32(model.in_mean)) / f32(model.in_std)
  if model.degree == 2:
    i, j = np.triu_indices(z.shape[-1])
    z = jnp.concatenate([z, z[..., i] * z[..., j]], axis=-1)
  return ((z - f32(model.feat_mean)) / f32(model.feat_std)) @ f32(model.coef) + f32(model.intercept)


def interp_bands(cube_in, in_wavelengths: Sequence[float], out_wavelengths: Sequence[float]) -> np.ndarray:
  """Per-pixel linear interpolation along wavelength, with np.interp semantics.

  Values beyond the input range are held constant at the end bands. The input grid need not be sorted
  (AVIRIS spectrometers overlap: 696.50 nm is followed by 686.91 nm): bands are sorted by wavelength
  first, and bands sharing one wavelength are averaged.

  Args:
    cube_in: (H, W, b) or (N, b).
    in_wavelengths: the b input band centres.
    out_wavelengths: the B output band centres.

  Returns:
    (H, W, B) or (N, B) float64.
  """
  shape = np.shape(cube_in)
  x = _as_pixels(cube_in, "cube_in")
  w_in = np.asarray(in_wavelengths, dtype=np.float64).ravel()
  w_out = np.asarray(out_wavelengths, dtype=np.float64).ravel()
  if w_in.size != x.shape[1]:
    raise UserInputError(f"{w_in.size} input wavelengths for {x.shape[1]} input bands.")
  if w_out.size == 0 or not (np.isfinite(w_in).all() and np.isfinite(w_out).all()):
    raise UserInputError("wavelengths must be finite and out_wavelengths non-empty.")
  # Sort and merge duplicates: an averaging matrix (b, U) from each band to its unique wavelength.
  knots, group = np.unique(w_in, return_inverse=True)
  counts = np.bincount(group, minlength=knots.size)
  merge = np.zeros((w_in.size, knots.size))
  merge[np.arange(w_in.size), group] = 1.0 / counts[group]
  v = x @ merge  # (N, U)
  if knots.size == 1:
    out = np.repeat(v, w_out.size, axis=1)
  else:
    # Left knot = last knot <= w, so a wavelength on a knot takes that band exactly.
    lo = np.clip(np.searchsorted(knots, w_out, side="right") - 1, 0, knots.size - 2)
    frac = np.clip((w_out - knots[lo]) / (knots[lo + 1] - knots[lo]), 0.0, 1.0)
    out = v[:, lo] * (1.0 - frac) + v[:, lo + 1] * frac
  return out.reshape(*shape[:-1], w_out.size)


def run_baselines(train_in, train_out, test_in, in_wavelengths=None, out_wavelengths=None,
                  alpha: float = 1e-3) -> Dict[str, np.ndarray]:
  """Fits on (train_in, train_out) and predicts all bands for test_in.

  Returns {"ridge": degree-1 ridge, "ridge_poly2": degree-2 ridge, "interp": `interp_bands`}, each
  shaped like test_in with train_out's band count; "interp" only when wavelengths are given.
  """
  preds = {name: predict_ridge(fit_ridge(train_in, train_out, alpha=alpha, degree=degree), test_in)
           for name, degree in (("ridge", 1), ("ridge_poly2", 2))}
  if in_wavelengths is not None and out_wavelengths is not None:
    b_out = np.shape(train_out)[-1]
    if len(out_wavelengths) != b_out:
      raise UserInputError(f"{len(out_wavelengths)} output wavelengths for {b_out} output bands; "
                           f"give one wavelength per band")
    preds["interp"] = interp_bands(test_in, in_wavelengths, out_wavelengths)
  return preds


class BandGaussian(NamedTuple):
  """Per-pixel Gaussian model of the bands, fit on training pixels: the regression prior of AnyBand.

  For any observed subset o, the conditional mean mean_m + S_mo S_oo^-1 (x_o - mean_o) is exactly
  least-squares regression of the missing bands on the observed ones (with intercept), so one fit
  serves every mask, inside jit, per sample.
  """
  mean: np.ndarray  # (N,)
  std: np.ndarray  # (N,)
  corr: np.ndarray  # (N, N) Pearson correlation of the bands over training pixels


def fit_band_gaussian(cube) -> BandGaussian:
  x = _as_pixels(cube, "cube")
  mean, std = x.mean(0), x.std(0)
  std = np.where(std > 0, std, 1.0)
  z = (x - mean) / std
  corr = z.T @ z / z.shape[0]
  return BandGaussian(mean.astype(np.float32), std.astype(np.float32), corr.astype(np.float32))


def conditional_mean(gaussian: BandGaussian, x_obs, mask, jitter=1e-3):
  """E[x | observed bands] for a batch (jax): x_obs (B, H, W, N), mask (B, N) with 1 = observed.

  Solved in one (N, N) system per sample: A = D R D + (I - D) + jitter D, where D = diag(mask) and R is
  the band correlation, decouples the missing bands, so A^-1 on the observed block is (R_oo + jitter)^-1.
  `jitter` (relative to unit variance) keeps nearly collinear neighbouring bands solvable in float32.
  Observed bands come back unchanged.
  """
  import jax.numpy as jnp  # baselines stay numpy-only for everything else

  b, n = mask.shape
  mean, std, corr = (jnp.asarray(a) for a in gaussian)
  z = ((x_obs - mean) / std).reshape(b, -1, n)          # (B, P, N)
  d = mask[:, :, None] * mask[:, None, :]
  a = corr * d + jnp.eye(n) * (1.0 - mask + jitter * mask)[:, None, :]
  w = jnp.linalg.solve(a, jnp.swapaxes(z * mask[:, None, :], 1, 2))  # (B, N, P)
  z_hat = jnp.swapaxes(corr @ (w * mask[:, :, None]), 1, 2)          # (B, P, N)
  x_hat = z_hat.reshape(x_obs.shape) * std + mean
  return jnp.where(mask[:, None, None, :] > 0, x_obs, x_hat)


def conditional_moments(gaussian: BandGaussian, x_obs, mask, jitter=1e-3):
  """(E[x | observed bands], sd[x | observed bands]) for a batch (jax): x_obs (B, H, W, N), mask (B, N)
  -> ((B, H, W, N), (B, N)), from one solve of conditional_mean's system with the data and the
  correlation as right-hand sides (XLA:CPU can deadlock when two batched solves of one program run while
  the next step is dispatched, so they are not separate calls).

  The sd is the diagonal of R_mm - R_mo (R_oo + jitter)^-1 R_om times the band std, floored at sqrt(jitter)
  band stds (the noise level jitter assumes); observed bands get that floor too (their regression error
  is 0, but a scale of 0 cannot be divided by). Observed bands of the mean come back unchanged.
  """
  import jax.numpy as jnp

  b, n = mask.shape
  mean, std, corr = (jnp.asarray(a) for a in gaussian)
  z = ((x_obs - mean) / std).reshape(b, -1, n)
  d = mask[:, :, None] * mask[:, None, :]
  a = corr * d + jnp.eye(n) * (1.0 - mask + jitter * mask)[:, None, :]
  rhs = jnp.concatenate([jnp.swapaxes(z * mask[:, None, :], 1, 2), mask[:, :, None] * corr], axis=2)
  sol = jnp.linalg.solve(a, rhs)
  w, v = sol[:, :, :z.shape[1]], sol[:, :, z.shape[1]:]              # v: rows o = (R_oo + j)^-1 R_o:
  z_hat = jnp.swapaxes(corr @ (w * mask[:, :, None]), 1, 2)
  x_hat = jnp.where(mask[:, None, None, :] > 0, x_obs, z_hat.reshape(x_obs.shape) * std + mean)
  explained = jnp.einsum("mk,bk,bkm->bm", corr, mask, v)
  var = jnp.where(mask > 0, jitter, jnp.maximum(jnp.diagonal(corr) - explained, jitter))
  return x_hat, jnp.sqrt(var) * std
