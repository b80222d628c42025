"""The command line: each bad input gives a one-line error and exit code 2, and destroys nothing."""
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import scipy.io
from affine import Affine
from rasterio.crs import CRS

from conftest import config_flags, indian_pines
from spectral_diffusion import data, physics
from spectral_diffusion import main as cli
from spectral_diffusion.data import INDIAN_PINES_WAVELENGTHS_NM

DEMO = "configs/demo_indian_pines.py"


def run(capsys, *args):
  code = cli.main(["main", *args])
  err = capsys.readouterr().err.strip().splitlines()
  return code, err


def overrides(config):
  """The tiny config as --config.* flags, so the CLI runs the same cascade the fixture trained."""
  flat = {
      "data.name": config.data.name, "data.path": config.data.path,
      "data.train_cols": config.data.train_cols, "data.test_cols": config.data.test_cols,
      "data.crop_size": config.data.crop_size, "model.base_channels": config.model.base_channels,
      "model.channel_mults": config.model.channel_mults, "model.num_groups": config.model.num_groups,
      "model.time_embed_dim": config.model.time_embed_dim, "model.attn_levels": config.model.attn_levels,
      "sample.num_steps": config.sample.num_steps, "sample.tile_size": config.sample.tile_size,
      "sample.tile_overlap": config.sample.tile_overlap, "sample.batch_size": config.sample.batch_size,
      "sample.icmg_scale": config.sample.icmg_scale, "train.num_steps": config.train.num_steps,
      "train.batch_size": config.train.batch_size,
  }
  return [f"--config.{k}={v}" for k, v in flat.items()]


def test_unknown_config_key(capsys):
  code, err = run(capsys, f"--config={DEMO}", "--config.train.learning_rat=1", "--mode=describe")
  assert code == 2 and len(err) == 1 and "learning_rat" in err[0]


def test_missing_config_file(capsys):
  code, err = run(capsys, "--config=configs/no_such.py", "--mode=describe")
  assert code == 2 and len(err) == 1 and "no_such.py" in err[0]


def test_missing_data_file(capsys, tmp_path):
  code, err = run(capsys, f"--config={DEMO}", "--config.data.name=file",
                  f"--config.data.path={tmp_path}/absent.npy", f"--workdir={tmp_path}/w")
  assert code == 2 and len(err) == 1 and "absent.npy" in err[0]


def test_paper_config_without_data_says_where_to_get_it(capsys, tmp_path):
  code, err = run(capsys, "--config=configs/scdm_dfc2018.py", f"--workdir={tmp_path}/w")
  assert code == 2 and len(err) == 1 and "Data Fusion Contest" in err[0]


def test_nan_pixels_in_training_data(capsys, tmp_path, crop_file):
  cube = scipy.io.loadmat(crop_file)["cube"].astype(np.float32)
  cube[3, 7, 0] = np.nan
  np.save(tmp_path / "nan.npy", cube)
  code, err = run(capsys, f"--config={DEMO}", "--config.data.name=file", f"--config.data.path={tmp_path}/nan.npy",
                  "--config.data.rgb_bands=(24,15,6)", f"--workdir={tmp_path}/w")
  assert code == 2 and len(err) == 1 and "NaN" in err[0] and "row 3, col 7" in err[0]


@pytest.mark.parametrize("override, expected", [
    ("--config.sample.sampler=euler", "sample.sampler"),
    ("--config.sample.batch_size=0", "sample.batch_size"),
    ("--config.sample.pdt_target=x", "sample.pdt_target"),
    ("--config.sample.estimator=median", "sample.estimator"),
    ("--config.train.optimizer=sgd", "train.optimizer"),
    ("--config.train.batch_size=0", "train.batch_size"),
    ("--config.data.source=web", "data.source"),
    ("--config.diffusion.parameterisation=score", "diffusion.parameterisation"),
    ("--config.diffusion.prior=('lasso',)", "diffusion.prior"),
    ("--config.model.dtype=float16", "model.dtype"),
    ("--config.data.crop_size=18", "data.crop_size"),
    ("--config.cascade.num_stages=0", "cascade.num_stages"),
])
def test_settings_are_checked_before_any_work(capsys, tmp_path, override, expected):
  workdir = tmp_path / "w"
  code, err = run(capsys, f"--config={DEMO}", override, f"--workdir={workdir}")  # train: data not read yet
  assert code == 2 and len(err) == 1 and expected in err[0], err
  assert not workdir.exists()


def test_mode_and_method_must_match(capsys, tmp_path):
  code, err = run(capsys, f"--config={DEMO}", "--mode=repair", f"--input={tmp_path}/x.npy")
  assert code == 2 and len(err) == 1 and "--mode=sample" in err[0] and "anyband" in err[0]
  code, err = run(capsys, "--config=configs/anyband_demo_indian_pines.py", "--mode=sample",
                  f"--input={tmp_path}/x.npy")
  assert code == 2 and len(err) == 1 and "--mode=repair" in err[0]
  code, err = run(capsys, f"--config={DEMO}", "--config.method=anyband", "--mode=describe")
  assert code == 2 and len(err) == 1 and "get_config('anyband')" in err[0]
  code, err = run(capsys, f"--config={DEMO}", "--mode=sample", f"--input={tmp_path}/x.npy", "--input_bands=r,g,b")
  assert code == 2 and len(err) == 1 and "--input_bands" in err[0]


def test_describe_paper_config(capsys):
  assert cli.main(["main", "--config=configs/scdm_dfc2018.py", "--mode=describe"]) == 0
  out = capsys.readouterr().out
  assert "12 -> 48 bands" in out and "77,557,168 parameters" in out


def test_sample_writes_full_cube(capsys, trained, tmp_path):
  config, workdir = trained
  cube = scipy.io.loadmat(config.data.path)["cube"].astype(np.float32)
  np.save(tmp_path / "rgb.npy", cube[:20, :24][..., [24, 15, 6]])
  out = tmp_path / "out" / "cube.npy"
  code, err = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample",
                  f"--input={tmp_path}/rgb.npy", f"--output={out}")
  assert code == 0, err
  result = np.load(out)
  assert result.shape == (20, 24, 200) and np.isfinite(result).all()
  np.testing.assert_array_equal(result[..., [24, 15, 6]], cube[:20, :24][..., [24, 15, 6]])  # RGB as given
  assert (tmp_path / "out" / "cube.png").stat().st_size > 5_000
  # A full cube as input takes the trained RGB bands itself.
  np.save(tmp_path / "full.npy", cube[:20, :24])
  code, _ = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample",
                f"--input={tmp_path}/full.npy", f"--output={tmp_path}/full_out.npy")
  assert code == 0 and np.load(tmp_path / "full_out.npy").shape == (20, 24, 200)
  # The paper's printed PDT on the predicted noise (the default is the official code's, on x_t), DDIM eta 1.
  code, _ = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample",
                "--config.sample.pdt_target=eps", "--config.sample.eta=1.0",
                f"--input={tmp_path}/rgb.npy", f"--output={tmp_path}/eps_out.npy")
  assert code == 0 and np.isfinite(np.load(tmp_path / "eps_out.npy")).all()


@pytest.mark.parametrize("case", ["wrong_bands", "nan", "missing"])  # small images run: test_messy_inputs
def test_sample_bad_input_keeps_existing_output(capsys, trained, tmp_path, case):
  config, workdir = trained
  out = tmp_path / "result.npy"
  np.save(out, np.arange(3.0))  # an earlier result that must survive a failed run
  image = np.random.default_rng(0).uniform(2000, 6000, (20, 24, 3)).astype(np.float32)
  if case == "wrong_bands":
    image = np.concatenate([image, image[..., :2]], axis=-1)   # 5 bands
  elif case == "nan":
    image[0, 0, 1] = np.nan
  if case != "missing":
    np.save(tmp_path / "in.npy", image)
  code, err = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample",
                  f"--input={tmp_path}/in.npy", f"--output={out}")
  assert code == 2 and len(err) == 1, err
  expected = {"wrong_bands": "5 bands", "nan": "NaN", "missing": "in.npy"}
  assert expected[case] in err[0]
  np.testing.assert_array_equal(np.load(out), np.arange(3.0))


def test_mismatched_checkpoint(capsys, trained):
  config, workdir = trained
  args = [a for a in overrides(config) if "base_channels" not in a]
  code, err = run(capsys, f"--config={DEMO}", *args, "--config.model.base_channels=16",
                  f"--workdir={workdir}", "--mode=eval")
  assert code == 2 and len(err) == 1 and "base_channels" in err[0]


def test_corrupt_checkpoint_is_reported_and_left_in_place(capsys, trained, tmp_path):
  config, workdir = trained
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  ckpt = copy / "stage_0" / "checkpoints"
  step_dir = ckpt / sorted(os.listdir(ckpt))[-1] / "state"
  corrupted = 0
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 100:
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
        corrupted += 1
  assert corrupted
  before = sorted(p for p, _, _ in os.walk(copy))
  code, err = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={copy}", "--mode=eval")
  assert code == 2 and len(err) == 1 and "corrupt" in err[0]
  assert sorted(p for p, _, _ in os.walk(copy)) == before


# Files from the real world: GeoTIFF and ENVI in, GeoTIFF out, nodata, bad files.

WL = np.asarray(INDIAN_PINES_WAVELENGTHS_NM)
UTM = {"crs": CRS.from_epsg(32616), "transform": Affine(20.0, 0.0, 500000.0, 0.0, -20.0, 4480000.0)}


def _geotiff(path, cube, wavelengths=None, nodata=None):
  """A georeferenced GeoTIFF as a user would bring it (UTM 16N, 20 m pixels)."""
  data.write_geotiff(path, cube, like=SimpleNamespace(**UTM), wavelengths_nm=wavelengths, nodata=nodata)
  return path


def _read_tif(path):
  with rasterio.open(path) as ds:
    return np.moveaxis(ds.read(), 0, -1), ds.profile, [float(ds.tags(i)["wavelength"])
                                                       for i in range(1, ds.count + 1)]


def test_sample_geotiff_in_geotiff_out_with_nodata(capsys, trained, tmp_path):
  config, workdir = trained
  cube = scipy.io.loadmat(config.data.path)["cube"][:20, :24].astype(np.float32)
  cube[:3, :4] = np.nan  # a nodata corner, written as -9999
  src = _geotiff(tmp_path / "scene.tif", cube, WL, nodata=-9999.0)
  out = tmp_path / "out" / "cube.tif"
  code, err = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample",
                  f"--input={src}", f"--output={out}")
  assert code == 0, err
  result, profile, wavelengths = _read_tif(out)
  assert profile["crs"] == UTM["crs"] and profile["transform"] == UTM["transform"]
  assert profile["nodata"] == -9999.0 and result.shape == (20, 24, 200)
  assert (result[:3, :4] == -9999.0).all()
  valid = np.ones((20, 24), bool)
  valid[:3, :4] = False
  assert np.isfinite(result[valid]).all() and (result[valid] != -9999.0).all()
  np.testing.assert_allclose(wavelengths, WL)
  assert (tmp_path / "out" / "cube.png").exists()
  # The RGB bands were found by wavelength: the same as the trained band indices of a .npy cube.
  np.save(tmp_path / "scene.npy", cube)
  code, _ = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample",
                f"--input={tmp_path / 'scene.npy'}", f"--output={tmp_path / 'cube.npy'}")
  assert code == 0
  from_npy = np.load(tmp_path / "cube.npy")
  assert np.isnan(from_npy[:3, :4]).all()
  np.testing.assert_allclose(from_npy[valid], result[valid], rtol=1e-6)


def test_sample_geotiff_without_wavelengths_asks_for_them(capsys, trained, tmp_path):
  config, workdir = trained
  cube = scipy.io.loadmat(config.data.path)["cube"][:20, :24].astype(np.float32)
  src = _geotiff(tmp_path / "bare.tif", cube)
  out = tmp_path / "kept.npy"
  np.save(out, np.arange(3.0))
  args = [f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample", f"--input={src}",
          f"--output={out}"]
  code, err = run(capsys, *args)
  assert code == 2 and len(err) == 1 and "--wavelengths=" in err[0] and "--sensor=" in err[0], err
  np.testing.assert_array_equal(np.load(out), np.arange(3.0))
  code, err = run(capsys, *args, "--wavelengths=" + ",".join(f"{w:.2f}" for w in WL))
  assert code == 0, err
  assert np.load(out).shape == (20, 24, 200)
  # A sensor's bands: the RGB bands are those of its band centres nearest the cascade's RGB bands.
  s2 = physics.sensor_on_grid("sentinel2a_msi", WL)
  src = _geotiff(tmp_path / "s2.tif", np.asarray(physics.simulate(cube, s2), np.float32))
  code, err = run(capsys, *args[:-2], f"--input={src}", "--sensor=sentinel2a_msi",
                  f"--output={tmp_path / 's2.npy'}")
  assert code == 0, err
  assert np.load(tmp_path / "s2.npy").shape == (20, 24, 200)


def _envi(path, cube, drop=()):
  cube.astype("<f4").tofile(path.with_suffix(".img"))  # BIP
  fields = {"samples": cube.shape[1], "lines": cube.shape[0], "bands": cube.shape[2], "header offset": 0,
            "data type": 4, "interleave": "bip", "byte order": 0}
  path.with_suffix(".hdr").write_text("ENVI\n" + "".join(f"{k} = {v}\n" for k, v in fields.items()
                                                           if k not in drop))
  return path.with_suffix(".img")


@pytest.mark.parametrize("case", ["truncated_img", "garbage_tif", "header_missing_keys", "wrong_output_type"])
def test_unreadable_inputs_exit_2_and_keep_output(capsys, trained, tmp_path, case):
  config, workdir = trained
  cube = scipy.io.loadmat(config.data.path)["cube"][:20, :24, [24, 15, 6]].astype(np.float32)
  out = tmp_path / "result.npy"
  np.save(out, np.arange(3.0))
  if case == "truncated_img":
    src = _envi(tmp_path / "scene", cube)
    with open(src, "r+b") as f:
      f.truncate(100)
  elif case == "garbage_tif":
    src = tmp_path / "scene.tif"
    src.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
  elif case == "header_missing_keys":
    src = _envi(tmp_path / "scene", cube, drop=("lines", "data type"))
  else:
    src = _envi(tmp_path / "scene", cube)
    out = tmp_path / "result.png"
    out.write_bytes(b"earlier")
  code, err = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample",
                  f"--input={src}", f"--output={out}")
  assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
  expected = {"truncated_img": "truncated", "garbage_tif": "scene.tif", "header_missing_keys": "'lines'",
              "wrong_output_type": ".tif"}[case]
  assert expected in err[0]
  if case == "wrong_output_type":
    assert out.read_bytes() == b"earlier"
  else:
    np.testing.assert_array_equal(np.load(out), np.arange(3.0))
  # A header that is fine reads: the same ENVI file with all its keys runs.
  if case == "header_missing_keys":
    src = _envi(tmp_path / "scene", cube)
    code, err = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample",
                    f"--input={src}", f"--output={out}")
    assert code == 0 and np.load(out).shape == (20, 24, 200), err


@pytest.fixture
def repair_argv(anyband_model):
  """The command line that repairs with the shared tiny AnyBand model (without physics guidance)."""
  config, workdir = anyband_model
  return ["main", "--config=configs/anyband_demo_indian_pines.py", f"--workdir={workdir}",
          *config_flags(config), "--config.physics.guidance_scale=0.0", "--mode=repair"]


def test_repair_geotiff_keeps_georeferencing_nodata_and_observed_bands(repair_argv, capsys, tmp_path):
  argv = repair_argv
  cube = indian_pines()[60:76, 30:50].copy()
  missing = [3, 50, 51, 52, 120]
  cube[..., missing] = np.nan
  cube[:2, :3] = np.nan  # nodata pixels
  src = _geotiff(tmp_path / "scene.tif", cube, WL, nodata=-9999.0)
  out = tmp_path / "repaired.tif"
  assert cli.main(argv + [f"--input={src}", f"--output={out}"]) == 0, capsys.readouterr().err
  result, profile, wavelengths = _read_tif(out)
  assert profile["crs"] == UTM["crs"] and profile["transform"] == UTM["transform"]
  np.testing.assert_allclose(wavelengths, WL)
  assert profile["nodata"] == -9999.0 and (result[:2, :3] == -9999.0).all()
  valid = ~data.nodata_pixels(cube)
  observed = [b for b in range(200) if b not in missing]
  np.testing.assert_array_equal(result[valid][:, observed], cube[valid][:, observed])
  assert np.isfinite(result[valid]).all() and (result[valid] != -9999.0).all()
  back = data.load_scene(out)  # our reader: nodata -> NaN
  assert np.isnan(back.cube[:2, :3]).all() and back.crs == UTM["crs"]


def test_repair_checks_the_wavelength_grid(repair_argv, capsys, tmp_path):
  argv = repair_argv
  cube = indian_pines()[60:76, 30:50].copy()
  cube[..., [10, 11]] = np.nan
  src = _geotiff(tmp_path / "bare.tif", cube)  # no wavelength metadata
  out = tmp_path / "out.tif"
  assert cli.main(argv + [f"--input={src}", f"--output={out}"]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "--wavelengths=" in err and "--sensor=" in err
  assert not out.exists()
  shifted = ",".join(f"{w + 5:.2f}" for w in WL)
  assert cli.main(argv + [f"--input={src}", f"--output={out}", f"--wavelengths={shifted}"]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "nm apart" in err and not out.exists()
  given = ",".join(f"{w:.3f}" for w in WL)
  assert cli.main(argv + [f"--input={src}", f"--output={out}", f"--wavelengths={given}"]) == 0
  assert data.load_scene(out).cube.shape == (16, 20, 200)
  # A sensor's bands need no wavelengths: the sensor names them.
  l8 = physics.simulate(indian_pines()[60:76, 30:50], physics.sensor_on_grid("landsat8_oli", WL))
  src = _geotiff(tmp_path / "l8.tif", np.asarray(l8, np.float32))
  assert cli.main(argv + [f"--input={src}", "--sensor=landsat8_oli", f"--output={tmp_path / 'l8.npy'}"]) == 0
  assert np.load(tmp_path / "l8.npy").shape == (16, 20, 200)
