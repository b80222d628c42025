"""Tests for spectral_diffusion.data on the real shared scenes."""

import json
import pathlib

import h5py
import numpy as np
import pytest
import scipy.io

from conftest import SHARED_DATA, raises_one_line, shared_file
from spectral_diffusion import data

SCENES = SHARED_DATA / "scenes"


def _shared(rel: str) -> pathlib.Path:
  return shared_file(f"scenes/{rel}")


@pytest.fixture(scope="module")
def pines():
  return data.load_indian_pines()


# Readers.


def test_load_indian_pines(pines):
  assert pines.cube.shape == (145, 145, 200)
  assert pines.cube.dtype == np.float32
  np.testing.assert_array_equal(pines.cube, np.load(_shared("Indian_pines_corrected.npy")))
  assert pines.wavelengths_nm.shape == (200,)
  assert pines.wavelengths_nm.dtype == np.float64


def test_nearest_bands_rgb(pines):
  idx = data.nearest_bands(pines.wavelengths_nm, data.RGB_NM)
  assert len(idx) == 3 and idx[0] > idx[1] > idx[2]
  for i, target in zip(idx, data.RGB_NM):
    assert abs(pines.wavelengths_nm[i] - target) < 10.0


def test_nearest_bands_errors(pines):
  msg = raises_one_line(data.nearest_bands, pines.wavelengths_nm, [550.0, 3000.0])
  assert "3000" in msg
  raises_one_line(data.nearest_bands, None, data.RGB_NM)


def test_load_scene_mat_v5_with_wavelengths():
  path = _shared("gatorsense/a_hsi_img_for_VI_demo.mat")
  scene = data.load_scene(path)
  raw = scipy.io.loadmat(path)
  assert scene.cube.shape == (90, 90, 224) and scene.cube.dtype == np.float32
  np.testing.assert_array_equal(scene.cube, raw["hsi_img"].astype(np.float32))
  np.testing.assert_array_equal(scene.wavelengths_nm, raw["wavelengths"].ravel())
  assert scene.name == "a_hsi_img_for_VI_demo"
  assert 360 < scene.wavelengths_nm.min() < 370 and 2490 < scene.wavelengths_nm.max() < 2500


def test_load_scene_misspelt_wavelength_key():
  path = _shared("gatorsense/an_hsi_img_for_class_demo.mat")
  scene = data.load_scene(path, name="muufl")
  assert scene.cube.shape == (31, 20, 72) and scene.name == "muufl"
  np.testing.assert_array_equal(scene.wavelengths_nm, scipy.io.loadmat(path)["wavlength"].ravel())
  explicit = data.load_scene(path, key="hsi_sub", wavelengths_key="wavlength")
  np.testing.assert_array_equal(explicit.wavelengths_nm, scene.wavelengths_nm)


def test_load_mat_v73(tmp_path):
  rng = np.random.default_rng(0)
  arr = rng.random((5, 7, 3))
  wl = np.linspace(400.0, 900.0, 3)
  path = tmp_path / "cube_v73.mat"
  with h5py.File(path, "w") as f:
    # MATLAB v7.3 stores column-major arrays, so h5py sees them transposed.
    f.create_dataset("cube", data=arr.T).attrs["MATLAB_class"] = np.bytes_("double")
    f.create_dataset("wavelengths", data=wl[:, None].T).attrs["MATLAB_class"] = np.bytes_("double")
    f.create_dataset("label", data=np.frombuffer(b"abc", np.uint8).astype(np.uint16)[:, None]).attrs[
        "MATLAB_class"] = np.bytes_("char")
  np.testing.assert_array_equal(data.load_array(path), arr)
  scene = data.load_scene(path)
  np.testing.assert_allclose(scene.cube, arr.astype(np.float32))
  np.testing.assert_array_equal(scene.wavelengths_nm, wl)


def test_npy_round_trip(tmp_path):
  arr = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
  path = tmp_path / "x.npy"
  np.save(path, arr)
  loaded = data.load_array(path)
  assert loaded.dtype == np.uint16
  np.testing.assert_array_equal(loaded, arr)
  scene = data.load_scene(path)
  assert scene.wavelengths_nm is None and scene.name == "x"
  np.testing.assert_array_equal(scene.cube, arr.astype(np.float32))


# Errors: each is a UserInputError with a one-line message.


def test_missing_file(tmp_path):
  msg = raises_one_line(data.load_array, tmp_path / "nope.npy")
  assert "nope.npy" in msg


def test_unknown_extension(tmp_path):
  path = tmp_path / "x.bmp"
  path.write_bytes(b"BM\x00\x00")
  msg = raises_one_line(data.load_scene, path)
  assert ".npy" in msg and ".mat" in msg


def test_corrupt_npy(tmp_path):
  path = tmp_path / "bad.npy"
  path.write_bytes(b"\x93NUMPY garbage\n\x00\xff" * 10)
  assert "bad.npy" in raises_one_line(data.load_array, path)


def test_corrupt_mat(tmp_path):
  path = tmp_path / "bad.mat"
  path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)))
  raises_one_line(data.load_scene, path)


def test_2d_array(tmp_path):
  path = tmp_path / "flat.npy"
  np.save(path, np.zeros((4, 5), np.float32))
  assert "3-D" in raises_one_line(data.load_scene, path)


def test_ambiguous_mat_keys(tmp_path):
  path = tmp_path / "two.mat"
  scipy.io.savemat(path, {"a": np.zeros((4, 4, 3)), "b": np.ones((4, 4, 3)), "c": np.ones((2, 2))})
  msg = raises_one_line(data.load_array, path)
  assert "a (4, 4, 3)" in msg and "b (4, 4, 3)" in msg and "key" in msg
  np.testing.assert_array_equal(data.load_array(path, key="b"), np.ones((4, 4, 3)))
  raises_one_line(data.load_array, path, key="zzz")


def test_check_finite():
  cube = np.zeros((5, 9, 4), np.float32)
  data.check_finite(cube, "ok.npy")
  cube[3, 7, 0] = np.nan
  cube[4, 1, 2] = np.inf
  msg = raises_one_line(data.check_finite, cube, "input.npy")
  assert msg == ("input.npy: 2 NaN/Inf values (first at row 3, col 7, band 0); "
                 "fill or mask them before running")


def test_scene_wavelength_count_mismatch():
  raises_one_line(data.HyperspectralScene, np.zeros((2, 2, 3)), np.arange(4.0), "s")


def test_indian_pines_missing(monkeypatch):
  monkeypatch.setattr(data.readers.importlib.util, "find_spec", lambda name: None)
  assert "pip install tensorly" in raises_one_line(data.load_indian_pines)


# Normalisers.


def test_minmax_round_trip(pines):
  norm = data.fit_minmax(pines.cube)
  assert (norm.lo, norm.hi) == (955.0, 9604.0)
  y = norm.forward(pines.cube)
  assert y.dtype == np.float32 and y.min() == 0.0 and y.max() == 1.0
  np.testing.assert_allclose(norm.inverse(y), pines.cube, rtol=1e-6)
  restored = data.normaliser_from_dict(json.loads(json.dumps(norm.to_dict())))
  assert restored == norm


def test_affine_round_trip():
  x = np.array([3693.0, 11103.0, 0.0])
  np.testing.assert_allclose(data.DFC2018.forward(x), [0.0, 1.0, -3693.0 / 7410.0])
  np.testing.assert_allclose(data.DFC2018.inverse(data.DFC2018.forward(x)), x)
  restored = data.normaliser_from_dict(json.loads(json.dumps(data.DFC2018.to_dict())))
  assert isinstance(restored, data.Affine) and restored == data.DFC2018


def test_normaliser_errors():
  raises_one_line(data.normaliser_from_dict, {"kind": "zscore"})
  raises_one_line(data.normaliser_from_dict, {"kind": "minmax", "lo": 0.0})
  raises_one_line(data.fit_minmax, np.ones((3, 3, 2)))


# Patches.


def test_spatial_split(pines):
  train, test = data.spatial_split(pines.cube, (0, 100), slice(100, None))
  assert train.shape == (145, 100, 200) and test.shape == (145, 45, 200)
  np.testing.assert_array_equal(test, pines.cube[:, 100:])
  msg = raises_one_line(data.spatial_split, pines.cube, (0, 100), (90, 145))
  assert "overlap" in msg and "90..99" in msg


def test_random_crops_shapes(pines):
  rng = np.random.default_rng(0)
  crops = data.random_crops(pines.cube, rng, batch=6, size=16, augment=False)
  assert crops.shape == (6, 16, 16, 200) and crops.dtype == np.float32
  msg = raises_one_line(data.random_crops, pines.cube[:10, :20], rng, 2, 16)
  assert "10x20" in msg and "16x16" in msg


def test_random_crops_augment_is_dihedral_of_a_crop():
  h, w, size = 23, 31, 8
  ids = np.arange(h * w, dtype=np.float32).reshape(h, w)
  cube = np.stack([ids, -ids, ids * 2], axis=-1)
  crops = data.random_crops(cube, np.random.default_rng(1), batch=32, size=size, augment=True)
  assert crops.shape == (32, size, size, 3)
  transforms_seen = set()
  for crop in crops:
    # Pixel ids grow along rows and columns, so the smallest id is the crop's top-left corner.
    y, x = divmod(int(crop[..., 0].min()), w)
    ref = cube[y:y + size, x:x + size]
    matches = [(k, f) for k in range(4) for f in (False, True)
               if np.array_equal(crop, data.patches._dihedral(ref, k, f))]
    assert matches, "augmented crop is not a flip/rotation of a crop"
    transforms_seen.add(matches[0])
  assert len(transforms_seen) > 1


def test_tile_positions_cover_edges():
  pos = data.tile_positions(40, 37, 16, 4)
  ys, xs = sorted({p[0] for p in pos}), sorted({p[1] for p in pos})
  assert ys == [0, 12, 24] and xs == [0, 12, 21]
  assert data.tile_positions(16, 16, 16, 4) == [(0, 0)]


def test_predict_tiled_identity(pines):
  crop = pines.cube[10:50, 20:57]
  calls = []

  def identity(tiles):
    calls.append(tiles.shape)
    return tiles

  out = data.predict_tiled(identity, crop, size=16, overlap=4, batch=4)
  assert out.shape == crop.shape and out.dtype == np.float32
  np.testing.assert_allclose(out, crop, rtol=1e-6)
  assert all(s == (4, 16, 16, 200) for s in calls)  # padded last batch: one shape for jit


def test_predict_tiled_changes_bands():
  cube = np.random.default_rng(0).random((20, 18, 5)).astype(np.float32)
  out = data.predict_tiled(lambda t: t[..., :2] * 2.0, cube, size=8, overlap=3, batch=3)
  np.testing.assert_allclose(out, cube[..., :2] * 2.0, rtol=1e-6)


def test_predict_tiled_small_image():
  cube = np.zeros((10, 40, 3), np.float32)
  msg = raises_one_line(data.predict_tiled, lambda t: t, cube, 16, 4, 2)
  assert "10x40" in msg and "16x16" in msg
  raises_one_line(data.tile_positions, 40, 40, 16, 16)


# The papers' patch protocols (pure geometry, on the real scene sizes).


def _positions_along(n, size, stride):
  """Closed form of a border-aligned grid: ceil((n - size) / stride) + 1 starts."""
  return -(-(n - size) // stride) + 1


def _disjoint(a, b):
  return not (a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3])


def test_scdm_dfc2018_grid_is_27_patches_with_3_isolated_test_patches():
  from tfds_builders.dfc2018 import dfc2018_dataset_builder as dfc  # noqa: F401 (imports TFDS)
  split = dfc.Builder.BUILDER_CONFIGS[0].split
  train, test = split.windows(1202, 4172)
  assert _positions_along(1202, 512, 512) * _positions_along(4172, 512, 512) == 27
  assert (len(train), len(test)) == (24, 3)
  assert all(w[2:] == (512, 512) and w[0] + 512 <= 1202 and w[1] + 512 <= 4172 for w in train + test)
  assert all(_disjoint(t, o) for t in test for o in train + test if o != t)
  covered = np.zeros((1202, 4172), bool)
  for r, c, h, w in train + test:
    covered[r:r + h, c:c + w] = True
  assert covered.all()


def test_scdm_pavia_center_grid_is_48_patches_40_train_8_test():
  from tfds_builders.pavia_center import pavia_center_dataset_builder as pc
  train, test = pc.Builder.BUILDER_CONFIGS[0].split.windows(1096, 715)
  assert _positions_along(1024, 128, 128) * _positions_along(715, 128, 128) == 48
  assert (len(train), len(test)) == (40, 8)
  assert max(r + h for r, _, h, _ in train + test) == 1024  # the 1024 rows used
  assert {c for _, c, _, _ in test} == {0}
  assert all(_disjoint(t, o) for t in test for o in train)


@pytest.mark.parametrize("module, shape, train_rows", [
    ("pavia_university", (610, 340), 482), ("washington_dc", (1208, 307), 952)])
def test_anyband_patches_are_64_with_stride_32(module, shape, train_rows):
  import importlib
  builder = importlib.import_module(f"tfds_builders.{module}.{module}_dataset_builder").Builder
  train, test = builder.BUILDER_CONFIGS[0].split.windows(*shape)
  h, w = shape
  assert len(train) == _positions_along(train_rows, 64, 32) * _positions_along(w, 64, 32)
  assert len(test) == _positions_along(h - train_rows, 64, 64) * _positions_along(w, 64, 64)
  assert max(r + 64 for r, _, _, _ in train) == train_rows == min(r for r, _, _, _ in test)
  assert all(_disjoint(t, o) for t in test for o in train)


def test_split_protocol_errors():
  # A 40-pixel side holds starts 0, 16, 24: patch 5 (row 16, column 24) overlaps its neighbours.
  assert "test patch 5" in raises_one_line(data.patches.GridSplit(16, (0, 5)).windows, 40, 40)
  assert "below 9" in raises_one_line(data.patches.GridSplit(16, (9,)).windows, 40, 40)
  msg = raises_one_line(data.patches.RegionSplit(0, (0, 30), (20, 40), size=8).windows, 40, 40)
  assert "overlap" in msg


def test_random_crops_from_a_stack_stay_inside_one_patch():
  p, h, w, size = 5, 12, 10, 6
  ids = np.arange(p * h * w, dtype=np.float32).reshape(p, h, w, 1)
  crops = data.random_crops(ids, np.random.default_rng(3), batch=40, size=size, augment=False)
  assert crops.shape == (40, size, size, 1) and crops.dtype == np.float32
  drawn = set()
  for crop in crops:
    k, rest = divmod(int(crop.min()), h * w)
    y, x = divmod(rest, w)
    np.testing.assert_array_equal(crop, ids[k, y:y + size, x:x + size])
    drawn.add(k)
  assert drawn == set(range(p))
  msg = raises_one_line(data.random_crops, ids, np.random.default_rng(0), 2, 11)
  assert "12x10" in msg


def test_pixels_and_mosaic_of_a_stack():
  stack = np.random.default_rng(0).random((3, 4, 5, 2))
  np.testing.assert_array_equal(data.patches.pixels(stack).reshape(-1, 2), stack.reshape(-1, 2))
  image = data.patches.mosaic(stack)
  assert image.shape == (4, 15, 2)
  np.testing.assert_array_equal(image[:, 5:10], stack[1])
  np.testing.assert_array_equal(data.patches.mosaic(stack[0]), stack[0])
