"""Messy real files (issue 14): every bad input of every class gives exit code 2, one line on stderr, no
traceback, and leaves every file that was there byte-identical; valid but unusual inputs succeed with
finite output of the right shape. Runs the command line in-process on the session's tiny trained models."""
import functools
import json
import os
import pathlib
import shutil
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import scipy.io

from conftest import USES_TRAINED_MODELS, config_flags, raises_one_line
from spectral_diffusion import data, pipelines
from spectral_diffusion import main as cli
from spectral_diffusion.data import INDIAN_PINES_WAVELENGTHS_NM, outputs
from spectral_diffusion.tools import steps_sweep
from spectral_diffusion.tools.benchmark import cli as benchmark

DEMO = "configs/demo_indian_pines.py"
ANYBAND = "configs/anyband_demo_indian_pines.py"
WL = np.asarray(INDIAN_PINES_WAVELENGTHS_NM)
RGB = [24, 15, 6]   # the tiny cascade's RGB bands (nearest 640/550/460 nm)


@functools.lru_cache(maxsize=None)
def _crop(path):
  """17 x 19 pixels: odd sizes whose tiles (16 x 16) are those test_cli compiles too."""
  return scipy.io.loadmat(path)["cube"][:17, :19].astype(np.float32)


def snapshot(*roots):
  """{path: bytes} of every file under roots (links followed)."""
  out = {}
  for root in roots:
    for d, _, files in os.walk(root):
      for name in files:
        p = os.path.join(d, name)
        with open(p, "rb") as f:
          out[p] = f.read()
  return out


def assert_refused(capsys, run, argv, expected, roots):
  """run(argv) exits 2 with one stderr line naming `expected`, and changes no file under roots."""
  before = snapshot(*roots)
  code = run(argv)
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
  assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
  assert snapshot(*roots) == before  # nothing replaced, nothing half-written left behind
  return lines[0]


def _envi(stem, cube, byte_order_lie=False, wavelengths=None):
  """An ENVI BIP float32 file; byte_order_lie writes big-endian data under a little-endian header."""
  cube.astype(">f4" if byte_order_lie else "<f4").tofile(stem.with_suffix(".img"))
  header = (f"ENVI\nsamples = {cube.shape[1]}\nlines = {cube.shape[0]}\nbands = {cube.shape[2]}\n"
            f"header offset = 0\ndata type = 4\ninterleave = bip\nbyte order = 0\n")
  if wavelengths is not None:
    header += "wavelength units = Nanometers\nwavelength = {" + ", ".join(f"{w:.4f}" for w in wavelengths) + "}\n"
  stem.with_suffix(".hdr").write_text(header)
  return stem.with_suffix(".hdr")


# Each bad input: (id, build(tmp, image) -> (extra argv, text the message must hold)). `image` is the
# valid input of the mode (RGB for sample, a cube with two NaN bands for repair); keep.npy is an earlier
# result that must survive.
def _bad_file_cases(bands):
  def save(tmp, name, array):
    np.save(tmp / name, array)
    return f"--input={tmp / name}"

  return [
      ("output_is_input", lambda t, x: ([save(t, "in.npy", x), f"--output={t / 'in.npy'}"], "is the input file")),
      ("output_is_input_via_symlink", lambda t, x: (
          [save(t, "in.npy", x), f"--output={_link(t / 'in.npy', t / 'link.npy')}"], "is the input file")),
      ("output_parent_is_a_file", lambda t, x: (
          [save(t, "in.npy", x), f"--output={_text(t / 'notes.txt')}/out.npy"], "is a file, not a directory")),
      ("output_is_a_directory", lambda t, x: (
          [save(t, "in.npy", x), f"--output={_dir(t / 'out.npy')}"], "is a directory")),
      ("output_unknown_type", lambda t, x: ([save(t, "in.npy", x), f"--output={_text(t / 'out.png')}"], ".tif")),
      ("tile_size_1", lambda t, x: ([save(t, "in.npy", x), "--config.sample.tile_size=1"], "sample.tile_size=1")),
      ("batch_size_0", lambda t, x: ([save(t, "in.npy", x), "--config.sample.batch_size=0"], "sample.batch_size")),
      ("all_zero", lambda t, x: ([save(t, "zero.npy", np.where(np.isnan(x), np.nan, 0.0).astype(np.float32))],
                                 "every value is 0")),
      ("boolean_image", lambda t, x: ([save(t, "mask.npy", np.nan_to_num(x) > 3000)], "True/False")),
      ("reflectance_units", lambda t, x: ([save(t, "refl.npy", x / 1e4)], "allow_out_of_range=True")),
      ("values_near_1e30", lambda t, x: ([save(t, "huge.npy", x * 1e26)], "huge.npy: values run")),
      ("envi_byte_order_mismatch", lambda t, x: (
          [f"--input={_envi(t / 'swapped', np.nan_to_num(x), True, None if bands == 3 else WL)}"]
          + (["--input_bands=0,1,2"] if bands == 3 else []), "byte order")),
      ("npz_two_candidates", lambda t, x: (
          [_npz(t / "two.npz", first=x, second=x[:5])], "choose one with --input_key=NAME")),
      ("npz_unknown_key", lambda t, x: ([_npz(t / "two.npz", image=x), "--input_key=cube"], "no variable 'cube'")),
      ("input_key_on_npy", lambda t, x: ([save(t, "in.npy", x), "--input_key=cube"], "--input_key=cube does not")),
      ("empty_array", lambda t, x: ([save(t, "empty.npy", np.zeros((0, 0, bands), np.float32))], "is empty")),
      ("directory_as_input", lambda t, x: ([f"--input={_dir(t / 'scene.npy')}"], "is a directory")),
      ("text_file_as_npy", lambda t, x: ([f"--input={_text(t / 'scene.npy')}"], "is a text file")),
      ("zero_byte_file", lambda t, x: ([f"--input={_text(t / 'scene.npy', '')}"], "is empty (0 bytes)")),
  ]


def _link(target, link):
  os.symlink(target, link)
  return link


def _text(path, text="some notes\n"):
  path.write_text(text)
  return path


def _dir(path):
  path.mkdir()
  return path


def _npz(path, **arrays):
  np.savez(path, **arrays)
  return f"--input={path}"


SAMPLE_BAD = _bad_file_cases(3) + [
    ("checkpoints_have_2_stages", lambda t, x: (
        [f"--input={_save(t / 'in.npy', x)}", f"--output={t / 'keep.npy'}", "--config.cascade.num_stages=1"],
        "2-stage cascade")),
    ("input_bands_not_numbers", lambda t, x: ([f"--input={_save(t / 'in.npy', x)}", "--input_bands=r,g,b"],
                                              "--input_bands")),
    ("nan_in_one_band_only", lambda t, x: ([f"--input={_save(t / 'nan.npy', _poke(x))}"], "row 2, col 3")),
]


def _save(path, array):
  np.save(path, array)
  return path


def _poke(x):
  x = x.copy()
  x[2, 3, 1] = np.nan
  return x


@pytest.fixture
def sample_argv(trained):
  config, workdir = trained
  return ["main", f"--config={DEMO}", *config_flags(config), f"--workdir={workdir}", "--mode=sample"]


@pytest.fixture
def repair_argv(anyband_model):
  config, workdir = anyband_model
  return ["main", f"--config={ANYBAND}", *config_flags(config), f"--workdir={workdir}",
          "--config.physics.guidance_scale=0.0", "--mode=repair"]


def _rgb(config):
  return _crop(config.data.path)[..., RGB]


def _gappy(config):
  cube = _crop(config.data.path).copy()
  cube[..., [5, 60]] = np.nan
  return cube


@pytest.mark.parametrize("case", SAMPLE_BAD, ids=[c[0] for c in SAMPLE_BAD])
def test_sample_refuses_bad_input(capsys, trained, sample_argv, tmp_path, case):
  np.save(tmp_path / "keep.npy", np.arange(3.0))
  args, expected = case[1](tmp_path, _rgb(trained[0]))
  if not any(a.startswith("--output=") for a in args):
    args.append(f"--output={tmp_path / 'keep.npy'}")
  assert_refused(capsys, cli.main, sample_argv + args, expected, [tmp_path, trained[1]])


REPAIR_BAD = _bad_file_cases(200)


@pytest.mark.parametrize("case", REPAIR_BAD, ids=[c[0] for c in REPAIR_BAD])
def test_repair_refuses_bad_input(capsys, anyband_model, repair_argv, tmp_path, case):
  np.save(tmp_path / "keep.npy", np.arange(3.0))
  args, expected = case[1](tmp_path, _gappy(anyband_model[0]))
  if not any(a.startswith("--output=") for a in args):
    args.append(f"--output={tmp_path / 'keep.npy'}")
  assert_refused(capsys, cli.main, repair_argv + args, expected, [tmp_path, anyband_model[1]])


def test_output_in_read_only_directory(capsys, trained, sample_argv, tmp_path):
  if os.geteuid() == 0:
    pytest.skip("root writes into read-only directories")
  np.save(tmp_path / "in.npy", _rgb(trained[0]))
  (tmp_path / "ro").mkdir()
  os.chmod(tmp_path / "ro", 0o555)
  try:
    assert_refused(capsys, cli.main, sample_argv + [f"--input={tmp_path / 'in.npy'}",
                                                    f"--output={tmp_path / 'ro' / 'out.npy'}"],
                   "not writable", [tmp_path])
  finally:
    os.chmod(tmp_path / "ro", 0o755)


# The other entry points: eval, describe, the benchmark and the steps sweep, on the same classes.
def _other_cases():
  def bad_config(t):
    return _text(t / "broken.py", "def get_config(:\n")

  return [
      ("eval_output_dir_is_a_file", "scdm", lambda t, w: (cli.main, [
          "main", f"--config={DEMO}", f"--workdir={_text(_dir(t / 'run') / 'eval').parent}", "--mode=eval"],
          "is a file, not a directory")),
      ("eval_batch_size_0", "scdm", lambda t, w: (cli.main, [
          "main", f"--config={DEMO}", f"--workdir={w}", "--mode=eval", "--config.sample.batch_size=0"],
          "sample.batch_size")),
      ("eval_config_syntax_error", "scdm", lambda t, w: (cli.main, [
          "main", f"--config={bad_config(t)}", f"--workdir={w}", "--mode=eval"], "broken.py, line 1")),
      ("describe_unknown_key", None, lambda t, w: (cli.main, [
          "main", f"--config={DEMO}", "--config.sample.stepz=3", "--mode=describe"], "stepz")),
      ("describe_data_path_is_a_directory", None, lambda t, w: (cli.main, [
          "main", f"--config={ANYBAND}", "--config.data.name=file", f"--config.data.path={t}",
          "--config.data.num_bands=0", "--mode=describe"], "is a directory")),
      ("benchmark_json_parent_is_a_file", None, lambda t, w: (benchmark.main, [
          "bench", f"--config={DEMO}", f"--json={_text(t / 'notes.txt')}/b.json"], "is a file, not a directory")),
      ("benchmark_batch_size_0", None, lambda t, w: (benchmark.main, [
          "bench", f"--config={DEMO}", "--config.sample.batch_size=0"], "sample.batch_size")),
      ("benchmark_config_syntax_error", None, lambda t, w: (benchmark.main, [
          "bench", f"--config={bad_config(t)}"], "broken.py, line 1")),
      ("steps_sweep_output_parent_is_a_file", "scdm", lambda t, w: (steps_sweep.main, [
          "sweep", f"--config={DEMO}", f"--workdir={w}", f"--output_dir={_text(t / 'notes.txt')}/sweep"],
          "is a file, not a directory")),
      ("steps_sweep_batch_size_0", "scdm", lambda t, w: (steps_sweep.main, [
          "sweep", f"--config={DEMO}", f"--workdir={w}", "--config.sample.batch_size=0"], "sample.batch_size")),
      ("steps_sweep_config_syntax_error", "scdm", lambda t, w: (steps_sweep.main, [
          "sweep", f"--config={bad_config(t)}", f"--workdir={w}"], "broken.py, line 1")),
  ]


OTHER_BAD = _other_cases()


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0], marks=USES_TRAINED_MODELS if c[1] else ())
                                  for c in OTHER_BAD])
def test_other_modes_refuse_bad_input(capsys, request, tmp_path, case):
  _, needs, build = case
  workdir = request.getfixturevalue("trained")[1] if needs else tmp_path / "none"
  (tmp_path / "keep.npy").write_bytes(b"an earlier result")
  run, argv, expected = build(tmp_path, workdir)
  assert_refused(capsys, run, argv, expected, [tmp_path] + ([workdir] if needs else []))


# The Python pipelines: the same checks, as errors.UserInputError with the same words.
@pytest.mark.parametrize("name, make, expected", [
    ("boolean", lambda x: x > 3000, "True/False"),
    ("all_zero", np.zeros_like, "every value is 0"),
    ("reflectance_units", lambda x: x / 1e4, "allow_out_of_range=True"),
    ("empty", lambda x: x[:0, :0], "is empty"),
])
def test_pipelines_refuse_bad_input(trained, anyband_model, name, make, expected):
  scdm = pipelines.SCDM.load(trained[1])
  assert expected in raises_one_line(scdm.sample, make(_rgb(trained[0])), _key())
  anyband = pipelines.AnyBand.load(anyband_model[1])
  cube = _gappy(anyband_model[0])
  bad = make(np.nan_to_num(cube))
  if bad.dtype != np.bool_ and bad.size:
    bad = np.where(np.isnan(cube), np.nan, bad).astype(np.float32)
  assert expected in raises_one_line(anyband.repair, bad, rng=_key())


def _key():
  import jax
  return jax.random.key(0)


# Valid but unusual inputs: they run, and the output is finite (outside nodata) and of the right shape.
def _valid_cases():
  def npy(t, x, name="in.npy"):
    np.save(t / name, x)
    return [f"--input={t / name}"], x.shape[:2], None

  def nodata(t, x):
    x = x.copy()
    x[:2, :3] = np.nan
    return npy(t, x)[0], x.shape[:2], (slice(0, 2), slice(0, 3))

  def unicode_path(t, x):
    (t / "données été").mkdir()
    return npy(t / "données été", x, "scène.npy")

  def mat73(t, x):
    with h5py.File(t / "scene.mat", "w") as f:   # as MATLAB -v7.3 stores it: axes reversed
      f.create_dataset("img", data=np.ascontiguousarray(x.T))
      f.create_dataset("mask", data=np.ones(x.shape[:2][::-1]))
    return [f"--input={t / 'scene.mat'}"], x.shape[:2], None

  def geotiff(t, x):
    from affine import Affine
    from rasterio.crs import CRS
    x = x.copy()
    x[-1, -2:] = np.nan
    like = SimpleNamespace(crs=CRS.from_epsg(32616), transform=Affine(20.0, 0.0, 5e5, 0.0, -20.0, 4.48e6))
    wl = WL[RGB] if x.shape[-1] == 3 else WL
    data.write_geotiff(t / "scene.tif", x, like=like, wavelengths_nm=wl, nodata=-9999.0)
    return [f"--input={t / 'scene.tif'}"], x.shape[:2], (slice(-1, None), slice(-2, None))

  def image_and_mask(t, x):
    np.savez(t / "pair.npz", image=x, mask=np.ones(x.shape[:2] + (x.shape[2] + 1,), np.float32))
    return [f"--input={t / 'pair.npz'}"], x.shape[:2], None

  def override(t, x):
    args, shape, nd = npy(t, x / 1e4)
    return args + ["--config.sample.allow_out_of_range=True"], shape, nd

  return [
      ("odd_size_17x19", lambda t, x: npy(t, x)),
      ("strip_1_pixel_high", lambda t, x: npy(t, x[:1, :9])),
      ("strip_1_pixel_wide", lambda t, x: npy(t, x[:9, :1])),
      ("nan_marked_nodata", nodata),
      ("unicode_path", unicode_path),
      ("mat_v7_3_with_mask", mat73),
      ("geotiff_with_nodata", geotiff),
      ("npz_image_and_larger_mask", image_and_mask),
      ("reflectance_with_override", override),
  ]


VALID = _valid_cases()


def _check_output(path, shape, bands, nodata):
  out = data.load_scene(path).cube
  assert out.shape == tuple(shape) + (bands,)
  valid = np.ones(shape, bool)
  if nodata is not None:
    valid[nodata] = False
    assert np.isnan(out[~valid]).all()
  assert np.isfinite(out[valid]).all()


@pytest.mark.parametrize("case", VALID, ids=[c[0] for c in VALID])
def test_sample_runs_on_unusual_input(capsys, trained, sample_argv, tmp_path, case):
  args, shape, nodata = case[1](tmp_path, _rgb(trained[0]))
  out = tmp_path / "out" / "cube.npy"
  code = cli.main(sample_argv + args + [f"--output={out}"])
  assert code == 0, capsys.readouterr().err
  _check_output(out, shape, 200, nodata)
  assert out.with_suffix(".png").exists() and sorted(os.listdir(out.parent)) == ["cube.npy", "cube.png"]


REPAIR_VALID = [c for c in VALID if c[0] in ("strip_1_pixel_wide", "nan_marked_nodata", "geotiff_with_nodata")]


@pytest.mark.parametrize("case", REPAIR_VALID, ids=[c[0] for c in REPAIR_VALID])
def test_repair_runs_on_unusual_input(capsys, anyband_model, repair_argv, tmp_path, case):
  args, shape, nodata = case[1](tmp_path, _gappy(anyband_model[0]))
  out = tmp_path / "repaired.npy"
  code = cli.main(repair_argv + args + [f"--output={out}"])
  assert code == 0, capsys.readouterr().err
  _check_output(out, shape, 200, nodata)


def test_checkpoint_without_value_range_still_samples(capsys, trained, sample_argv, tmp_path):
  """Checkpoints written before the training range was stored load, and the range check is skipped."""
  workdir = tmp_path / "old_run"
  shutil.copytree(trained[1], workdir)
  metas = [m for m in workdir.glob("stage_*/checkpoints/*/meta/*")   # as checkpoints._read_json picks it
           if not m.name.startswith("_") and m.name != "commit_success.txt"]
  assert metas
  for meta in metas:
    doc = json.loads(meta.read_text())
    assert doc.pop("value_range")
    meta.write_text(json.dumps(doc))
  np.save(tmp_path / "refl.npy", _rgb(trained[0]) / 1e4)
  argv = [a if not a.startswith("--workdir=") else f"--workdir={workdir}" for a in sample_argv]
  code = cli.main(argv + [f"--input={tmp_path / 'refl.npy'}", f"--output={tmp_path / 'out.npy'}"])
  assert code == 0, capsys.readouterr().err
  assert np.isfinite(np.load(tmp_path / "out.npy")).all()


def test_staged_outputs_keep_earlier_files_and_use_unique_names(tmp_path):
  first, second = tmp_path / "a.npy", tmp_path / "a.png"
  first.write_bytes(b"earlier array")
  second.write_bytes(b"earlier png")
  names = {outputs.temp_name(first) for _ in range(3)}
  assert len(names) == 3 and all(str(os.getpid()) in n and n.endswith(".npy") for n in names)
  with pytest.raises(OSError):
    with outputs.Staged() as staged:
      pathlib.Path(staged.path(first)).write_bytes(b"new array")   # complete...
      raise OSError("disk full while writing the PNG")              # ...but its partner is not
  assert first.read_bytes() == b"earlier array" and second.read_bytes() == b"earlier png"
  assert sorted(os.listdir(tmp_path)) == ["a.npy", "a.png"]
