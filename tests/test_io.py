"""Files from the real world: ENVI and GeoTIFF readers checked against GDAL, the GeoTIFF writer read back
by GDAL, nodata, bad files, and tiled inference of a real network against the untiled result."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS

from configs import demo_indian_pines
from conftest import indian_pines, raises_one_line, shared_file, shrink
from spectral_diffusion import data, losses, models, training
from spectral_diffusion.data import envi, geo

AVIRIS_NG = [f"scenes/aviris_ng_tiny/{name}" for name in (
    "ang20140912t192359_corr_v1c_img_2580-2590_540-550",
    "ang20150420t182808_corr_v1e_img_4200-4210_70-80",
    "ang20150422t163638_corr_v1e_img_4000-4010_550-560")]


def _aviris(i=0):
  hdr = shared_file(AVIRIS_NG[i] + ".hdr")
  return hdr, shared_file(AVIRIS_NG[i] + ".img")


def _gdal(path):
  """(cube (H, W, B) as GDAL reads it, dataset profile, per-band tags, dataset ENVI tags)."""
  with rasterio.open(path) as ds:
    tags = [ds.tags(i) for i in range(1, ds.count + 1)]
    envi_tags = ds.tags(ns="ENVI") if "ENVI" in ds.tag_namespaces() else {}
    return np.moveaxis(ds.read(), 0, -1), ds.profile, tags, envi_tags, ds.descriptions


# ENVI, on the real AVIRIS-NG tiles.


@pytest.mark.parametrize("tile", range(3))
def test_envi_reader_matches_gdal(tile):
  hdr, img = _aviris(tile)
  scene = data.load_scene(hdr)
  cube, profile, tags, _, _ = _gdal(img)
  assert scene.cube.shape == (10, 10, 432) and scene.name == img.stem
  np.testing.assert_array_equal(scene.cube, cube)
  np.testing.assert_array_equal(data.load_scene(img).cube, cube)  # the image path finds its header
  # Rotated UTM grids ('rotation=' in map info): same CRS and affine transform as GDAL.
  assert scene.crs == profile["crs"] and scene.crs.to_epsg() in (32612, 32613)
  assert scene.transform.almost_equals(profile["transform"], precision=1e-6)
  assert scene.transform.b != 0.0
  np.testing.assert_allclose(scene.wavelengths_nm, [float(t["wavelength"]) for t in tags], rtol=1e-12)
  assert 346.0 < scene.wavelengths_nm[0] < 347.0 and 2504.0 < scene.wavelengths_nm[-1] < 2506.0
  assert scene.fwhm_nm.shape == (432,) and 5.0 < scene.fwhm_nm.mean() < 7.0


def _write_envi(path, cube, interleave, dtype, offset=0, units="Nanometers", wavelengths=None, fwhm=None,
                ignore=None, map_info=None, drop=()):
  """An ENVI file written by hand (numpy tofile + a header), independently of the reader under test."""
  codes = {"u1": 1, "i2": 2, "i4": 3, "f4": 4, "f8": 5, "u2": 12}
  dt = np.dtype(dtype)
  axes = {"bsq": (2, 0, 1), "bil": (0, 2, 1), "bip": (0, 1, 2)}[interleave]
  with open(path.with_suffix(".img"), "wb") as f:
    f.write(b"\0" * offset)
    np.ascontiguousarray(cube.astype(dt).transpose(axes)).tofile(f)
  fields = {"samples": cube.shape[1], "lines": cube.shape[0], "bands": cube.shape[2], "header offset": offset,
            "file type": "ENVI Standard", "data type": codes[dt.str[1:]], "interleave": interleave,
            "byte order": int(dt.byteorder == ">"), "wavelength units": units}
  if wavelengths is not None:
    fields["wavelength"] = "{\n " + " ,\n ".join(f"{w:.7g}" for w in wavelengths) + "}"
  if fwhm is not None:
    fields["fwhm"] = "{ " + " , ".join(f"{w:.7g}" for w in fwhm) + " }"
  if ignore is not None:
    fields["data ignore value"] = ignore
  if map_info is not None:
    fields["map info"] = map_info
  text = "ENVI\ndescription = {\n  written by test_io = a value with an equals sign}\n"
  text += "".join(f"{k} = {v}\n" for k, v in fields.items() if k not in drop)
  path.with_suffix(".hdr").write_text(text)
  return path.with_suffix(".img")


@pytest.mark.parametrize("interleave,dtype,offset", [("bsq", "<f4", 0), ("bil", ">f8", 128),
                                                      ("bip", ">i2", 7), ("bsq", "<u2", 0)])
def test_envi_interleaves_byte_orders_and_offsets(tmp_path, interleave, dtype, offset):
  hdr, img = _aviris(0)
  fields = envi.parse_header(hdr.read_text())
  original = np.fromfile(img, "<f4").reshape(10, 10, 432)  # the tile is BIP float32, offset 0
  cube = original[:, :7, ::9]  # 10 x 7 x 48: rows and columns differ, so a transposition shows
  if np.dtype(dtype).kind in "iu":
    cube = np.round(np.clip(cube, 0, 3) * 1e4)
  wl = np.asarray([float(v) for v in envi.split_list(fields["wavelength"])])[::9]
  path = _write_envi(tmp_path / "x", cube, interleave, dtype, offset, units="Micrometers",
                     wavelengths=wl / 1000.0, fwhm=np.full(48, 0.0056), map_info=fields["map info"])
  scene = data.load_scene(path)
  gdal_cube, profile, _, _, _ = _gdal(path)
  expected = cube.astype(np.dtype(dtype)).astype(np.float32)
  np.testing.assert_array_equal(scene.cube, expected)
  np.testing.assert_array_equal(scene.cube, gdal_cube.astype(np.float32))
  assert data.load_array(path).dtype == np.dtype(dtype).newbyteorder("=")
  np.testing.assert_allclose(scene.wavelengths_nm, wl, rtol=1e-6)  # micrometres -> nm
  np.testing.assert_allclose(scene.fwhm_nm, 5.6, rtol=1e-6)
  assert scene.transform.almost_equals(profile["transform"], precision=1e-6)


def test_envi_data_ignore_value_is_nodata(tmp_path):
  cube = np.round(indian_pines()[:12, :9, :20]).astype(np.int16)
  cube[2:5, 3:6] = -9999
  path = _write_envi(tmp_path / "nd", cube, "bil", "<i2", ignore=-9999,
                     wavelengths=np.linspace(400, 1000, 20))
  scene = data.load_scene(path)
  with rasterio.open(path) as ds:
    assert ds.nodata == -9999  # GDAL reads 'data ignore value' as nodata too
  assert scene.nodata == -9999.0 and scene.crs is None and scene.transform is None
  assert np.isnan(scene.cube[2:5, 3:6]).all() and np.isfinite(scene.cube[~np.isnan(scene.cube)]).all()
  pixels = data.nodata_pixels(scene.cube)
  assert pixels.sum() == 9 and pixels[2:5, 3:6].all()


@pytest.mark.parametrize("case", ["truncated", "missing_keys", "not_envi", "no_data_file", "bad_number",
                                  "complex", "unclosed_brace"])
def test_bad_envi_files_give_one_line(tmp_path, case):
  cube = indian_pines()[:6, :5, :8]
  path = _write_envi(tmp_path / "bad", cube, "bsq", "<f4", drop=("bands",) if case == "missing_keys" else ())
  hdr = path.with_suffix(".hdr")
  expected = {"truncated": "truncated", "missing_keys": "'bands'", "not_envi": "not an ENVI header",
              "no_data_file": "no data file", "bad_number": "not a number", "complex": "not supported",
              "unclosed_brace": "never closes"}[case]
  if case == "truncated":
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif case == "not_envi":
    hdr.write_text("samples = 5\n")
  elif case == "no_data_file":
    path.unlink()
  elif case == "bad_number":
    hdr.write_text(hdr.read_text().replace("samples = 5", "samples = five"))
  elif case == "complex":
    hdr.write_text(hdr.read_text().replace("data type = 4", "data type = 6"))
  elif case == "unclosed_brace":
    hdr.write_text(hdr.read_text() + "wavelength = { 1, 2,\n 3\n")
  assert expected in raises_one_line(data.load_scene, hdr)


# GeoTIFF.


def test_geotiff_from_gdal_envi_conversion(tmp_path):
  """GDAL's own ENVI -> GTiff conversion (per-band 'wavelength' tags) reads back with the header's grid."""
  hdr, img = _aviris(1)
  rasterio.shutil.copy(img, tmp_path / "conv.tif", driver="GTiff")
  scene, source = data.load_scene(tmp_path / "conv.tif"), data.load_scene(hdr)
  np.testing.assert_array_equal(scene.cube, source.cube)
  np.testing.assert_allclose(scene.wavelengths_nm, source.wavelengths_nm, rtol=1e-12)
  assert scene.crs == source.crs and scene.transform.almost_equals(source.transform, precision=1e-6)


def _plain_tif(path, cube, band_fn=None, dataset_tags=None):
  with rasterio.open(path, "w", driver="GTiff", height=cube.shape[0], width=cube.shape[1],
                     count=cube.shape[2], dtype="float32", crs="EPSG:32616",
                     transform=Affine(20.0, 0, 500000.0, 0, -20.0, 4480000.0)) as ds:
    ds.write(np.moveaxis(cube, -1, 0))
    for i in range(1, cube.shape[2] + 1) if band_fn else ():
      band_fn(ds, i)
    if dataset_tags:
      ds.update_tags(**dataset_tags)
  return path


@pytest.mark.parametrize("source", ["envi_list_um", "descriptions", "imagery", "none"])
def test_geotiff_wavelength_sources(tmp_path, source):
  cube = indian_pines()[:8, :6, :5]
  wl = np.asarray([450.5, 550.0, 650.25, 850.0, 1650.0])
  kwargs = {}
  if source == "envi_list_um":
    kwargs["dataset_tags"] = {"wavelength": "{ " + " , ".join(str(w / 1000) for w in wl) + " }",
                         "wavelength_units": "Micrometers", "fwhm": "{ 0.01, 0.01, 0.01, 0.02, 0.03 }"}
  elif source == "descriptions":
    kwargs["band_fn"] = lambda ds, i: ds.set_band_description(i, f"Band {i} ({wl[i - 1]} nm)")
  elif source == "imagery":
    kwargs["band_fn"] = lambda ds, i: ds.update_tags(i, ns="IMAGERY",
                                                     CENTRAL_WAVELENGTH_UM=str(wl[i - 1] / 1e3))
  scene = data.load_scene(_plain_tif(tmp_path / "x.tif", cube, **kwargs))
  np.testing.assert_array_equal(scene.cube, cube)
  assert scene.crs == CRS.from_epsg(32616) and scene.transform.c == 500000.0
  if source == "none":
    assert scene.wavelengths_nm is None
  else:
    np.testing.assert_allclose(scene.wavelengths_nm, wl, rtol=1e-9)
  if source == "envi_list_um":
    np.testing.assert_allclose(scene.fwhm_nm, [10, 10, 10, 20, 30], rtol=1e-9)


def test_write_geotiff_round_trip_through_gdal(tmp_path):
  hdr, _ = _aviris(2)
  scene = data.load_scene(hdr)
  cube = scene.cube[..., ::4].copy()
  cube[6:, :3] = np.nan  # a nodata corner
  wl, fwhm = scene.wavelengths_nm[::4], scene.fwhm_nm[::4]
  out = tmp_path / "out.tif"
  data.write_geotiff(out, cube, like=scene, wavelengths_nm=wl, fwhm_nm=fwhm, nodata=-9999.0)
  gdal_cube, profile, tags, _, descriptions = _gdal(out)
  assert profile["crs"] == scene.crs and profile["transform"].almost_equals(scene.transform, 1e-9)
  assert profile["nodata"] == -9999.0 and (gdal_cube[6:, :3] == -9999.0).all()
  np.testing.assert_array_equal(gdal_cube[:6], cube[:6])
  np.testing.assert_allclose([float(t["wavelength"]) for t in tags], wl, rtol=1e-12)
  assert {t["wavelength_units"] for t in tags} == {"Nanometers"}
  with rasterio.open(out) as ds:  # GDAL's standard spectral metadata (IMAGERY domain, in um)
    assert float(ds.tags(3, ns="IMAGERY")["CENTRAL_WAVELENGTH_UM"]) == pytest.approx(wl[2] / 1e3, rel=1e-9)
  assert descriptions[0] == f"band 1 ({wl[0]:.6g} nm)"
  back = data.load_scene(out)
  np.testing.assert_array_equal(back.cube, cube)  # nodata -> NaN again
  np.testing.assert_allclose(back.wavelengths_nm, wl, rtol=1e-12)
  np.testing.assert_allclose(back.fwhm_nm, fwhm, rtol=1e-12)
  assert back.nodata == -9999.0 and back.crs == scene.crs


def test_writers_keep_an_existing_file_on_failure(tmp_path):
  out = tmp_path / "a.tif"
  out.write_bytes(b"earlier result")
  raises_one_line(data.write_cube, out, np.zeros((4, 5, 3)), wavelengths_nm=[500.0, 600.0])

  def crash(tmp):
    with open(tmp, "wb") as f:
      f.write(b"half")
    raise OSError("disk full")

  for name in ("a.tif", "a.npy"):
    (tmp_path / name).write_bytes(b"earlier result")
    with pytest.raises(OSError):
      geo.atomic_write(tmp_path / name, crash)
    assert (tmp_path / name).read_bytes() == b"earlier result"
  assert sorted(os.listdir(tmp_path)) == ["a.npy", "a.tif"]  # no half-written leftovers
  data.write_cube(tmp_path / "a.npy", np.full((2, 3, 4), np.nan))
  assert np.isnan(np.load(tmp_path / "a.npy")).all()
  assert ".tif" in raises_one_line(data.write_cube, tmp_path / "a.png", np.zeros((2, 2, 2)))


@pytest.mark.parametrize("content", [b"", b"II*\x00" + bytes(range(256)) * 4, b"not a tiff at all"])
def test_garbage_tif_is_one_line(tmp_path, content):
  path = tmp_path / "garbage.tif"
  path.write_bytes(content)
  assert "garbage.tif" in raises_one_line(data.load_scene, path)


def test_geotiff_nodata_value_becomes_nan(tmp_path):
  cube = np.round(indian_pines()[:10, :12, :6]).astype(np.uint16)
  cube[:4, :5] = 0
  path = tmp_path / "nd.tif"
  with rasterio.open(path, "w", driver="GTiff", height=10, width=12, count=6, dtype="uint16", nodata=0) as ds:
    ds.write(np.moveaxis(cube, -1, 0))
  scene = data.load_scene(path)
  assert scene.nodata == 0 and scene.crs is None and scene.transform is None
  np.testing.assert_array_equal(data.nodata_pixels(scene.cube), (cube == 0).all(-1))
  filled = data.fill_nodata(scene.cube.copy(), data.nodata_pixels(scene.cube), "nd.tif")
  valid_mean = cube[4:].reshape(-1, 6).tolist() + cube[:4, 5:].reshape(-1, 6).tolist()
  np.testing.assert_allclose(filled[0, 0], np.mean(valid_mean, axis=0), rtol=1e-6)
  assert "every pixel" in raises_one_line(data.fill_nodata, scene.cube, np.ones((10, 12), bool), "x")


# Tiled inference of a real network.


def _lecun_params(model, args, seed=0):
  """Random weights as Flax's default initialisers draw them (kernels N(0, 1/fan_in), biases 0, norm
  scales 1), drawn by numpy: compiling model.init takes minutes on a busy 2-core CPU, eval_shape does not."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    if path[-1].key == "kernel":
      return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(np.prod(s.shape[:-1])), s.shape), s.dtype)
    return jnp.full(s.shape, 1.0 if path[-1].key == "scale" else 0.0, s.dtype)

  shapes = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def test_tiled_network_agrees_with_untiled_away_from_tile_borders():
  """A tiny SCDM U-Net's one-step x0 estimate on a real 64 x 64 Indian Pines crop (every 10th band),
  tiled 32 x 32 with 8-pixel blended overlaps, against the whole image in one call (same noise,
  deterministic).

  GroupNorm and self-attention see the whole tile, so no pixel matches exactly, near a tile border or
  far from it (for the trained demo-size model the difference is as large in tile centres as at
  borders; README, "Large scenes"). What tiling must give: a difference well below the output's own
  variation across pixels (misplaced or mis-weighted tiles give one as large), and no seams: the
  difference to the untiled output steps across a tile edge little more than between any two
  neighbouring rows, unlike hard-cut tiles (no overlap), where it jumps.
  """
  n, size, overlap, bands = 64, 32, 8, 20
  full = indian_pines()[:n, :n]
  y = (full - full.min()) / (full.max() - full.min())
  c = shrink(demo_indian_pines.get_config(), "unused")
  schedule = training.make_schedule(c.diffusion)
  model = models.build_model(c.model, bands)
  params = _lecun_params(model, (jnp.zeros((1, 16, 16, bands)), jnp.zeros((1,), jnp.int32),
                                 jnp.zeros((1, 16, 16, 3))))
  t = schedule.num_timesteps // 2
  ab = float(schedule.alphas_cumprod[t])
  noise = np.asarray(jax.random.normal(jax.random.key(1), (n, n, bands)), np.float32)
  x_t = np.sqrt(ab) * (y[..., ::10] - 0.5) + np.sqrt(1 - ab) * noise
  inputs = np.concatenate([x_t, 2 * y[..., [24, 15, 6]] - 1], axis=-1).astype(np.float32)

  @jax.jit
  def x0(tiles):
    x, cond = tiles[..., :bands], tiles[..., bands:]
    tt = jnp.full((tiles.shape[0],), t, jnp.int32)
    out = model.apply({"params": params}, x, tt, cond)
    return losses.to_eps_and_x0(schedule, c.diffusion.parameterisation, x, tt, out)[1]

  whole = np.asarray(x0(inputs[None]))[0]
  run = lambda ov: data.predict_tiled(lambda tiles: np.asarray(x0(tiles)), inputs, size, ov, 3)
  tiled, hard = run(overlap), run(0)

  def edges(ov):  # tile borders inside the image
    starts = {r for r, _ in data.tile_positions(n, n, size, ov)}
    return np.asarray(sorted({e for s in starts for e in (s, s + size)} - {0, n}))

  variation = np.abs(whole - whole.mean(axis=(0, 1))).mean()
  assert np.abs(tiled - whole).mean() < 0.25 * variation, (np.abs(tiled - whole).mean(), variation)

  def seam_ratio(out, ov):  # step of (out - whole) across tile edges / across all neighbouring rows
    d = out - whole
    step = lambda r: 0.5 * (np.abs(d[r] - d[r - 1]).mean() + np.abs(d[:, r] - d[:, r - 1]).mean())
    return step(edges(ov)) / step(np.arange(1, n))

  blended, cut = seam_ratio(tiled, overlap), seam_ratio(hard, 0)
  assert blended < 1.5 and cut > 2 * blended, (blended, cut)


def test_default_output_follows_the_input(tmp_path):
  hdr, img = _aviris(0)
  envi_scene = data.load_scene(hdr)
  plain = data.HyperspectralScene(np.zeros((2, 2, 3)), None, "x")
  assert geo.default_output(img, "w", like=envi_scene) == os.path.join("w", img.stem + ".tif")
  assert geo.default_output("a/scene.tif", "w", like=plain) == os.path.join("w", "scene.tif")
  assert geo.default_output("a/scene.mat", "w", like=plain) == os.path.join("w", "scene.npy")
