"""Spectral indices (NDVI, NDWI) on (..., bands) cubes, and band-centre checks.

Band lookup runs in Python on static numpy wavelengths, so the indices are
plain array arithmetic: they take numpy or jax arrays and are differentiable
with jax.grad.
"""

import numpy as np

from spectral_diffusion.data import nearest_bands
from spectral_diffusion.errors import UserInputError

RED_NM = 660.0
GREEN_NM = 560.0
NIR_NM = 860.0

# AVIRIS spectrometers overlap: Indian Pines steps back by about 9.6 nm at two seams.
MAX_STEP_BACK_NM = 20.0


def check_wavelengths(wavelengths_nm, num_bands: int) -> np.ndarray:
  """Band centres as float64 (B,), checked against the cube's band count.

  The centres must be finite, positive, in nm, distinct and increasing. A step
  back of at most 20 nm is allowed, as at the overlapping spectrometers of
  AVIRIS; larger ones (a reversed or shuffled grid) are rejected.

  Args:
    wavelengths_nm: one centre per band, in nm.
    num_bands: the cube's band count B.

  Returns:
    The centres as a float64 numpy array of shape (B,).
  """
  if wavelengths_nm is None:
    raise UserInputError(
        "band wavelengths are missing; pass the band centres in nm, one per band")
  try:
    wl = np.asarray(wavelengths_nm, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise UserInputError(
        f"band wavelengths are not numbers ({type(e).__name__}); pass the band centres in nm") from e
  if wl.ndim != 1:
    raise UserInputError(
        f"band wavelengths must be 1-D, got shape {wl.shape}; pass a flat list of centres in nm")
  if wl.shape[0] != num_bands:
    raise UserInputError(
        f"{wl.shape[0]} wavelengths for {num_bands} bands; give one centre (nm) per band")
  if not np.all(np.isfinite(wl)):
    raise UserInputError(
        f"band wavelengths have {int(np.sum(~np.isfinite(wl)))} NaN/Inf values; fix the wavelength list")
  if np.any(wl <= 0):
    raise UserInputError(
        f"band wavelengths must be positive, got minimum {wl.min():g}; pass the band centres in nm")
  if wl.max() < 100.0:
    raise UserInputError(
        f"band wavelengths end at {wl.max():g}, which looks like micrometres; multiply them by 1000 "
        "to pass nm")
  values, counts = np.unique(wl, return_counts=True)
  if np.any(counts > 1):
    raise UserInputError(
        f"band wavelength {values[counts > 1][0]:g} nm appears {counts[counts > 1][0]} times; "
        "give each band its own centre")
  steps = np.diff(wl)
  back = np.flatnonzero(steps < -MAX_STEP_BACK_NM)
  if back.size:
    i = int(back[0])
    raise UserInputError(
        f"band wavelengths step back from {wl[i]:g} to {wl[i + 1]:g} nm at band {i + 1}; give them in "
        f"increasing order (steps back of up to {MAX_STEP_BACK_NM:g} nm at detector overlaps are allowed)")
  return wl


def band_index(wavelengths_nm, target_nm: float, max_gap_nm: float = 50.0,
               index_name: str = "this index") -> int:
  """The band nearest target_nm; raises if it is farther than max_gap_nm."""
  wl = np.asarray(wavelengths_nm, dtype=np.float64).reshape(-1)
  i = nearest_bands(wl, [target_nm], max_gap_nm=np.inf)[0]
  gap = abs(wl[i] - float(target_nm))
  if gap > max_gap_nm:
    raise UserInputError(
        f"{index_name} needs a band within {max_gap_nm:g} nm of {float(target_nm):g} nm, but the nearest "
        f"is {wl[i]:.1f} nm (the grid spans {wl.min():.1f}-{wl.max():.1f} nm); use data that covers "
        f"{float(target_nm):g} nm")
  return i


def _normalised_difference(cube, wavelengths_nm, a_nm, b_nm, eps, name):
  """(a - b + eps) / (a + b + eps) with a, b the bands nearest a_nm, b_nm."""
  if not hasattr(cube, "shape"):
    cube = np.asarray(cube)  # nested lists
  wl = check_wavelengths(wavelengths_nm, cube.shape[-1])
  a = cube[..., band_index(wl, a_nm, index_name=name)]
  b = cube[..., band_index(wl, b_nm, index_name=name)]
  return (a - b + eps) / (a + b + eps)


def ndvi(cube, wavelengths_nm, eps: float = 1e-6):
  """NDVI (NIR - Red + e) / (NIR + Red + e) of a (..., B) cube; returns (...)."""
  return _normalised_difference(cube, wavelengths_nm, NIR_NM, RED_NM, eps, "NDVI")


def ndwi(cube, wavelengths_nm, eps: float = 1e-6):
  """McFeeters NDWI (Green - NIR + e) / (Green + NIR + e) of a (..., B) cube; returns (...)."""
  return _normalised_difference(cube, wavelengths_nm, GREEN_NM, NIR_NM, eps, "NDWI")
