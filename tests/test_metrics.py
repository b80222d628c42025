"""Metrics against skimage and closed forms, on a real Indian Pines crop."""


import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import indian_pines
from spectral_diffusion import metrics
from spectral_diffusion.errors import UserInputError

def _cube():
  return indian_pines().astype(np.float64)


@pytest.fixture(scope="module")
def pair():
  """(pred, target): a 32x32x20 crop, min-max normalised; pred is the crop one pixel over, lightly blurred."""
  cube = _cube()[:, :, ::10]
  target = cube[40:72, 60:92]
  lo, hi = target.min(), target.max()
  target = (target - lo) / (hi - lo)
  shifted = (cube[41:73, 61:93] - lo) / (hi - lo)
  pred = ndimage.gaussian_filter(shifted, sigma=(0.7, 0.7, 0))
  return pred, target


def test_rmse_matches_numpy(pair):
  pred, target = pair
  np.testing.assert_allclose(metrics.rmse(pred, target), np.sqrt(np.mean((pred - target) ** 2)), rtol=1e-12)


def test_mpsnr_matches_skimage_per_band(pair):
  pred, target = pair
  ref = [peak_signal_noise_ratio(target[..., b], pred[..., b], data_range=1.0) for b in range(20)]
  np.testing.assert_allclose(metrics.psnr_per_band(pred, target, 1.0), ref, rtol=1e-10)
  np.testing.assert_allclose(metrics.mpsnr(pred, target, 1.0), np.mean(ref), rtol=1e-10)


@pytest.mark.parametrize("rows,cols", [(32, 32), (23, 31)])
def test_mssim_matches_skimage_per_band(pair, rows, cols):
  pred, target = pair[0][:rows, :cols], pair[1][:rows, :cols]
  ref = [structural_similarity(target[..., b], pred[..., b], data_range=1.0, gaussian_weights=True,
                               sigma=1.5, use_sample_covariance=False) for b in range(20)]
  np.testing.assert_allclose(metrics.ssim_per_band(pred, target, 1.0), ref, rtol=1e-6)
  np.testing.assert_allclose(metrics.mssim(pred, target, 1.0), np.mean(ref), rtol=1e-6)
  assert 0.3 < np.mean(ref) < 0.99  # the perturbation is real, not trivial


def test_sam_matches_per_pixel_loop(pair):
  pred, target = pair
  p, t = pred.reshape(-1, 20), target.reshape(-1, 20)
  cos = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(p, t)]
  ref = np.mean(np.arccos(np.clip(cos, -1, 1)))
  np.testing.assert_allclose(metrics.sam(pred, target), ref, rtol=1e-9)


def test_sam_known_angle_and_zero_pixels():
  theta = 0.3
  a = np.zeros((1, 2, 5))
  b = np.zeros((1, 2, 5))
  a[0, 0, 0] = 2.0
  b[0, 0, :2] = [np.cos(theta), np.sin(theta)]
  # Second pixel: target spectrum all zero, so it is skipped.
  a[0, 1] = 1.0
  np.testing.assert_allclose(metrics.sam(a, b), theta, rtol=1e-12)
  assert metrics.sam(a * 3.0, a) == 0.0


def test_exact_reproduction(pair):
  _, target = pair
  assert metrics.mpsnr(target, target, 1.0) == 100.0
  np.testing.assert_array_equal(metrics.psnr_per_band(target, target, 1.0), 100.0)
  assert metrics.mpsnr(target, target, 1.0, max_db=80.0) == 80.0
  assert metrics.sam(target, target) == 0.0
  assert metrics.ergas(target, target) == 0.0
  np.testing.assert_allclose(metrics.mssim(target, target, 1.0), 1.0, rtol=1e-12)


def test_ergas_closed_form(pair):
  _, target = pair
  ratios = [0.1 ** 2 * np.mean(target[..., b] ** 2) / np.mean(target[..., b]) ** 2 for b in range(20)]
  np.testing.assert_allclose(metrics.ergas(target * 1.1, target), 100 * np.sqrt(np.mean(ratios)), rtol=1e-10)
  np.testing.assert_allclose(metrics.ergas(target * 1.1, target, scale=4.0),
                             25 * np.sqrt(np.mean(ratios)), rtol=1e-10)


def test_all_metrics_band_subset_and_jax_input(pair):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  pred, target = pair
  bands = [0, 3, 7, 19]
  got = metrics.all_metrics(jnp.asarray(pred), jnp.asarray(target), 1.0, bands=bands)
  p, t = pred[..., bands], target[..., bands]
  assert set(got) == {"rmse", "sam", "mpsnr", "mssim", "ergas", "w1", "local_var_ratio"}
  # JAX defaults to float32, so compare loosely.
  np.testing.assert_allclose(got["rmse"], metrics.rmse(p, t), rtol=1e-5)
  np.testing.assert_allclose(got["sam"], metrics.sam(p, t), rtol=1e-4)
  np.testing.assert_allclose(got["mpsnr"], metrics.mpsnr(p, t, 1.0), rtol=1e-5)
  np.testing.assert_allclose(got["mssim"], metrics.mssim(p, t, 1.0), rtol=1e-5)
  np.testing.assert_allclose(got["ergas"], metrics.ergas(p, t), rtol=1e-5)
  np.testing.assert_allclose(got["w1"], metrics.wasserstein1(p, t), rtol=1e-5)
  np.testing.assert_allclose(got["local_var_ratio"], metrics.local_variance_ratio(p, t), rtol=1e-4)
  full = metrics.all_metrics(pred, target, 1.0)
  assert full["rmse"] == metrics.rmse(pred, target)


def test_bad_input_raises(pair):
  pred, target = pair
  with pytest.raises(UserInputError, match="does not match"):
    metrics.rmse(pred[:, :, :5], target)
  with pytest.raises(UserInputError, match=r"\(H, W, B\)"):
    metrics.sam(pred[..., 0], target[..., 0])
  bad = pred.copy()
  bad[3, 4, 5] = np.nan
  with pytest.raises(UserInputError, match="NaN"):
    metrics.mpsnr(bad, target, 1.0)
  bad[3, 4, 5] = np.inf
  with pytest.raises(UserInputError, match="NaN or Inf"):
    metrics.mssim(bad, target, 1.0)
  with pytest.raises(UserInputError, match="data_range"):
    metrics.mpsnr(pred, target, 0.0)
  with pytest.raises(UserInputError, match="bands"):
    metrics.all_metrics(pred, target, 1.0, bands=[25])


def test_wasserstein1_matches_scipy_and_closed_forms(pair):
  from scipy.stats import wasserstein_distance
  pred, target = pair
  ref = np.mean([wasserstein_distance(pred[..., b].ravel(), target[..., b].ravel()) for b in range(20)])
  np.testing.assert_allclose(metrics.wasserstein1(pred, target), ref, rtol=1e-10)
  assert metrics.wasserstein1(target, target) == 0.0
  np.testing.assert_allclose(metrics.wasserstein1(target + 0.03, target), 0.03, rtol=1e-10)  # a shift
  # Only the distribution counts: the pixels shuffled (each band alike) are at distance 0.
  shuffled = np.random.default_rng(0).permutation(target.reshape(-1, 20)).reshape(target.shape)
  np.testing.assert_allclose(metrics.wasserstein1(shuffled, target), 0.0, atol=1e-15)
  # A constant at the mean is as far as the mean absolute deviation.
  mean = np.broadcast_to(target.mean(axis=(0, 1)), target.shape)
  np.testing.assert_allclose(metrics.wasserstein1(mean, target),
                             np.mean(np.abs(target - target.mean(axis=(0, 1)))), rtol=1e-10)


def test_local_variance_ratio_against_scipy_and_closed_forms(pair):
  pred, target = pair
  for k in (3, 5):
    def lv(x):
      return np.var(x - ndimage.uniform_filter(x, size=(k, k, 1), mode="reflect"))
    np.testing.assert_allclose(metrics.local_variance_ratio(pred, target, k), lv(pred) / lv(target), rtol=1e-10)
  assert metrics.local_variance_ratio(target, target) == 1.0
  assert metrics.local_variance_ratio(np.full_like(target, 0.4), target) == pytest.approx(0.0, abs=1e-20)
  np.testing.assert_allclose(metrics.local_variance_ratio(2.0 * target + 0.1, target), 4.0, rtol=1e-10)
  assert metrics.local_variance_ratio(pred, target) < 1.0          # the blurred prediction is smoother
  with pytest.raises(UserInputError, match="constant"):
    metrics.local_variance_ratio(target, np.zeros_like(target))
  for k in (1, 4):
    with pytest.raises(UserInputError, match="odd"):
      metrics.local_variance_ratio(pred, target, k=k)
