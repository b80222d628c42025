"""AnyBand-Diff: masking, the observed-band prior, the physical losses, and train -> eval -> repair on a
real Indian Pines crop through the command line."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from spectral_diffusion import baselines, losses, main, physics
from spectral_diffusion.anyband import masking
from spectral_diffusion.data import INDIAN_PINES_WAVELENGTHS_NM
from conftest import config_flags, indian_pines, tiny_anyband_config

WL = np.asarray(INDIAN_PINES_WAVELENGTHS_NM)


def _normalised_crop():
  cube = indian_pines()[20:60, 30:90]
  return (cube - cube.min()) / (cube.max() - cube.min())


def test_dual_stochastic_masking_statistics():
  library = physics.sensor_library(WL)
  bank = masking.sensor_bank(library, 200)
  x0 = jnp.asarray(np.stack([_normalised_crop()[:8, :8]] * 512))
  x_obs, mask = jax.jit(masking.dual_stochastic_mask, static_argnums=(3, 4))(
      jax.random.key(0), x0, bank, 0.5, (0.1, 0.7))
  mask = np.asarray(mask)
  assert mask.shape == (512, 200) and (mask.sum(1) >= 1).all()
  full = mask.sum(1) > 20                      # no sensor has more than 20 bands on this grid
  assert abs(full.mean() - 0.5) < 0.07
  # Full-grid draws keep each band with probability 1 - p_drop, p_drop ~ U[0.1, 0.7]: mean 0.6, and the
  # per-sample kept fraction spreads over [0.3, 0.9].
  kept = mask[full].mean(1)
  assert abs(kept.mean() - 0.6) < 0.03 and kept.min() < 0.4 and kept.max() > 0.8
  np.testing.assert_allclose(np.asarray(x_obs)[full], np.asarray(x0)[full], atol=1e-6)
  # A sensor draw is that sensor simulated from the truth and put on the grid (physics' own routine).
  i = int(np.flatnonzero(~full)[0])
  matches = []
  for sensor in library:
    values, sensor_mask = physics.place_on_grid(physics.simulate(np.asarray(x0[i]), sensor), sensor, 200)
    if set(np.flatnonzero(mask[i])) <= set(np.flatnonzero(sensor_mask)):
      obs = mask[i] > 0
      matches.append(np.allclose(np.asarray(x_obs[i])[..., obs], np.asarray(values)[..., obs], atol=1e-5))
  assert any(matches)


def test_uniform_drop_and_evaluation_masks():
  x0 = jnp.ones((2000, 1, 1, 200))
  _, mask = masking.uniform_drop_mask(jax.random.key(1), x0, 0.5)
  assert abs(float(mask.mean()) - 0.5) < 0.01 and float(mask.sum(1).min()) >= 1
  rng = np.random.default_rng(0)
  assert masking.random_band_mask(rng, 200, 0.3).sum() == 140
  assert masking.k_band_mask(rng, 200, 5).sum() == 5
  with pytest.raises(Exception, match="observed"):
    masking.random_band_mask(rng, 200, 1.0)


def test_conditional_mean_is_least_squares_from_the_observed_bands():
  cube = _normalised_crop().astype(np.float64)
  train, test = cube[:, :36], cube[:, 40:]
  gaussian = baselines.fit_band_gaussian(train)
  obs = np.array([5, 40, 90, 150, 190])
  mask = np.zeros(200, np.float32)
  mask[obs] = 1
  pred = np.asarray(baselines.conditional_mean(gaussian, jnp.asarray(test[None], jnp.float32),
                                               jnp.asarray(mask[None]), jitter=1e-6))[0]
  # Closed form: ordinary least squares with intercept, by numpy.
  a = np.c_[train[..., obs].reshape(-1, 5), np.ones(36 * 40)]
  coef = np.linalg.lstsq(a, train.reshape(-1, 200), rcond=None)[0]
  expected = (np.c_[test[..., obs].reshape(-1, 5), np.ones(20 * 40)] @ coef).reshape(test.shape)
  np.testing.assert_allclose(pred[..., obs], test[..., obs], atol=1e-6)
  assert np.sqrt(np.mean((pred - expected) ** 2)) < 2e-3 * np.sqrt(np.mean(expected ** 2))


def test_conditional_moments_are_the_gaussian_schur_complement():
  # A known 6-band Gaussian: the conditional variance of band m given bands o is the Schur complement
  # S_mm - S_mo S_oo^-1 S_om (numpy, float64); the regression's held-out residuals have that spread.
  rng = np.random.default_rng(0)
  root = rng.standard_normal((6, 6)) + 2.0 * np.eye(6)
  cov = root @ root.T
  pixels = rng.multivariate_normal(np.arange(6.0), cov, size=40_000)
  gaussian = baselines.fit_band_gaussian(pixels[:20_000].reshape(100, 200, 6))
  masks = np.array([[1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], np.float32)
  fit_cov = np.cov(pixels[:20_000].T, bias=True)
  held_out = pixels[20_000:].reshape(1, 100, 200, 6).astype(np.float32)
  batch = jnp.asarray(np.repeat(held_out, 3, axis=0))
  means, got = (np.asarray(a) for a in baselines.conditional_moments(gaussian, batch, jnp.asarray(masks),
                                                                       jitter=1e-6))
  for mask, sd, mean in zip(masks, got, means):
    o, m = np.flatnonzero(mask), np.flatnonzero(mask == 0)
    schur = fit_cov[np.ix_(m, m)] - fit_cov[np.ix_(m, o)] @ np.linalg.solve(fit_cov[np.ix_(o, o)],
                                                                          fit_cov[np.ix_(o, m)])
    np.testing.assert_allclose(sd[m], np.sqrt(np.diag(schur)), rtol=2e-3)
    np.testing.assert_allclose(sd[o], 1e-3 * np.asarray(gaussian.std)[o], rtol=1e-5)  # the floor
    pred = np.asarray(baselines.conditional_mean(gaussian, jnp.asarray(held_out), jnp.asarray(mask[None]),
                                                 jitter=1e-6))[0]
    np.testing.assert_allclose(mean, pred, rtol=1e-5, atol=1e-5)   # the same mean as conditional_mean
    np.testing.assert_allclose((held_out[0] - pred)[..., m].reshape(-1, len(m)).std(0), sd[m], rtol=0.03)


def test_physical_losses_against_closed_forms():
  cube = _normalised_crop()[:16, :16]
  x = jnp.asarray(cube[None])
  corr = np.asarray(losses.band_correlation(x))[0]
  np.testing.assert_allclose(corr, np.corrcoef(cube.reshape(-1, 200).T), atol=2e-4)
  assert float(losses.pixel_loss(x, jnp.asarray(corr))[0]) < 1e-8
  assert float(losses.pixel_loss(x, jnp.eye(200))[0]) > 0.1
  values = np.random.default_rng(0).uniform(-0.5, 0.8, (1, 300))
  grid = np.asarray(losses.INDEX_GRID)
  direct = np.exp(-0.5 * ((grid[None, :] - values[0][:, None]) / 0.05) ** 2).sum(0)
  np.testing.assert_allclose(np.asarray(losses.index_density(jnp.asarray(values)))[0], direct / direct.sum(),
                             rtol=1e-4, atol=1e-7)
  ndvi = physics.ndvi(jnp.asarray(cube[None]), WL)
  assert abs(float(losses.region_loss(ndvi, ndvi)[0])) < 1e-6
  assert float(losses.region_loss(ndvi * 0.5, ndvi)[0]) > 0.1
  ident = lambda r: r
  assert float(losses.image_loss(ident, x, x)[0]) == 0.0


@pytest.fixture(scope="module")
def anyband_run(tmp_path_factory, crop_file):
  workdir = tmp_path_factory.mktemp("anyband")
  argv = ["main", "--config=configs/anyband_demo_indian_pines.py", f"--workdir={workdir}"]
  argv += config_flags(tiny_anyband_config(crop_file))
  assert main.main(argv) == 0
  return argv, workdir


def test_train_and_evaluate_end_to_end(anyband_run):
  _, workdir = anyband_run
  report = json.loads((workdir / "eval" / "anyband_metrics.json").read_text())
  assert set(report["protocols"]) == {"missing_50%", "bands_5", "sensor_sentinel2a_msi"}
  for table in report["protocols"].values():
    assert set(table) == {"anyband", "anyband_no_pgs", "anyband_one_step", "anyband_no_dsm", "anyband_prior",
                          "ridge", "interp"}
    for scores in table.values():
      assert np.isfinite([scores["psnr"], scores["ssim"], scores["sam_deg"], scores["ndvi_cc"], scores["w1"],
                          scores["local_var_ratio"]]).all()
  for name in ("missing_50%_spectra.png", "missing_50%_ndvi.png", "sensor_sentinel2a_msi_error.png",
               "anyband_metrics.md"):
    assert (workdir / "eval" / name).exists()


def test_evaluator_rows_per_estimator(crop_file, tmp_path, monkeypatch):
  """With the network replaced by a stand-in (missing bands = a constant drawn from the key): anyband is
  the first draw, anyband_mean and anyband_one_step the mean of sample.num_samples draws, anyband_prior
  the model space's regression from the observed bands; every row has the distribution scores."""
  from types import SimpleNamespace

  from spectral_diffusion import metrics
  from spectral_diffusion.anyband import evaluate, model
  config = tiny_anyband_config(crop_file)
  config.physics.guidance_scale = 0.0
  config.sample.num_samples = 3
  config.eval.missing_fractions = (0.5,)
  config.eval.input_band_counts = ()
  config.eval.sensors = ()
  config.eval.ablations = ()
  d = model.load_data(config)
  calls = []

  def stand_in(bundle, cube_obs, mask, rng, config, phys, pgs=True, progress=None, num_steps=None):
    calls.append(num_steps)
    return np.where(mask > 0, cube_obs, float(jax.random.uniform(rng))).astype(np.float32)

  space = model.ModelSpace(baselines.BandGaussian(*(jnp.asarray(a) for a in d.gaussian)), 1.0)
  monkeypatch.setattr(model, "load_model",
                      lambda *a: SimpleNamespace(model=SimpleNamespace(min_size=8), space=space))
  monkeypatch.setattr(model, "repair", stand_in)
  report = evaluate.evaluate(config, str(tmp_path), d=d)
  assert calls == [2] * 3 + [1] * 3                       # three draws each of anyband and the one-step row
  (protocol, _, mask), = evaluate.protocols(config, d)
  table = report["protocols"][protocol]
  assert set(table) == {"anyband", "anyband_mean", "anyband_one_step", "anyband_prior", "ridge", "interp"}
  missing = np.flatnonzero(mask == 0)
  key = jax.random.key(config.seed + 300)
  values = [float(jax.random.uniform(k)) for k in [key] + [jax.random.fold_in(key, i) for i in (1, 2)]]
  truth = d.test[..., missing]
  for row, value in (("anyband", values[0]), ("anyband_mean", np.mean(values))):
    flat = np.full(truth.shape, value)
    assert table[row]["psnr"] == pytest.approx(metrics.mpsnr(flat, truth, 1.0), rel=1e-5)
    assert table[row]["w1"] == pytest.approx(metrics.wasserstein1(flat, truth), rel=1e-5)
  prior = np.asarray(baselines.conditional_mean(space.gaussian, jnp.asarray(d.test[None]),
                                                jnp.asarray(mask[None], jnp.float32)))[0]
  assert table["anyband_prior"]["psnr"] == pytest.approx(metrics.mpsnr(prior[..., missing], truth, 1.0),
                                                         rel=1e-5)
  for scores in table.values():
    assert {"w1", "local_var_ratio"} <= set(scores)
  assert table["anyband_mean"]["local_var_ratio"] == pytest.approx(0.0, abs=1e-12)
  assert 0.2 < table["ridge"]["local_var_ratio"] < 2.0
  assert "anyband_mean" in (tmp_path / "eval" / "anyband_metrics.md").read_text()


def _cube_with_missing(tmp_path, missing):
  cube = indian_pines()[60:76, 30:50].copy()
  cube[..., missing] = np.nan
  path = tmp_path / "scene.npy"
  np.save(path, cube)
  return path, cube


def test_repair_keeps_observed_bands_exactly(anyband_run, tmp_path, capsys):
  argv, _ = anyband_run
  missing = [3, 50, 51, 52, 120]
  path, cube = _cube_with_missing(tmp_path, missing)
  out = tmp_path / "out.npy"
  assert main.main(argv + ["--mode=repair", f"--input={path}", f"--output={out}"]) == 0
  result = np.load(out)
  observed = [b for b in range(200) if b not in missing]
  assert result.shape == cube.shape and np.isfinite(result).all()
  np.testing.assert_array_equal(result[..., observed], cube[..., observed])
  assert (tmp_path / "out.png").exists()
  # The same through an index list, and from a sensor's bands.
  out2 = tmp_path / "out2.npy"
  np.save(tmp_path / "full.npy", np.nan_to_num(cube))
  assert main.main(argv + ["--mode=repair", f"--input={tmp_path / 'full.npy'}", f"--output={out2}",
                           "--missing_bands=" + ",".join(map(str, missing))]) == 0
  np.testing.assert_array_equal(np.load(out2)[..., observed], cube[..., observed])
  sensor = physics.sensor_on_grid("landsat8_oli", WL)
  np.save(tmp_path / "l8.npy", physics.simulate(np.nan_to_num(cube), sensor))
  assert main.main(argv + ["--mode=repair", f"--input={tmp_path / 'l8.npy'}", "--sensor=landsat8_oli",
                           f"--output={tmp_path / 'l8_out.npy'}"]) == 0
  assert np.load(tmp_path / "l8_out.npy").shape == cube.shape


@pytest.mark.parametrize("case", ["all_missing", "nan_in_observed", "unknown_sensor", "band_count"])
def test_repair_bad_input_is_one_line_and_keeps_output(anyband_run, tmp_path, capsys, case):
  argv, _ = anyband_run
  cube = indian_pines()[60:76, 30:50].copy()
  extra = []
  if case == "all_missing":
    cube[:] = np.nan
  elif case == "nan_in_observed":
    cube[3, 4, 10] = np.nan
  elif case == "unknown_sensor":
    extra = ["--sensor=sentinel9"]
  else:
    cube = cube[..., :150]
  path = tmp_path / "in.npy"
  np.save(path, cube)
  out = tmp_path / "out.npy"
  np.save(out, np.zeros(3))
  assert main.main(argv + ["--mode=repair", f"--input={path}", f"--output={out}"] + extra) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error:") and "\n" not in err
  expected = {"all_missing": "every band", "nan_in_observed": "NaN", "unknown_sensor": "sentinel2a_msi",
              "band_count": "150 bands"}[case]
  assert expected in err
  np.testing.assert_array_equal(np.load(out), np.zeros(3))


@pytest.mark.parametrize("case", ["reversed", "missing"])
def test_bad_wavelengths_are_refused(tmp_path, capsys, case):
  cube = indian_pines()[20:60, 30:90]
  fields = {"cube": cube}
  if case == "reversed":
    fields["wavelengths"] = WL[::-1].copy()
  path = tmp_path / "scene.mat"
  scipy.io.savemat(path, fields)
  argv = ["main", "--config=configs/anyband_demo_indian_pines.py", f"--workdir={tmp_path / 'run'}"]
  argv += config_flags(tiny_anyband_config(path))
  assert main.main(argv) == 2
  err = capsys.readouterr().err
  assert "wavelength" in err and err.count("\n") == 1


def test_grid_without_an_rtm_emulator_gives_the_training_command(tmp_path, capsys):
  path = tmp_path / "scene.mat"
  scipy.io.savemat(path, {"cube": indian_pines()[20:60, 30:90, :120], "wavelengths": WL[:120]})
  config = tiny_anyband_config(path)
  config.data.num_bands = 120
  argv = ["main", "--config=configs/anyband_demo_indian_pines.py", f"--workdir={tmp_path / 'run'}"]
  assert main.main(argv + config_flags(config)) == 2
  assert "python -m spectral_diffusion.tools.train_rtm" in capsys.readouterr().err


def test_describe_paper_config_reports_the_papers_size(capsys):
  assert main.main(["main", "--config=configs/anyband_paviau.py", "--mode=describe"]) == 0
  out = capsys.readouterr().out
  assert "277,598,055" in out and "278 M" in out


def test_guidance_reach_measures_the_guidance_term(anyband_model, capsys):
  # tools.guidance_reach on the tiny model: scale 0 adds nothing (ratio 0, same loss, same sample);
  # a positive scale adds a term of measurable size at every step.
  from spectral_diffusion.tools import guidance_reach
  config, workdir = anyband_model
  config = config.copy_and_resolve_references()
  config.eval.input_band_counts, config.eval.sensors = (), ()
  rows = guidance_reach.measure(config, str(workdir), [0.0, 1e4], 1)
  assert [(r["protocol"], r["scale"]) for r in rows] == [("missing_50%", 0.0), ("missing_50%", 1e4)]
  off, on = rows
  assert len(off["ratios"]) == config.sample.num_steps and max(off["ratios"]) == 0.0
  # the same sampler with and without trajectory output: equal up to float32 rounding
  assert off["loss"][1] == pytest.approx(off["loss"][0], rel=1e-5)
  assert off["ndvi_cc"][1] == pytest.approx(off["ndvi_cc"][0], abs=1e-6)
  assert min(on["ratios"]) > 0.0 and np.isfinite(on["loss"]).all()
  assert "| missing_50% | 10000 |" in capsys.readouterr().out
  assert guidance_reach.main(["guidance_reach", "--config=configs/anyband_demo_indian_pines.py"]) == 2
