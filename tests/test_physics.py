"""Tests for spectral_diffusion.physics: indices and sensor responses, on real shared data."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pyrsr.rsr
import pytest
import scipy.io

from conftest import raises_one_line, shared_file
from spectral_diffusion import physics
from spectral_diffusion.data import INDIAN_PINES_WAVELENGTHS_NM
from spectral_diffusion.physics import srf

IP_NM = np.asarray(INDIAN_PINES_WAVELENGTHS_NM)
PAVIA_NM = np.linspace(430.0, 860.0, 103)  # Pavia University as distributed: nominal ROSIS grid
ALI_ORDER = ("MS-1p", "MS-1", "MS-2", "MS-3", "MS-4", "MS-4p", "MS-5p", "MS-5", "MS-7")  # MSim bands




def _csv_column(rel: str, column: str) -> np.ndarray:
  with open(shared_file(rel), newline="", encoding="utf-8") as f:
    return np.array([float(row[column]) for row in csv.DictReader(f)])


@pytest.fixture(scope="module")
def jasper():
  """Jasper Ridge reflectance (100, 100, 198), abundances (tree, water, dirt, road), wavelengths."""
  m = scipy.io.loadmat(shared_file("scenes/jasperRidge2_R198.mat"), variable_names=["Y", "A"])
  cube = (m["Y"].T / 1e4).reshape(100, 100, 198).transpose(1, 0, 2)
  abundance = m["A"].T.reshape(100, 100, 4).transpose(1, 0, 2)
  return cube, abundance, _csv_column("wavelengths/jasper_wavelengths.csv", "center_nm_aviris_grid")


@pytest.fixture(scope="module")
def santa_barbara():
  """AVIRIS Santa Barbara reflectance (90, 90, 224) with its exact band centres."""
  m = scipy.io.loadmat(shared_file("scenes/gatorsense/a_hsi_img_for_VI_demo.mat"))
  return m["hsi_img"].astype(np.float64) / 1e4, m["wavelengths"].reshape(-1).astype(np.float64)


# Wavelength checks and band lookup.

def test_check_wavelengths_accepts_aviris_overlaps():
  wl = physics.check_wavelengths(INDIAN_PINES_WAVELENGTHS_NM, 200)
  assert wl.dtype == np.float64 and wl.shape == (200,)
  assert np.sum(np.diff(wl) < 0) == 2  # the two spectrometer seams step back about 9.6 nm


@pytest.mark.parametrize("wl, match", [
    (None, "missing"),
    (IP_NM[::-1], "step back"),
    (np.random.default_rng(0).permutation(IP_NM), "step back"),
    (np.concatenate([IP_NM[:100], IP_NM[99:199]]), "appears 2 times"),
    (np.where(np.arange(200) == 5, np.nan, IP_NM), "NaN"),
    (IP_NM[:199], "199 wavelengths for 200 bands"),
    (IP_NM.reshape(20, 10), "1-D"),
    (-IP_NM, "positive"),
    (IP_NM / 1000.0, "micrometres"),
])
def test_check_wavelengths_rejects(wl, match):
  raises_one_line(physics.check_wavelengths, wl, 200, match=match)


def test_band_index():
  assert physics.band_index(IP_NM, 660.0) == int(np.argmin(np.abs(IP_NM - 660.0)))
  msg = raises_one_line(physics.ndvi, np.ones((2, 103)), np.linspace(400.0, 700.0, 103))
  assert "NDVI" in msg and "860" in msg and "400.0-700.0" in msg


# Indices.

def test_ndvi_ndwi_on_jasper_trees_and_water(jasper):
  cube, abundance, wl = jasper
  tree, water = abundance[..., 0] > 0.9, abundance[..., 1] > 0.9
  ndvi, ndwi = physics.ndvi(cube, wl), physics.ndwi(cube, wl)
  assert ndvi.shape == ndwi.shape == (100, 100)
  # The data README measured +0.82 and +0.71 with bands at 557/664/856 nm, the ones picked here.
  assert ndvi[tree].mean() == pytest.approx(0.82, abs=0.02)
  assert ndwi[water].mean() == pytest.approx(0.71, abs=0.02)
  assert ndvi[water].mean() < 0 and ndwi[tree].mean() < 0


def test_ndvi_grad_matches_hand_derivative(santa_barbara):
  cube, wl = santa_barbara
  pixel = jnp.asarray(cube[45, 45], jnp.float32)
  red, nir = physics.band_index(wl, physics.RED_NM), physics.band_index(wl, physics.NIR_NM)
  eps = 1e-6
  grad = jax.grad(lambda x: physics.ndvi(x, wl, eps))(pixel)
  n, r = float(pixel[nir]), float(pixel[red])
  want = np.zeros(wl.shape[0])
  want[nir] = 2 * r / (n + r + eps) ** 2
  want[red] = -2 * (n + eps) / (n + r + eps) ** 2
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)
  cube_grad = jax.grad(lambda c: physics.ndvi(c, wl).mean())(jnp.asarray(cube[:8, :8], jnp.float32))
  assert cube_grad.shape == (8, 8, 224) and bool(jnp.all(jnp.isfinite(cube_grad)))


# Sensor library.

def test_library_rows_are_distributions():
  names = physics.sensor_names()
  assert len(names) >= 15 and len(set(names)) == len(names)
  library = physics.sensor_library(IP_NM)
  assert len(library) >= 15 and not library.left_out
  for s in library:
    assert s.response.shape == (s.num_bands, 200) and s.response.dtype == np.float32
    assert np.all(s.response >= 0)
    np.testing.assert_allclose(s.response.sum(axis=1), 1.0, atol=1e-5)
    assert s.grid_index.shape == s.centres_nm.shape == (s.num_bands,)


def test_reading_is_quiet(capfd, recwarn):
  srf._read_pyrsr.cache_clear()  # pylint: disable=protected-access
  physics.sensor_on_grid("terra_aster", IP_NM)
  out, err = capfd.readouterr()
  assert not out and not err and not recwarn.list


def test_sentinel2a_b4_centre_from_raw_curve():
  raw = pyrsr.rsr.RSR_reader("Sentinel-2A", "MSI", LayerBandsAssignment=["4"])["4"]
  wl, r = raw[:, 0], raw[:, 1]
  centre = np.trapezoid(wl * r, wl) / np.trapezoid(r, wl)
  assert centre == pytest.approx(664.6, abs=3.0)  # ESA S2A SRF v3.0; data README: 664.6 nm
  s2 = physics.sensor_on_grid("sentinel2a_msi", IP_NM)
  b4 = s2.band_names.index("B4")
  assert s2.centres_nm[b4] == pytest.approx(centre, abs=0.5)
  assert s2.grid_index[b4] == int(np.argmin(np.abs(IP_NM - centre)))
  assert int(np.argmax(s2.response[b4])) in (s2.grid_index[b4] - 1, s2.grid_index[b4], s2.grid_index[b4] + 1)


def test_bands_outside_the_grid_are_skipped():
  oli = physics.sensor_on_grid("landsat8_oli", PAVIA_NM)
  assert {"B6", "B7", "B5"} <= set(oli.skipped)  # SWIR, and NIR 851-879 nm past the 860 nm end
  assert oli.band_names == ("B1", "B2", "B3", "B4")
  assert not set(oli.band_names) & set(oli.skipped)
  s2 = physics.sensor_on_grid("sentinel2a_msi", IP_NM)
  assert s2.skipped == ("B10",)  # 1375 nm falls in the removed water-vapour bands
  raises_one_line(physics.sensor_on_grid, "landsat8_oli", np.linspace(3000.0, 4000.0, 50),
                   match="no band inside the grid")
  library = physics.sensor_library(PAVIA_NM, min_bands=3)
  assert "spot1_hrv1" in library.left_out and "spot1_hrv1" not in [s.name for s in library]
  lines = physics.describe_library(library)
  assert any(line.startswith("landsat8_oli: 4 bands") and "B7" in line for line in lines)
  assert any(line.startswith("spot1_hrv1: left out") for line in lines)


def test_unknown_sensor_lists_names():
  msg = raises_one_line(physics.sensor_on_grid, "sentinel2c_msi", IP_NM, match="unknown sensor")
  assert "sentinel2a_msi" in msg and "eo1_ali" in msg
  raises_one_line(physics.sensor_library, IP_NM, names=["landsat8_oli", "nope"], match="nope")


def test_gaussian_sensor(monkeypatch):
  # A private copy of the registry, so the test sensor does not leak into other tests.
  monkeypatch.setattr(srf, "_GAUSSIAN_SENSORS", dict(srf._GAUSSIAN_SENSORS))  # pylint: disable=protected-access
  name = physics.gaussian_sensor("test_two_bands", ["a", "b"], [550.0, 650.0], [20.0, 40.0])
  assert physics.gaussian_sensor("test_two_bands", ["a", "b"], [550, 650], [20, 40]) == name
  s = physics.sensor_on_grid(name, IP_NM)
  np.testing.assert_allclose(s.centres_nm, [550.0, 650.0], atol=0.5)
  raises_one_line(physics.gaussian_sensor, "test_two_bands", ["a"], [500.0], [10.0], match="already")
  raises_one_line(physics.gaussian_sensor, "test_bad", ["a", "b"], [500.0], [10.0], match="one of each")
  raises_one_line(physics.gaussian_sensor, "test_bad", ["a"], [500.0], [-1.0], match="positive")


def test_simulate_and_place_on_grid():
  for s in physics.sensor_library(IP_NM):
    values = physics.simulate(np.ones((3, 4, 200), np.float32), s)
    assert values.shape == (3, 4, s.num_bands)
    np.testing.assert_allclose(values, 1.0, atol=1e-5)
    x_obs, mask = physics.place_on_grid(values, s, 200)
    assert x_obs.shape == (3, 4, 200) and mask.shape == (200,) and mask.dtype == np.float32
    assert mask.sum() == len(set(s.grid_index.tolist()))
    np.testing.assert_allclose(x_obs[..., mask == 1], 1.0, atol=1e-5)
    assert np.all(x_obs[..., mask == 0] == 0)
  # On a 20 nm grid MODIS B2 (857 nm) and B16 (867 nm) share the 860 nm band: they are averaged.
  coarse = np.linspace(400.0, 2500.0, 106)
  modis = physics.sensor_on_grid("terra_modis", coarse)
  b2, b16 = modis.band_names.index("B2"), modis.band_names.index("B16")
  assert modis.grid_index[b2] == modis.grid_index[b16] == 23
  values = np.arange(1.0, modis.num_bands + 1.0)
  x_obs, mask = physics.place_on_grid(values, modis, 106)
  assert x_obs[23] == pytest.approx((values[b2] + values[b16]) / 2)
  assert mask.sum() == modis.num_bands - 1
  raises_one_line(physics.simulate, np.ones((2, 199)), modis, match="199 values")
  np.testing.assert_allclose(physics.simulate([1.0] * 106, modis), 1.0, atol=1e-5)


# Real cross-sensor checks.

def test_sentinel2_ndvi_from_aviris_matches_hyperspectral_ndvi(santa_barbara):
  cube, wl = santa_barbara
  s2 = physics.sensor_on_grid("sentinel2a_msi", wl)
  bands = physics.simulate(cube, s2)
  red, nir = bands[..., s2.band_names.index("B4")], bands[..., s2.band_names.index("B8A")]
  s2_ndvi = (nir - red) / (nir + red)
  hs_ndvi = physics.ndvi(cube, wl)
  r = np.corrcoef(s2_ndvi.ravel(), hs_ndvi.ravel())[0, 1]
  assert r > 0.99, r  # measured 0.999
  assert np.abs(s2_ndvi - hs_ndvi).mean() < 0.02  # measured 0.005
  assert (physics.ndwi(cube, wl) > 0).sum() > 100  # the lake


def test_ali_from_hyperion_matches_real_ali():
  m = scipy.io.loadmat(shared_file("scenes/paris_data_hs_ms.mat"), variable_names=["HSim", "MSim"])
  wl = _csv_column("wavelengths/paris_hyperion_wavelengths.csv", "center_nm")
  ali = physics.sensor_on_grid("eo1_ali", wl)
  # MS-5 and MS-7 reach into the removed Hyperion water-vapour bands (1770-2093 nm).
  assert ali.band_names == ALI_ORDER[:7] and ali.skipped == ("MS-5", "MS-7")
  simulated = physics.simulate(m["HSim"], ali)
  for k, band in enumerate(ali.band_names):
    real = m["MSim"][..., ALI_ORDER.index(band)]
    r = np.corrcoef(simulated[..., k].ravel(), real.ravel())[0, 1]
    assert r > 0.8, (band, r)  # measured 0.85-0.89; box averages in the data README: 0.80-0.89
