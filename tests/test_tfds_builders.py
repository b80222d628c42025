"""The TFDS builders (tfds_builders/) on small REAL inputs made at test time from ../shared/data, and
the library reading the paper configs through them.

tfds.testing.DatasetBuilderTestCase needs TensorFlow (it subclasses tf.test.TestCase and reads splits
with tf.data), which this project does not install. The checks below are its checks, run the same way
(DownloadManager's manual_dir and download patched to serve the example directory, statistics
skipped) and read back through the array_record data source: the builder is registered, builds, has
the expected examples per split, no example in two splits, and reloads with the same metadata. Each
builder is built once per session; every protocol is run with a smaller patch size so the small real
inputs hold it (the papers' geometry is checked on the real scene sizes in test_data.py).

Stand-ins (real data, small):
  dfc2018           MUUFL Gulfport CASI subset (51 x 88, 72 bands 367-1043 nm): the 48 bands nearest 48
                    evenly spaced centres over 380-1050 nm, reflectance x 1e4 as DN, dfc2018_hsi.mat
  pavia_center      the 50 x 50 ROSIS Pavia University crop without its last band (102 bands), Pavia.mat
  pavia_university  the same crop, 103 bands, PaviaU.mat, served through the (mocked) download
  washington_dc     Santa Barbara AVIRIS (90 x 90, 224 bands): the 191 bands nearest 191 evenly spaced
                    centres over 400-2400 nm, with their centres, dc.mat
  indian_pines      Indian Pines rows 20-59, columns 30-89, Indian_pines_corrected.npy; and the real
                    default (the tensorly copy, the whole scene)
"""
import dataclasses
import hashlib
import shutil
import time
from unittest import mock

import numpy as np
import pytest
import scipy.io

from conftest import indian_pines, raises_one_line, shared_file
from spectral_diffusion import baselines, data, main, metrics
from spectral_diffusion.data import splits
from spectral_diffusion.scdm import evaluate, experiment
from spectral_diffusion.data import datasets
from spectral_diffusion.data.patches import GridSplit, RegionSplit

tfds = pytest.importorskip("tensorflow_datasets")
from tfds_builders import scene_builder  # noqa: E402  (imports TFDS)


def _nearest(wl, targets):
  return [int(np.argmin(np.abs(wl - t))) for t in targets]


def _dfc2018(folder):
  raw = scipy.io.loadmat(shared_file("scenes/gatorsense/an_hsi_image_sub_for_demo.mat"))
  wl = raw["wavelengths"].ravel()
  bands = _nearest(wl, np.linspace(380.0, 1050.0, 48))
  cube = raw["hsi_img_sub"][..., bands].astype(np.float32) * 1e4
  scipy.io.savemat(folder / "dfc2018_hsi.mat", {"hsi": cube, "wavelengths": wl[bands]})
  return cube, wl[bands]


def _rosis_crop():
  return scipy.io.loadmat(shared_file("scenes/gatorsense/paviaU_subimg.mat"))["paviaU_subimg"]


def _pavia_center(folder):
  cube = _rosis_crop()[..., :102]
  scipy.io.savemat(folder / "Pavia.mat", {"pavia": cube})
  return cube.astype(np.float32), np.linspace(430.0, 860.0, 102)


def _pavia_university(folder):
  cube = _rosis_crop()
  scipy.io.savemat(folder / "PaviaU.mat", {"paviaU": cube})
  return cube.astype(np.float32), np.linspace(430.0, 860.0, 103)


def _washington_dc(folder):
  raw = scipy.io.loadmat(shared_file("scenes/gatorsense/a_hsi_img_for_VI_demo.mat"))
  wl = raw["wavelengths"].ravel()
  bands = _nearest(wl, np.linspace(400.0, 2400.0, 191))
  assert len(set(bands)) == 191
  cube = raw["hsi_img"][..., bands].astype(np.float32)
  scipy.io.savemat(folder / "dc.mat", {"dc": cube, "wavelengths": wl[bands]})
  return cube, wl[bands]


def _indian_pines(folder):
  cube = indian_pines()[20:60, 30:90]
  np.save(folder / "Indian_pines_corrected.npy", cube)
  return cube, np.asarray(data.INDIAN_PINES_WAVELENGTHS_NM)


def _config(name, split, **kw):
  return scene_builder.SceneConfig(name="small", description=f"test protocol for {name}", split=split, **kw)


# name: (stand-in writer, small protocol, {split: examples} worked out by hand, served by download)
CASES = {
    # 51 x 88, stride 16: rows 0, 16, 32, 35; columns 0, 16, 32, 48, 64, 72 -> 24 patches; test 0, 2, 3
    # are top-row columns 0, 32, 48, which overlap no other patch.
    "dfc2018": (_dfc2018, _config("dfc2018", GridSplit(16, (0, 2, 3)), normalise="affine", offset=3693.0,
                                  scale=7410.0), {"train": 21, "test": 3}, False),
    # First 48 rows: rows 0, 16, 32; columns 0, 16, 32, 34 -> 12; test = the first column (0, 4, 8).
    "pavia_center": (_pavia_center, _config("pavia_center", GridSplit(16, (0, 4, 8), rows=48)),
                     {"train": 9, "test": 3}, False),
    # Train rows 0-33, stride 8: rows 0, 8, 16, 18 x columns 0, 8, ..., 32, 34 = 4 x 6; test rows 34-49,
    # stride 16: 1 x 4 (columns 0, 16, 32, 34).
    "pavia_university": (_pavia_university, _config("pavia_university", RegionSplit(
        0, (0, -16), (-16, None), size=16, train_stride=8, test_stride=16)), {"train": 24, "test": 4}, True),
    # 90 x 90; train rows 0-57, stride 8: 7 x 11; test rows 58-89, stride 16: 2 x 6.
    "washington_dc": (_washington_dc, _config("washington_dc", RegionSplit(
        0, (0, -32), (-32, None), size=16, train_stride=8, test_stride=16)), {"train": 77, "test": 12}, False),
    # The demo's column split scaled to the 40 x 60 crop: one example per split.
    "indian_pines": (_indian_pines, _config("indian_pines", RegionSplit(1, (0, 36), (40, 60))),
                     {"train": 1, "test": 1}, False),
}


def build_like_tfds(builder, manual_dir, served_dir):
  """download_and_prepare as DatasetBuilderTestCase runs it: the DownloadManager serves files from
  the example directories (manual_dir; download(url) -> served_dir/<last part of the url>); returns
  the urls asked for."""
  asked = []

  def download(_, url):
    asked.append(url)
    return served_dir / url.rsplit("/", 1)[-1]

  with mock.patch.multiple("tensorflow_datasets.core.download.DownloadManager", manual_dir=manual_dir,
                           download=download, download_and_extract=download):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return asked


@pytest.fixture(scope="session")
def built(tmp_path_factory):
  """Every builder built once on its stand-in: {name: (builder, cube, wavelengths, seconds, urls)}."""
  root = tmp_path_factory.mktemp("tfds")
  out = {}
  for name, (write, config, _, served) in CASES.items():
    inputs = root / "inputs" / name
    inputs.mkdir(parents=True)
    cube, wl = write(inputs)
    manual = root / "manual" / name
    manual.mkdir(parents=True)
    if not served:
      for f in inputs.iterdir():
        (manual / f.name).symlink_to(f)
    b = datasets.builder(name, root / "data", config)
    t0 = time.perf_counter()
    urls = build_like_tfds(b, manual, inputs)
    out[name] = (b, cube, wl, time.perf_counter() - t0, urls)
  return out


def _records(b, split):
  source = b.as_data_source(split)
  return [source[i] for i in range(len(source))]


def _digest(example):
  return hashlib.sha256(example["cube"].tobytes() + example["position"].tobytes()).hexdigest()


@pytest.mark.parametrize("name", list(CASES))
def test_builder_like_tfds_testcase(built, name):
  b, _, _, seconds, urls = built[name]
  expected = CASES[name][2]
  assert isinstance(b, tfds.core.DatasetBuilder) and b.name == name == b.info.name
  assert name in tfds.list_builders(with_community_datasets=False)
  assert b.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert urls == ([datasets.SOURCES[name].url] if CASES[name][3] else [])
  hashes = {}
  for split, count in expected.items():
    assert b.info.splits[split].num_examples == count
    records = _records(b, split)
    assert len(records) == count
    hashes[split] = {_digest(r) for r in records}
  assert not hashes["train"] & hashes["test"], "an example is in both splits"
  assert b.info.splits.total_num_examples == sum(expected.values())
  # Reload: a fresh builder on the same directory finds the data and its metadata.
  again = datasets.builder(name, b.data_dir_root, CASES[name][1])
  assert datasets.is_prepared(again) and dict(again.info.metadata) == dict(b.info.metadata)
  assert [_digest(r) for r in _records(again, "test")] == [_digest(r) for r in _records(b, "test")]
  assert seconds < 60


@pytest.mark.parametrize("name", list(CASES))
def test_examples_are_the_normalised_input_patches(built, name):
  b, cube, wl, _, _ = built[name]
  meta = b.info.metadata
  n = datasets.SOURCES[name].num_bands
  train_windows = [tuple(w) for w in meta["train_windows"]]
  if meta["normaliser"]["kind"] == "minmax":  # over the training patches only
    lo = min(cube[r:r + h, c:c + w].min() for r, c, h, w in train_windows)
    hi = max(cube[r:r + h, c:c + w].max() for r, c, h, w in train_windows)
    assert meta["normaliser"] == {"kind": "minmax", "lo": float(lo), "hi": float(hi)}
    forward = lambda x: (x - lo) / (hi - lo)  # noqa: E731
  else:
    assert meta["normaliser"] == {"kind": "affine", "offset": 3693.0, "scale": 7410.0}
    forward = lambda x: (x - 3693.0) / 7410.0  # noqa: E731
  np.testing.assert_allclose(meta["wavelengths_nm"], wl, rtol=1e-12)
  assert meta["scene_shape"] == list(cube.shape) and cube.shape[-1] == n
  for split in ("train", "test"):
    windows = [tuple(w) for w in meta[f"{split}_windows"]]
    for ex in _records(b, split):
      r, c = (int(v) for v in ex["position"])
      h, w = ex["cube"].shape[:2]
      assert (r, c, h, w) == windows[int(ex["index"])]
      assert ex["cube"].dtype == np.float32 and ex["cube"].shape[-1] == n
      np.testing.assert_allclose(ex["cube"], forward(cube[r:r + h, c:c + w].astype(np.float64)),
                                 rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(ex["wavelengths_nm"], wl, rtol=1e-6)
  # No test pixel is a training pixel.
  seen = np.zeros(cube.shape[:2], bool)
  for r, c, h, w in train_windows:
    seen[r:r + h, c:c + w] = True
  assert not any(seen[r:r + h, c:c + w].any() for r, c, h, w in (tuple(w) for w in meta["test_windows"]))


def test_protocol_positions_by_hand(built):
  meta = built["pavia_center"][0].info.metadata
  assert sorted(tuple(w[:2]) for w in meta["test_windows"]) == [(0, 0), (16, 0), (32, 0)]
  assert {w[1] for w in meta["train_windows"]} == {16, 32, 34}
  assert max(w[0] + w[2] for w in meta["train_windows"]) == 48  # rows 48-49 are not used
  meta = built["dfc2018"][0].info.metadata
  assert [tuple(w[:2]) for w in meta["test_windows"]] == [(0, 0), (0, 32), (0, 48)]


def test_indian_pines_default_is_the_tensorly_scene(tmp_path):
  """The real default: no manual file, so the builder takes the tensorly copy; the paper-free demo split
  read through TFDS equals the column split the demo config reads from the scene."""
  config = _pines_config(tmp_path)
  t0 = time.perf_counter()
  split = splits.load_split(config)
  assert time.perf_counter() - t0 < 30
  config.data.source = "scene"
  reference = splits.load_split(config)
  assert split.train.shape == (1, 145, 72, 200) and split.test.shape == (1, 145, 65, 200)
  assert split.normaliser == reference.normaliser
  np.testing.assert_array_equal(split.train[0], reference.train)
  np.testing.assert_array_equal(split.test[0], reference.test)
  np.testing.assert_array_equal(split.wavelengths_nm, reference.wavelengths_nm)


def _pines_config(tmp_path):
  from configs import demo_indian_pines
  config = demo_indian_pines.get_config()
  config.data.source = "tfds"
  config.data.tfds_dir = str(tmp_path / "tfds")
  config.data.manual_dir = str(tmp_path / "manual")
  return config


@pytest.fixture
def small_protocols(built, monkeypatch):
  """datasets.builder gives the small protocols, in the session's build directory."""
  original = datasets.builder
  root = built["dfc2018"][0].data_dir_root

  def small(name, data_dir="", config=None):
    return original(name, root, CASES[name][1])

  monkeypatch.setattr(datasets, "builder", small)
  return root


def test_paper_config_reads_through_the_builder(small_protocols, built):
  from configs import scdm_dfc2018
  config = scdm_dfc2018.get_config()
  exp = experiment.load_experiment(config)
  assert exp.train.shape == (21, 16, 16, 48) and exp.test.shape == (3, 16, 16, 48)
  assert exp.normaliser == data.Affine(3693.0, 7410.0) and exp.rgb_bands == (22, 11, 4)
  np.testing.assert_allclose(exp.wavelengths_nm, built["dfc2018"][2])
  config.data.normalise = "minmax"
  msg = raises_one_line(experiment.load_experiment, config)
  assert "affine" in msg and "data.normalise=minmax" in msg
  config = scdm_dfc2018.get_config()
  config.data.path = "/somewhere/houston.npy"
  assert "data.source=scene" in raises_one_line(experiment.load_experiment, config)


@pytest.mark.parametrize("config_name, expected", [
    ("scdm_dfc2018", ["Data Fusion Contest", "20170218_UH_CASI_S4_NAD83.tif"]),
    ("anyband_wdc", ["MultiSpec", "dc.tif"]),
])
def test_missing_data_names_file_source_and_place(capsys, tmp_path, config_name, expected):
  manual = tmp_path / "manual"
  code = main.main(["main", f"--config=configs/{config_name}.py", f"--workdir={tmp_path}/w",
                    f"--config.data.tfds_dir={tmp_path}/tfds", f"--config.data.manual_dir={manual}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1
  assert all(e in err[0] for e in expected + [str(manual)])
  assert not (tmp_path / "tfds").exists()  # nothing built, nothing left behind


def test_failed_download_names_the_manual_way(tmp_path):
  b = datasets.builder("pavia_university", tmp_path / "tfds")

  def offline(_, url):
    raise ConnectionError(f"cannot reach {url}")

  with mock.patch("tensorflow_datasets.core.download.DownloadManager.download", offline):
    msg = raises_one_line(datasets.prepare, b, tmp_path / "manual")
  assert "ConnectionError" in msg and "PaviaU.mat" in msg and str(tmp_path / "manual") in msg
  assert not datasets.is_prepared(b)


def test_scene_with_wrong_band_count_is_refused(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  scipy.io.savemat(manual / "PaviaU.mat", {"paviaU": _rosis_crop()[..., :100]})
  b = datasets.builder("pavia_university", tmp_path / "tfds", CASES["pavia_university"][1])
  msg = raises_one_line(datasets.prepare, b, manual)
  assert "100 bands" in msg and "103" in msg


def test_training_batches_from_patch_stacks(small_protocols):
  """Pavia Centre's protocol (real ROSIS patches): the regression prior is fit on every training pixel
  and training batches are crops of the training patches."""
  from configs import scdm_pavia_center
  from spectral_diffusion.scdm import train
  config = scdm_pavia_center.get_config()
  config.diffusion.prior = ("ridge_poly2", "ridge")
  config.data.crop_size = 8
  exp = experiment.load_experiment(config)
  assert exp.train.shape == (9, 16, 16, 102) and exp.test.shape == (3, 16, 16, 102)
  stage = exp.stages[0]
  space = experiment.fit_stage_space(config, stage, exp.train)
  pixels = exp.train.reshape(-1, 102)
  expected = baselines.fit_ridge(pixels[:, list(stage.in_bands)], pixels[:, list(stage.out_bands)],
                                 alpha=config.eval.ridge_alpha, degree=2)
  np.testing.assert_allclose(space.prior.coef, expected.coef)
  cube = train.stage_training_cube(exp.train, stage, space)
  assert cube.shape == (9, 16, 16, 3 + 2 * len(stage.out_bands))
  batch = train.make_batch(cube, stage, space, config.train, config.data, config.seed, 0)
  assert batch["x0"].shape == (4, 8, 8, len(stage.out_bands))


def test_scdm_evaluation_averages_over_test_patches(trained, tmp_path):
  """The tiny trained cascade evaluated on its test columns cut into two 20 x 20 patches: every metric
  is the mean of the per-patch metrics (checked on the ridge baseline, recomputed here)."""
  config, workdir = trained
  run = tmp_path / "run"
  shutil.copytree(workdir, run, ignore=shutil.ignore_patterns("eval"))
  exp = experiment.load_experiment(config)
  assert exp.test.shape == (40, 20, 200)
  stacked = dataclasses.replace(exp, test=np.stack([exp.test[:20], exp.test[20:]]))
  scores = evaluate.evaluate(config, str(run), exp=stacked)
  rgb = list(exp.rgb_bands)
  model = baselines.fit_ridge(exp.train[..., rgb], exp.train, alpha=config.eval.ridge_alpha)
  per_patch = []
  for t in stacked.test:
    pred = baselines.predict_ridge(model, t[..., rgb])
    pred[..., rgb] = t[..., rgb]   # every method returns the RGB input bands as given
    per_patch.append(metrics.all_metrics(pred, t, 1.0))
  for key in ("rmse", "sam", "mpsnr", "mssim", "ergas"):
    assert scores["ridge"][key] == pytest.approx(np.mean([m[key] for m in per_patch]), rel=1e-9)
  assert np.isfinite(scores["scdm"]["mpsnr"]) and "scdm_mean" in scores
  assert "2 patches of 20x20 pixels" in (run / "eval" / "metrics.md").read_text()
  assert (run / "eval" / "false_colour.png").exists()


def test_anyband_evaluation_averages_over_test_patches(small_protocols, tmp_path, monkeypatch):
  """AnyBand's Pavia University protocol read through the builder (real ROSIS patches); the network is
  replaced by a stand-in (missing bands = 0.5) so the evaluation itself is what is checked: protocols
  run patch by patch and every metric is the mean over the 4 test patches."""
  from types import SimpleNamespace

  from configs import anyband_paviau
  from spectral_diffusion.anyband import evaluate as anyband_eval
  from spectral_diffusion.anyband import model as anyband
  config = anyband_paviau.get_config()
  config.physics.guidance_scale = 0.0
  config.sample.num_steps = 1
  config.eval.missing_fractions = (0.5,)
  config.eval.input_band_counts = ()
  config.eval.sensors = ()
  config.eval.ablations = ()
  d = anyband.load_data(config)
  assert d.train.shape == (24, 16, 16, 103) and d.test.shape == (4, 16, 16, 103)
  np.testing.assert_allclose(d.wavelengths_nm, np.linspace(430.0, 860.0, 103))
  calls = []

  def stand_in(bundle, cube_obs, mask, rng, config, phys, pgs=True, progress=None, num_steps=None):
    calls.append(cube_obs.shape)
    return np.where(mask > 0, cube_obs, 0.5).astype(np.float32)

  import jax.numpy as jnp
  space = anyband.ModelSpace(baselines.BandGaussian(*(jnp.asarray(a) for a in d.gaussian)), 1.0)
  monkeypatch.setattr(anyband, "load_model",
                      lambda *a: SimpleNamespace(model=SimpleNamespace(min_size=8), space=space))
  monkeypatch.setattr(anyband, "repair", stand_in)
  report = anyband_eval.evaluate(config, str(tmp_path), d=d)
  assert calls == [(16, 16, 103)] * 4
  (protocol, _, mask), = anyband_eval.protocols(config, d)
  missing = np.flatnonzero(mask == 0)
  psnr = [metrics.mpsnr(np.full((16, 16, len(missing)), 0.5), t[..., missing], 1.0) for t in d.test]
  assert report["protocols"][protocol]["anyband"]["psnr"] == pytest.approx(np.mean(psnr), rel=1e-9)
  prior = np.asarray(baselines.conditional_mean(space.gaussian, jnp.asarray(d.test),
                                                jnp.broadcast_to(jnp.asarray(mask, jnp.float32), (4, 103))))
  psnr = [metrics.mpsnr(p[..., missing], t[..., missing], 1.0) for p, t in zip(prior, d.test)]
  assert report["protocols"][protocol]["anyband_prior"]["psnr"] == pytest.approx(np.mean(psnr), rel=1e-5)
  assert "4 patches of 16x16" in (tmp_path / "eval" / "anyband_metrics.md").read_text()
  assert (tmp_path / "eval" / f"{protocol}_ndvi.png").exists()


def test_unknown_dataset_name():
  msg = raises_one_line(datasets.builder, "houston")
  assert "dfc2018" in msg and "data.source=scene" in msg
