"""The Python API: pipelines on arrays, the compiled cascade program, and checkpoints without optimizers."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from conftest import raises_one_line
from spectral_diffusion import checkpoints, physics, pipelines, sampling
from spectral_diffusion.scdm import cascade, experiment
from spectral_diffusion import main as cli
from spectral_diffusion.errors import UserInputError


@pytest.fixture(scope="module")
def rgb(trained):
  """A raw RGB crop of the real scene (24 x 21: two tile rows, odd width) taken at the trained RGB bands."""
  config, workdir = trained
  cube = scipy.io.loadmat(config.data.path)["cube"].astype(np.float32)
  meta = checkpoints.load_meta(cascade.stage_dir(workdir, 0))
  return cube[4:28, 9:30][..., meta["rgb_bands"]]


@pytest.fixture(scope="module")
def scdm(trained):
  return pipelines.SCDM.load(trained[1])


@pytest.fixture(scope="module")
def compiled(trained):
  return pipelines.SCDM.load(trained[1], program="compiled")


def test_scdm_python_program_is_the_command_line(trained, rgb, tmp_path, capsys):
  config, workdir = trained
  np.save(tmp_path / "rgb.npy", rgb)
  flags = [f"--config.{s}.{k}={tuple(v) if isinstance(v, (list, tuple)) else v}"
           for s in ("data", "model", "train", "sample") for k, v in getattr(config, s).items()]
  code = cli.main(["main", "--config=configs/demo_indian_pines.py", *flags, f"--workdir={workdir}",
                   "--mode=sample", f"--input={tmp_path / 'rgb.npy'}", f"--output={tmp_path / 'out.npy'}"])
  assert code == 0, capsys.readouterr().err
  scdm = pipelines.SCDM.load(workdir, program="python")   # the stored config, as a user loads it
  cube = scdm.sample(rgb, jax.random.key(config.seed))
  np.testing.assert_array_equal(cube, np.load(tmp_path / "out.npy"))
  assert cube.shape == (24, 21, 200) and cube.dtype == np.float32
  assert scdm.rgb_bands == experiment.rgb_bands(config.data, scdm.wavelengths, 200) and len(scdm.wavelengths) == 200


def test_sample_shapes_batches_and_posterior_mean(compiled, rgb):
  key = jax.random.key(7)
  one = compiled.sample(rgb, key)
  three = compiled.sample(rgb, key, num_samples=3)
  assert one.shape == (24, 21, 200) and three.shape == (3, 24, 21, 200)
  np.testing.assert_allclose(three[1], compiled.sample(rgb, jax.random.fold_in(key, 1)), rtol=1e-6, atol=1e-3)
  assert np.std(three, axis=0).mean() > 0            # samples differ
  np.testing.assert_allclose(compiled.posterior_mean(rgb, key, num_samples=3), three.mean(0), rtol=1e-6)
  batch = compiled.sample(np.stack([rgb, rgb[::-1]]), key)
  assert batch.shape == (2, 24, 21, 200)
  np.testing.assert_array_equal(batch[1][..., list(compiled.rgb_bands)], rgb[::-1])
  np.testing.assert_allclose(batch[1], compiled.sample(rgb[::-1], jax.random.fold_in(key, 1)), rtol=1e-6,
                             atol=1e-3)
  # JAX arrays in, too; the image stays where it is.
  np.testing.assert_allclose(compiled.sample(jnp.asarray(rgb), key), one, rtol=1e-6, atol=1e-3)


def test_scdm_returns_the_rgb_bands_exactly(scdm, compiled, rgb):
  """The output bands the RGB channels are hold the input bit for bit (both programs, both estimators;
  batches, JAX input and sample_fn: the next tests)."""
  key = jax.random.key(2)
  bands = list(scdm.rgb_bands)
  for pipeline in (scdm, compiled):
    out = pipeline.sample(rgb, key)
    np.testing.assert_array_equal(out[..., bands], rgb)
    inferred = np.setdiff1d(np.arange(200), bands)
    assert np.abs(out[..., inferred]).min() > 0 and out.dtype == np.float32
  mean = compiled.sample(rgb, key, estimator="mean", num_samples=2)
  np.testing.assert_array_equal(mean[..., bands], rgb)


def test_scdm_mean_estimator_from_the_command_line_and_python(trained, rgb, tmp_path, capsys):
  config, workdir = trained
  np.save(tmp_path / "rgb.npy", rgb)
  flags = [f"--config.{s}.{k}={tuple(v) if isinstance(v, (list, tuple)) else v}"
           for s in ("data", "model", "train", "sample") for k, v in getattr(config, s).items()
           if k != "estimator"]
  code = cli.main(["main", "--config=configs/demo_indian_pines.py", *flags, f"--workdir={workdir}",
                   "--mode=sample", "--config.sample.estimator=mean", f"--input={tmp_path / 'rgb.npy'}",
                   f"--output={tmp_path / 'mean.npy'}"])
  assert code == 0, capsys.readouterr().err
  assert "the mean of 2 samples" in capsys.readouterr().out   # sample.num_samples of the tiny config
  key = jax.random.key(config.seed)
  scdm = pipelines.SCDM.load(workdir, program="python")
  mean = scdm.sample(rgb, key, estimator="mean")              # default: sample.num_samples draws
  np.testing.assert_array_equal(mean, np.load(tmp_path / "mean.npy"))
  np.testing.assert_allclose(mean, scdm.sample(rgb, key, num_samples=2).mean(0), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(scdm.posterior_mean(rgb, key, num_samples=2), mean)
  # The config's estimator is the default of sample() (load keyword = --config.sample.estimator).
  by_config = pipelines.SCDM.load(workdir, program="python", estimator="mean")
  np.testing.assert_array_equal(by_config.sample(rgb, key), mean)
  assert by_config.sample(rgb, key, estimator="sample").shape == mean.shape
  raises_one_line(scdm.sample, rgb, key, estimator="median", match="sample, mean")
  raises_one_line(pipelines.SCDM.load, workdir, estimator="median", match="sample.estimator")


def _primitives(jaxpr, stop_at=("scan",)):
  """Primitive names of a jaxpr, through nested calls but not into the bodies of `stop_at` primitives."""
  names = []
  for eqn in jaxpr.eqns:
    names.append(eqn.primitive.name)
    if eqn.primitive.name in stop_at:
      continue
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          names += _primitives(inner, stop_at)
  return names


def test_sample_fn_is_one_program_with_one_loop_per_stage(compiled, rgb):
  tiles = jnp.asarray(np.stack([rgb[:16, :16]] * 4))
  jaxpr = jax.make_jaxpr(compiled.sample_fn)(compiled.params, tiles, jax.random.key(0)).jaxpr
  assert _primitives(jaxpr).count("scan") == len(compiled.bundles) == 2   # the stages' sampler loops
  everything = _primitives(jaxpr, stop_at=())
  assert not [p for p in everything if "callback" in p]                  # nothing runs on the host
  assert everything.count("conv_general_dilated") > 2 * 10                # the U-Nets are inside
  lowered = jax.jit(compiled.sample_fn).lower(compiled.params, tiles, jax.random.key(0))
  assert "callback" not in lowered.as_text().lower()


def test_one_device_dispatch_per_tile_batch(compiled, rgb, monkeypatch):
  calls = []
  program = sampling._tile_batch

  def counting(*args, **kwargs):
    calls.append(1)
    return program(*args, **kwargs)

  monkeypatch.setattr(sampling, "_tile_batch", counting)
  compiled.sample(rgb, jax.random.key(1))
  # 24 x 21 in 16-pixel tiles with overlap 4: 2 x 2 tiles, batch 4: one batch for the whole cascade.
  assert len(calls) == compiled.num_tile_batches(24, 21) == 1
  calls.clear()
  one_at_a_time = pipelines.SCDM.load(compiled.workdir, program="compiled", batch_size=1)
  one_at_a_time.sample(rgb, jax.random.key(1))
  assert len(calls) == one_at_a_time.num_tile_batches(24, 21) == 4


def test_sample_fn_inside_the_users_own_jit(compiled, rgb):
  tiles = jnp.asarray(np.stack([rgb[:16, :16]] * 4))
  key = jax.random.key(3)

  @jax.jit
  def mean_spectrum(params, x, rng):   # the user's own program around the cascade
    return compiled.sample_fn(params, x, rng).mean(axis=(1, 2))

  spectra = mean_spectrum(compiled.params, tiles, key)
  assert spectra.shape == (4, 200) and bool(jnp.isfinite(spectra).all())
  full = jax.jit(compiled.sample_fn)(compiled.params, tiles, key)
  np.testing.assert_allclose(spectra, full.mean(axis=(1, 2)), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(full)[..., list(compiled.rgb_bands)], np.asarray(tiles))
  # One 16 x 16 image is one tile: the pipeline's batch 0 is this call (the tile repeated to the batch).
  np.testing.assert_allclose(compiled.sample(rgb[:16, :16], key), full_batch0(compiled, tiles, key),
                             rtol=1e-5, atol=1e-2)


def full_batch0(pipeline, tiles, key):
  return np.asarray(jax.jit(pipeline.sample_fn)(pipeline.params, tiles, jax.random.fold_in(key, 0))[0])


@pytest.mark.parametrize("bad, match", [
    (np.zeros((8, 8, 4), np.float32), "shape"),
    (np.zeros((0, 0, 3), np.float32), "empty"),
    (np.full((20, 20, 3), np.nan, np.float32), "NaN"),
    (np.zeros((20, 3), np.float32), "shape"),
])
def test_scdm_bad_arrays_are_one_line_errors(scdm, bad, match):
  raises_one_line(scdm.sample, bad, jax.random.key(0), match=match)


def test_config_that_does_not_match_the_checkpoints_is_refused(trained):
  config, workdir = trained
  wrong = config.copy_and_resolve_references()
  wrong.cascade.num_stages = 1
  msg = raises_one_line(pipelines.SCDM.load, workdir, config=wrong, match="2-stage")
  assert "num_stages=1" in msg
  raises_one_line(pipelines.SCDM.load, workdir, program="jit", match="compiled")
  raises_one_line(pipelines.SCDM.load, workdir, colour=3, match="unknown sample")


# ---------------------------------------------------------------------------------------------- AnyBand


@pytest.fixture(scope="module")
def holes(anyband_model):
  config, _ = anyband_model
  cube = scipy.io.loadmat(config.data.path)["cube"][12:28, 40:60].astype(np.float32)
  cube[..., [3, 50, 51, 52, 120]] = np.nan
  return cube


def test_anyband_python_program_is_the_command_line(anyband_model, holes, tmp_path, capsys):
  config, workdir = anyband_model
  from conftest import config_flags
  np.save(tmp_path / "holes.npy", holes)
  argv = ["main", "--config=configs/anyband_demo_indian_pines.py", f"--workdir={workdir}", *config_flags(config),
          "--mode=repair", f"--input={tmp_path / 'holes.npy'}", f"--output={tmp_path / 'out.npy'}"]
  assert cli.main(argv) == 0, capsys.readouterr().err
  model = pipelines.AnyBand.load(workdir, config=config, program="python")
  out = model.repair(holes, rng=jax.random.key(config.seed))
  np.testing.assert_array_equal(out, np.load(tmp_path / "out.npy"))
  # Missing bands given as indices or as a mask (values there ignored) are the same request.
  filled = np.nan_to_num(holes, nan=123.0)
  by_index = model.repair(filled, missing=[3, 50, 51, 52, 120], rng=jax.random.key(config.seed))
  mask = np.zeros(200, bool)
  mask[[3, 50, 51, 52, 120]] = True
  np.testing.assert_array_equal(by_index, out)
  np.testing.assert_array_equal(model.repair(filled, missing=mask, rng=jax.random.key(config.seed)), out)


def test_anyband_compiled_program_matches_and_keeps_observed_bands(anyband_model, holes):
  config, workdir = anyband_model
  python = pipelines.AnyBand.load(workdir, config=config, program="python")
  model = pipelines.AnyBand.load(workdir, config=config, program="compiled")
  key = jax.random.key(5)
  out = model.repair(holes, rng=key)
  observed = ~np.isnan(holes).all(axis=(0, 1))
  np.testing.assert_array_equal(out[..., observed], holes[..., observed])
  # DDIM (eta 0) is deterministic given x_T, and both programs draw batch i's x_T from fold_in(rng, i).
  np.testing.assert_allclose(out, python.repair(holes, rng=key), rtol=1e-4)
  # repair_fn in the user's own jit: raw tiles and a band mask in, raw cubes out.
  tiles = jnp.asarray(np.stack([np.nan_to_num(holes[:, :16])] * 8))
  fn = jax.jit(lambda p, x, m, r: model.repair_fn(p, x, m, r))
  rebuilt = fn(model.params, tiles, jnp.asarray(observed, jnp.float32), key)
  assert rebuilt.shape == (8, 16, 16, 200)
  np.testing.assert_array_equal(np.asarray(rebuilt)[..., observed], np.asarray(tiles)[..., observed])


def test_anyband_mean_estimator_from_the_command_line_and_python(anyband_model, holes, tmp_path, capsys):
  config, workdir = anyband_model
  from conftest import config_flags
  np.save(tmp_path / "holes.npy", holes)
  flags = [f for f in config_flags(config) if not f.startswith(("--config.sample.estimator=",
                                                                 "--config.sample.num_samples="))]
  argv = ["main", "--config=configs/anyband_demo_indian_pines.py", f"--workdir={workdir}", *flags,
          "--config.sample.estimator=mean", "--config.sample.num_samples=2", "--mode=repair",
          f"--input={tmp_path / 'holes.npy'}", f"--output={tmp_path / 'mean.npy'}"]
  assert cli.main(argv) == 0, capsys.readouterr().err
  assert "the mean of 2 samples" in capsys.readouterr().out
  model = pipelines.AnyBand.load(workdir, config=config, program="python")
  key = jax.random.key(config.seed)
  mean = model.repair(holes, rng=key, estimator="mean", num_samples=2)
  np.testing.assert_array_equal(mean, np.load(tmp_path / "mean.npy"))
  draws = [model.repair(holes, rng=jax.random.fold_in(key, i)) for i in range(2)]
  np.testing.assert_allclose(mean, np.mean(draws, axis=0), rtol=1e-6, atol=1e-6)
  assert np.abs(draws[0] - draws[1]).max() > 0                # two different samples were averaged
  observed = ~np.isnan(holes).all(axis=(0, 1))
  np.testing.assert_array_equal(mean[..., observed], holes[..., observed])


def test_anyband_from_sensor(anyband_model):
  config, workdir = anyband_model
  model = pipelines.AnyBand.load(workdir, config=config, program="compiled")
  truth = scipy.io.loadmat(config.data.path)["cube"][12:28, 40:60].astype(np.float32)
  sensor = physics.sensor_on_grid("sentinel2a_msi", model.wavelengths)
  values = np.asarray(physics.simulate(truth, sensor), np.float32)
  out = model.from_sensor(values, sensor="sentinel2a_msi", rng=jax.random.key(0), num_steps=1)
  assert out.shape == (16, 20, 200) and np.isfinite(out).all()
  msg = raises_one_line(model.from_sensor, values[..., :3], sensor="sentinel2a_msi", rng=jax.random.key(0))
  assert "B" in msg  # names the sensor's bands
  raises_one_line(model.repair, truth, missing=[500], rng=jax.random.key(0), match="outside")
  raises_one_line(model.repair, truth, missing=np.ones(200, bool), rng=jax.random.key(0), match="every band")


# ----------------------------------------------------------------------------------------- checkpoints


def test_checkpoints_restore_ema_alone_and_round_trip(trained, tmp_path):
  _, workdir = trained
  stage_dir = cascade.stage_dir(workdir, 1)
  params, meta = checkpoints.load(stage_dir)
  assert meta["method"] == "scdm" and meta["stage"] == 1 and "config" in meta
  # The EMA subtree of the full training state, restored the ordinary way, is what load gives.
  import orbax.checkpoint as ocp
  step = checkpoints.latest_step(stage_dir)
  full = ocp.PyTreeCheckpointer().restore(os.path.join(stage_dir, "checkpoints", str(step), "state"))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(full["ema_params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert set(full) == {"step", "params", "ema_params", "opt_state"}
  checkpoints.save(tmp_path / "export", params, meta)
  again, meta2 = checkpoints.load(tmp_path / "export")
  assert meta2 == meta
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_and_corrupt_checkpoints_are_one_line_errors(trained, tmp_path):
  _, workdir = trained
  raises_one_line(checkpoints.load, tmp_path / "nothing", match="train first")
  copy = tmp_path / "stage"
  shutil.copytree(cascade.stage_dir(workdir, 0), copy)
  state = copy / "checkpoints" / str(checkpoints.latest_step(copy)) / "state"
  for root, _, files in os.walk(state):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 100:
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(UserInputError, match="corrupt"):
    checkpoints.load(copy)


def test_compact_export_is_the_float16_rounded_model(trained, rgb, tmp_path):
  # The format the pretrained weights ship in: params.npz (float16, compressed) + meta.json per model.
  from spectral_diffusion import pretrained
  _, workdir = trained
  out = pretrained.export(str(workdir), str(tmp_path / "compact"))
  assert sorted(os.listdir(out)) == ["stage_0", "stage_1"]
  for k in (0, 1):
    params, meta = checkpoints.load(cascade.stage_dir(workdir, k))
    again, meta2 = checkpoints.load(os.path.join(out, f"stage_{k}"))
    assert meta2 == meta
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
      assert b.dtype == np.float32
      np.testing.assert_array_equal(np.asarray(a).astype(np.float16).astype(np.float32), np.asarray(b))
  original, compact = pipelines.SCDM.load(workdir), pipelines.SCDM.load(out)
  a, b = (p.sample(rgb, jax.random.key(0)) for p in (original, compact))
  assert np.abs(a - b).max() < 1e-2 * np.abs(a).max()
  with open(os.path.join(out, "stage_0", "params.npz"), "r+b") as f:
    f.truncate(100)
  with pytest.raises(UserInputError, match="corrupt"):
    pipelines.SCDM.load(out)
  # A path that exists is a path; a pretrained name that is no path is the shipped directory.
  assert pretrained.resolve(str(out)) == str(out) and pretrained.resolve("nowhere") == "nowhere"
  assert os.path.dirname(pretrained.resolve("demo")) == os.path.dirname(pretrained.__file__)
