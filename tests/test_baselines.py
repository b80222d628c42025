"""Baselines on real Indian Pines data: exact recovery, np.interp parity, and the real measurement."""


import numpy as np
import pytest

from conftest import indian_pines
from spectral_diffusion import baselines, metrics
from spectral_diffusion.data._indian_pines_wavelengths import INDIAN_PINES_WAVELENGTHS_NM
from spectral_diffusion.errors import UserInputError

_WL = np.asarray(INDIAN_PINES_WAVELENGTHS_NM)


@pytest.fixture(scope="module")
def scene():
  """The full 145x145x200 scene, min-max normalised globally."""
  cube = indian_pines().astype(np.float64)
  return (cube - cube.min()) / (cube.max() - cube.min())


@pytest.fixture(scope="module")
def crop(scene):
  return scene[40:72, 60:92]


def _rgb_bands():
  return [int(np.argmin(np.abs(_WL - w))) for w in (640.0, 550.0, 460.0)]


def test_ridge_recovers_linear_map(crop):
  rng = np.random.default_rng(0)
  x = crop[..., [5, 15, 24, 50, 120]]  # real, correlated inputs
  w, c = rng.normal(size=(5, 7)), rng.normal(size=7)
  y = x @ w + c
  model = baselines.fit_ridge(x[:20], y[:20], alpha=1e-10)
  pred = baselines.predict_ridge(model, x[20:])  # unseen rows, (H, W, b) in and out
  assert pred.shape == (12, 32, 7)
  np.testing.assert_allclose(pred, y[20:], atol=1e-6)


def test_ridge_poly2_recovers_quadratic_map(crop):
  x = crop[..., _rgb_bands()].reshape(-1, 3)
  r, g, b = x.T
  y = np.stack([1.0 + 2 * r - g + 0.5 * r * r, 3 * g * b - b * b + 0.2, r * g + g * g - r * b], axis=1)
  model = baselines.fit_ridge(x[:600], y[:600], alpha=1e-10, degree=2)
  np.testing.assert_allclose(baselines.predict_ridge(model, x[600:]), y[600:], atol=1e-6)
  linear = baselines.predict_ridge(baselines.fit_ridge(x[:600], y[:600], alpha=1e-10), x[600:])
  assert np.abs(linear - y[600:]).max() > 1e-4  # the quadratic terms matter


def test_ridge_default_alpha_is_near_least_squares(crop):
  x = crop[..., _rgb_bands()].reshape(-1, 3)
  y = crop.reshape(-1, 200)
  a = baselines.predict_ridge(baselines.fit_ridge(x, y), x)
  b = baselines.predict_ridge(baselines.fit_ridge(x, y, alpha=0.0), x)
  np.testing.assert_allclose(a, b, atol=1e-3)


def test_interp_identity_on_nonmonotonic_grid(crop):
  assert np.any(np.diff(_WL) < 0)  # the real grid really is non-monotonic
  np.testing.assert_array_equal(baselines.interp_bands(crop, _WL, _WL), crop)


def test_interp_matches_np_interp(crop):
  # Unsorted input bands spanning both spectrometer overlaps (686.53/696.50/686.91, 1282.55/1273.00).
  idx = [120, 29, 30, 31, 32, 5, 93, 94, 95, 60, 180]
  out_wl = np.concatenate([[350.0], _WL, [2600.0]])
  got = baselines.interp_bands(crop[..., idx], _WL[idx], out_wl)
  assert got.shape == (32, 32, 202)
  order = np.argsort(_WL[idx])
  xp = _WL[idx][order]
  for i, j in [(0, 0), (5, 17), (31, 31), (20, 3)]:
    ref = np.interp(out_wl, xp, crop[i, j, idx][order])
    np.testing.assert_allclose(got[i, j], ref, rtol=1e-12, atol=1e-15)


def test_interp_averages_duplicate_wavelengths(crop):
  x = crop[..., [10, 50, 90]].reshape(-1, 3)
  got = baselines.interp_bands(x, [700.0, 500.0, 700.0], [450.0, 600.0, 800.0])
  hi = (x[:, 0] + x[:, 2]) / 2
  np.testing.assert_allclose(got, np.stack([x[:, 1], (x[:, 1] + hi) / 2, hi], axis=1), rtol=1e-12)


def test_bad_input_raises(crop):
  with pytest.raises(UserInputError, match="input wavelengths"):
    baselines.interp_bands(crop[..., :3], _WL[:4], _WL)
  with pytest.raises(UserInputError, match="pixels"):
    baselines.fit_ridge(crop[..., :3], crop[:10])
  with pytest.raises(UserInputError, match="degree"):
    baselines.fit_ridge(crop[..., :3], crop, degree=3)


def test_real_measurement(scene):
  """Train on columns 0-71, test on 80-144, inputs = bands nearest 640/550/460 nm."""
  idx = _rgb_bands()
  train, test = scene[:, :72], scene[:, 80:]
  preds = baselines.run_baselines(train[..., idx], train, test[..., idx], _WL[idx], _WL)
  assert set(preds) == {"ridge", "ridge_poly2", "interp"}
  psnr = {k: metrics.mpsnr(v, test, 1.0) for k, v in preds.items()}
  sam_deg = {k: np.degrees(metrics.sam(v, test)) for k, v in preds.items()}
  print("MPSNR dB", psnr, "SAM deg", sam_deg)
  # Measured: ridge 39.65 dB / 4.59 deg, ridge_poly2 41.08 / 3.84, interp 16.85 / 41.8.
  assert psnr["ridge_poly2"] > psnr["ridge"] > psnr["interp"]
  assert sam_deg["ridge_poly2"] < sam_deg["ridge"] < sam_deg["interp"]
  assert 38.0 < psnr["ridge"] < 42.0 and 39.0 < psnr["ridge_poly2"] < 45.0
  assert 3.0 < sam_deg["ridge"] < 6.0
