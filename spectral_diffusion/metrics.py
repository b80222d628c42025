"""Evaluation metrics for (H, W, B) hyperspectral cubes.

Error metrics (rmse, sam, mpsnr, mssim, ergas) reward the posterior-mean estimate; a single sample is
judged by whether it looks like real data: the distribution scores wasserstein1 (per-band pixel-value
distributions) and local_variance_ratio (texture kept, 1, or smoothed away, < 1).

All functions accept numpy or JAX arrays and compute in float64 numpy: they are for reporting, not for
training, so accuracy matters more than tracing. `pred` and `target` must have the same 3-D shape and
finite values; anything else raises `UserInputError`.
"""

from typing import Dict, Optional, Sequence

import numpy as np

from spectral_diffusion.errors import UserInputError

# SSIM constants of Wang et al. (2004), as in skimage with gaussian_weights=True.
_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5
_SSIM_RADIUS = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)  # 5, the radius scipy.ndimage uses.
_SSIM_WIN = 2 * _SSIM_RADIUS + 1  # 11
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def _pair(pred, target):
  """Checks a (pred, target) pair and returns both as float64 numpy arrays."""
  p = np.asarray(pred, dtype=np.float64)
  t = np.asarray(target, dtype=np.float64)
  if p.ndim != 3 or t.ndim != 3:
    raise UserInputError(
        f"metrics need (H, W, B) cubes; got pred {p.shape} and target {t.shape}.")
  if p.shape != t.shape:
    raise UserInputError(f"pred shape {p.shape} does not match target shape {t.shape}.")
  if not (np.isfinite(p).all() and np.isfinite(t).all()):
    raise UserInputError("pred or target has NaN or Inf values; metrics need finite inputs.")
  return p, t


def _check_range(data_range):
  r = float(data_range)
  if not (np.isfinite(r) and r > 0):
    raise UserInputError(f"data_range must be a positive finite number; got {data_range}.")
  return r


def rmse(pred, target) -> float:
  """Root mean squared error over all pixels and bands."""
  p, t = _pair(pred, target)
  return float(np.sqrt(np.mean((p - t) ** 2)))


def sam(pred, target, eps: float = 1e-12) -> float:
  """Spectral angle mapper: mean per-pixel angle between spectra, in radians.

  Pixels where either spectrum has norm <= eps are skipped; returns 0.0 if every pixel is skipped.
  The angle is arccos(clip(cos)) in exact arithmetic; it is evaluated as
  2 * atan2(|u - v|, |u + v|) on the unit spectra u, v, which stays accurate for small angles
  (arccos loses about 1e-8 rad near cos = 1, so identical spectra would not give exactly 0).
  """
  p, t = _pair(pred, target)
  p = p.reshape(-1, p.shape[-1])
  t = t.reshape(-1, t.shape[-1])
  np_, nt = np.linalg.norm(p, axis=1), np.linalg.norm(t, axis=1)
  keep = (np_ > eps) & (nt > eps)
  if not keep.any():
    return 0.0
  u = p[keep] / np_[keep, None]
  v = t[keep] / nt[keep, None]
  angles = 2.0 * np.arctan2(np.linalg.norm(u - v, axis=1), np.linalg.norm(u + v, axis=1))
  return float(np.mean(angles))


def psnr_per_band(pred, target, data_range, max_db: float = 100.0) -> np.ndarray:
  """Per-band PSNR in dB, 10 log10(data_range^2 / MSE_b), shape (B,).

  Each band is capped at `max_db` (default 100 dB), so a band reproduced exactly (MSE 0) counts as
  `max_db` instead of making the mean infinite.
  """
  p, t = _pair(pred, target)
  r = _check_range(data_range)
  mse = np.mean((p - t) ** 2, axis=(0, 1))
  with np.errstate(divide="ignore"):
    db = 10.0 * np.log10(r * r / mse)
  return np.minimum(db, max_db)


def mpsnr(pred, target, data_range, max_db: float = 100.0) -> float:
  """Mean over bands of `psnr_per_band` (each band capped at `max_db`, default 100 dB)."""
  return float(np.mean(psnr_per_band(pred, target, data_range, max_db)))


def _gauss_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """Separable 'valid' correlation of x (H, W, ...) with the 1-D window w on axes 0 and 1."""
  n = w.size
  h, wd = x.shape[0] - n + 1, x.shape[1] - n + 1
  rows = sum(w[k] * x[k:k + h] for k in range(n))
  return sum(w[k] * rows[:, k:k + wd] for k in range(n))


def ssim_per_band(pred, target, data_range) -> np.ndarray:
  """Per-band SSIM, shape (B,): Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, population covariance.

  The SSIM map is averaged over the valid region only (pixels at least 5 from every edge), which is
  what skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False) does with its crop(S, pad), so the two agree per band.
  """
  p, t = _pair(pred, target)
  r = _check_range(data_range)
  if p.shape[0] < _SSIM_WIN or p.shape[1] < _SSIM_WIN:
    raise UserInputError(
        f"SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN} pixels; got {p.shape[:2]}.")
  x = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / _SSIM_SIGMA) ** 2)
  w /= w.sum()
  ux, uy = _gauss_valid(p, w), _gauss_valid(t, w)
  vx = _gauss_valid(p * p, w) - ux * ux
  vy = _gauss_valid(t * t, w) - uy * uy
  vxy = _gauss_valid(p * t, w) - ux * uy
  c1, c2 = (_SSIM_K1 * r) ** 2, (_SSIM_K2 * r) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
  return s.mean(axis=(0, 1))


def mssim(pred, target, data_range) -> float:
  """Mean over bands of `ssim_per_band`."""
  return float(np.mean(ssim_per_band(pred, target, data_range)))


def ergas(pred, target, scale: float = 1.0) -> float:
  """ERGAS = 100 / scale * sqrt(mean_b(RMSE_b^2 / mean(target_b)^2)).

  `scale` is the ratio of low- to high-resolution pixel size. Spectral super-resolution does not
  change the spatial grid, so scale = 1 there. Every target band must have a nonzero mean.
  """
  p, t = _pair(pred, target)
  if not scale > 0:
    raise UserInputError(f"ergas scale must be positive; got {scale}.")
  mse = np.mean((p - t) ** 2, axis=(0, 1))
  mu = np.mean(t, axis=(0, 1))
  if np.any(mu == 0):
    raise UserInputError("ergas is undefined when a target band has mean 0; shift the data first.")
  return float(100.0 / scale * np.sqrt(np.mean(mse / mu ** 2)))


def wasserstein1(pred, target) -> float:
  """Per-band Wasserstein-1 distance between the predicted and the true distributions of pixel values,
  averaged over bands (in the data's units). With equal pixel counts W1 is the mean absolute difference
  of the sorted values, which is what scipy.stats.wasserstein_distance computes. It compares value
  distributions only, not which pixel has which value: 0 for any permutation of the true pixels, and
  large when a prediction is too smooth (its values bunch near the mean) or biased."""
  p, t = _pair(pred, target)
  p = np.sort(p.reshape(-1, p.shape[-1]), axis=0)
  t = np.sort(t.reshape(-1, t.shape[-1]), axis=0)
  return float(np.mean(np.abs(p - t)))


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
  """k x k spatial mean of x (H, W, B), edges padded by reflection (scipy.ndimage mode "reflect": the
  edge pixel repeated), as scipy.ndimage.uniform_filter(x, size=(k, k, 1), mode="reflect")."""
  lo = k // 2
  padded = np.pad(x, ((lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)), mode="symmetric")
  h, w = x.shape[:2]
  rows = sum(padded[i:i + h] for i in range(k))  # separable: k shifted sums per axis
  return sum(rows[:, j:j + w] for j in range(k)) / (k * k)


def local_variance(x, k: int = 3) -> float:
  """Variance over pixels and bands of x - (its k x k spatial mean): the texture a cube has around its
  local mean (0 for a constant image)."""
  a = np.asarray(x, np.float64)
  return float(np.var(a - _box_mean(a, k)))


def local_variance_ratio(pred, target, k: int = 3) -> float:
  """local_variance(pred) / local_variance(target): 1 = the prediction keeps the true texture, < 1 =
  over-smoothed (a regression or a posterior mean), > 1 = noisier than the truth. k: the (odd) box size."""
  p, t = _pair(pred, target)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 3 or k % 2 == 0:
    raise UserInputError(f"local_variance_ratio k is {k!r}: use an odd box size >= 3 (default 3)")
  truth = local_variance(t, k)
  if truth <= 0:
    raise UserInputError("local_variance_ratio is undefined for a target without local variation (a "
                         "constant image); score a textured target")
  return local_variance(p, k) / truth


def all_metrics(pred, target, data_range, bands: Optional[Sequence[int]] = None) -> Dict[str, float]:
  """rmse, sam, mpsnr, mssim, ergas, w1 (wasserstein1) and local_var_ratio (local_variance_ratio, k=3)
  over the band indices `bands` (None = all bands).

  SAM is taken over the same band subset (the spectra restricted to `bands`).
  """
  p, t = _pair(pred, target)
  if bands is not None:
    idx = np.asarray(bands)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
      raise UserInputError("bands must be a non-empty list of integer band indices.")
    if idx.min() < -p.shape[-1] or idx.max() >= p.shape[-1]:
      raise UserInputError(f"bands has an index outside 0..{p.shape[-1] - 1}.")
    p, t = p[..., idx], t[..., idx]
  return {
      "rmse": rmse(p, t),
      "sam": sam(p, t),
      "mpsnr": mpsnr(p, t, data_range),
      "mssim": mssim(p, t, data_range),
      "ergas": ergas(p, t),
      "w1": wasserstein1(p, t),
      "local_var_ratio": local_variance_ratio(p, t),
  }


def index_agreement(pred_index, true_index) -> Dict[str, float]:
  """Agreement of two spectral-index maps (e.g. NDVI): Pearson correlation over pixels and RMSE."""
  p = np.asarray(pred_index, np.float64).ravel()
  t = np.asarray(true_index, np.float64).ravel()
  if p.shape != t.shape or p.size < 2:
    raise UserInputError(f"index maps must have the same shape with at least 2 pixels; got "
                         f"{np.shape(pred_index)} and {np.shape(true_index)}.")
  cc = float(np.corrcoef(p, t)[0, 1]) if p.std() > 0 and t.std() > 0 else float("nan")
  return {"cc": cc, "rmse": float(np.sqrt(np.mean((p - t) ** 2)))}
