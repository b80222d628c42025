"""Training, resume, NaN guard and the end-to-end cascade on a crop of real data."""
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import scdm_dfc2018, scdm_pavia_center
from spectral_diffusion import losses, models, training
from spectral_diffusion.scdm import cascade, evaluate, experiment, train
from spectral_diffusion.errors import TrainingDiverged, UserInputError
from conftest import indian_pines, tiny_config


def test_train_evaluate_end_to_end(trained):
  config, workdir = trained
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert {r["stage"] for r in records} == {0, 1}
  assert all(np.isfinite(r["loss"]) and r["steps_per_s"] > 0 for r in records)
  results = json.load(open(workdir / "eval" / "metrics.json"))
  for method in ("scdm", "scdm_mean", "scdm_one_step", "ridge", "ridge_poly2", "interp", "scdm_stage1", "scdm_stage2",
                 "scdm_stage2_from_truth"):
    assert set(results[method]) >= {"rmse", "sam", "mpsnr", "mssim", "ergas", "w1", "local_var_ratio"}
    assert all(np.isfinite(v) for v in results[method].values())
  inferred = json.load(open(workdir / "eval" / "metrics_inferred_bands.json"))
  assert set(inferred) >= {"scdm", "ridge", "ridge_poly2", "interp"}
  for png in ("false_colour.png", "error_heatmap.png", "spectra.png", "per_band_psnr.png"):
    assert (workdir / "eval" / png).stat().st_size > 10_000
  table = (workdir / "eval" / "metrics.md").read_text()
  assert "| scdm |" in table and "| scdm_mean |" in table and "LV ratio" in table and "W1" in table


def test_evaluator_rows_per_estimator_and_exact_rgb_bands(trained, monkeypatch):
  """With the cascade replaced by a stand-in (draw i fills every band with i): scdm is the first draw,
  scdm_mean the mean of sample.num_samples draws, scdm_one_step the mean of as many one-step draws, and every method, baselines too, holds the test RGB
  bands exactly; the stage rows stay as sampled."""
  config, workdir = trained
  exp = experiment.load_experiment(config)
  calls = []

  def stand_in(stages, schedule, inputs, rng, settings, progress=None):
    calls.append((len(stages), settings.num_steps))
    value = float(len(calls) - 1)
    return [np.full(inputs.shape[:-1] + (len(s.stage.out_bands),), value, np.float32) for s in stages]

  monkeypatch.setattr(cascade, "run_cascade", stand_in)
  preds, stage_preds = evaluate.predictions(config, str(workdir), exp)
  steps = config.sample.num_steps
  # two draws, two one-step draws, then stage 2 from the truth
  assert config.sample.num_samples == 2 and steps > 1
  assert calls == [(2, steps), (2, steps), (2, 1), (2, 1), (1, steps)]
  rgb = list(exp.rgb_bands)
  inferred = np.setdiff1d(np.arange(exp.num_bands), rgb)
  assert set(preds) == {"scdm", "scdm_mean", "scdm_one_step", "ridge", "ridge_poly2", "interp"}
  for name, pred in preds.items():
    np.testing.assert_array_equal(pred[..., rgb], exp.test[..., rgb], err_msg=name)
  assert (preds["scdm"][..., inferred] == 0.0).all() and (preds["scdm_mean"][..., inferred] == 0.5).all()
  assert (preds["scdm_one_step"][..., inferred] == 2.5).all()
  assert (stage_preds["scdm_stage2"][0] == 0.0).all()
  scores = evaluate.score(preds["scdm_mean"], exp.test, inferred, 1.0)
  assert scores["local_var_ratio"] == 0.0 and scores["w1"] > 0.01   # flat: no texture, wrong histogram


def _params(workdir, stage=0):
  config_dir = cascade.stage_dir(workdir, stage)
  mngr = ocp.CheckpointManager(os.path.join(config_dir, "checkpoints"))
  restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return mngr.latest_step(), restored["state"]


def test_killed_run_resumes_to_the_same_parameters(tmp_path, crop_file, monkeypatch):
  config = tiny_config(crop_file)
  config.train.stages = (0,)
  config.train.num_steps = 5
  config.train.checkpoint_every = 2
  train.train(config, str(tmp_path / "straight"))

  # Kill the second run inside step 4 (after the step-2 checkpoint, before the next one) ...
  real_make_batch = train.make_batch

  def dying_make_batch(*args):
    if args[-1] == 3:
      raise KeyboardInterrupt
    return real_make_batch(*args)

  monkeypatch.setattr(train, "make_batch", dying_make_batch)
  with pytest.raises(KeyboardInterrupt):
    train.train(config, str(tmp_path / "killed"))
  monkeypatch.setattr(train, "make_batch", real_make_batch)
  assert _params(tmp_path / "killed")[0] == 2
  # ... and restart it with the same command.
  train.train(config, str(tmp_path / "killed"))

  step_a, a = _params(tmp_path / "straight")
  step_b, b = _params(tmp_path / "killed")
  assert step_a == step_b == 5
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, crop_file):
  config = tiny_config(crop_file)
  config.train.stages = (0,)
  config.train.num_steps = 2
  train.train(config, str(tmp_path))
  _, good = _params(tmp_path)
  config.train.num_steps = 8
  config.train.learning_rate = 1e30  # the first update blows the weights up
  with pytest.raises(TrainingDiverged, match="NaN/Inf"):
    train.train(config, str(tmp_path))
  step, kept = _params(tmp_path)
  assert step == 2
  for x, y in zip(jax.tree.leaves(good), jax.tree.leaves(kept)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _paper_config_on_real_spectra(get_config, tmp_path):
  """A paper config reading a 64 x 72 Indian Pines crop resampled to the paper's band count."""
  config = get_config()
  n = config.data.num_bands
  cube = indian_pines()[:64, :72]
  cube = np.stack([cube[..., int(b)] for b in np.linspace(0, 199, n)], axis=-1)
  np.save(tmp_path / "cube.npy", cube)
  config.data.source = "scene"  # the paper configs read TFDS builders; this one reads the resampled cube
  config.data.path = str(tmp_path / "cube.npy")
  config.data.key = ""
  config.data.train_cols = (0, 64)
  config.data.test_cols = (64, 72)
  config.data.crop_size = 64  # the smallest size the paper U-Net takes (six downsamplings)
  config.train.batch_size = 1
  config.train.num_steps = 1
  config.train.stages = (1,)  # the larger stage; stage 1 differs only in its band counts
  return config


def test_paper_config_takes_one_training_step(tmp_path):
  # The full 77 M-parameter DFC2018 stage-2 model, one real step through the training loop.
  config = _paper_config_on_real_spectra(scdm_dfc2018.get_config, tmp_path)
  exp = experiment.load_experiment(config)
  state = train.train_stage(config, str(tmp_path / "run"), exp, exp.stages[1])
  assert int(state.step) == 1
  assert sum(p.size for p in jax.tree.leaves(state.params)) == 77_557_168


def test_pavia_center_paper_config_traces_its_training_step(tmp_path):
  # The other paper config differs from DFC2018 only in band counts (102, stages of 12 -> 102): its
  # whole training step is traced by eval_shape (shapes and dtypes of state and metrics, no compile).
  config = _paper_config_on_real_spectra(scdm_pavia_center.get_config, tmp_path)
  exp = experiment.load_experiment(config)
  stage = exp.stages[1]
  space = experiment.fit_stage_space(config, stage, exp.train)
  model = models.build_model(config.model, len(stage.out_bands))
  optimizer = training.make_optimizer(config.train)
  n_out, n_cond = len(stage.out_bands), space.condition_bands(len(stage.in_bands))
  init = training.state_initializer(model, optimizer, train.scdm_example_args(n_out, 64, n_cond))
  state = jax.eval_shape(init, jax.random.key(0))
  assert sum(p.size for p in jax.tree.leaves(state.params)) == 77_687_398
  step_fn = train.make_train_step(model, training.make_schedule(config.diffusion), optimizer,
                                  config.diffusion, config.train)
  batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                       train.make_batch(train.stage_training_cube(exp.train, stage, space), stage, space,
                                        config.train, config.data, config.seed, 0))
  new_state, metrics = jax.eval_shape(step_fn, state, batch, jax.random.key(1))
  assert batch["x0"].shape == (1, 64, 64, 102)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == jax.tree.map(lambda a: (a.shape, a.dtype), state)
  assert metrics["loss"].shape == () and metrics["loss"].dtype == np.float32


def test_per_band_residual_scale_unit_std_per_band_and_data_space_sam(crop_file):
  # diffusion.residual_scale=per_band: each band's residual over the prior has unit std on the training
  # split, the stored scale comes back from the checkpoint, and the SAM term is the data-space angle.
  config = tiny_config(crop_file)
  config.diffusion.residual_scale = "per_band"
  exp = experiment.load_experiment(config)
  stage = exp.stages[1]
  space = experiment.fit_stage_space(config, stage, exp.train)
  cond = exp.train[..., list(stage.in_bands)]
  resid = space.to_model(exp.train[..., list(stage.out_bands)], space.reference(cond))
  band_std = resid.reshape(-1, len(stage.out_bands)).std(0)
  floored = band_std < 0.99       # the floor: 1 % of the all-band std (the stage's input bands, ~exact)
  np.testing.assert_allclose(band_std[~floored], 1.0, rtol=1e-3)
  assert set(np.flatnonzero(floored)) <= {stage.out_bands.index(b) for b in stage.in_bands}
  batch = train.make_batch(train.stage_training_cube(exp.train, stage, space), stage, space, config.train,
                           config.data, config.seed, 0)
  data_x0 = batch["x0"] / space.target_scale + batch["offset"]        # the true bands of the crops
  rng = np.random.default_rng(0)
  out = batch["x0"] + 0.3 * rng.standard_normal(batch["x0"].shape).astype(np.float32)  # an x0 prediction
  schedule = training.make_schedule(config.diffusion)
  t = np.zeros(len(out), np.int32)
  with_sam, without = (losses.diffusion_loss(schedule, "x0", "mse", w, batch["x0"], batch["x0"], t, out, out,
                                             batch["offset"], space.target_scale) for w in (1.0, 0.0))
  expected = losses.sam_loss(out / space.target_scale + batch["offset"], data_x0)
  np.testing.assert_allclose(np.asarray(with_sam - without), np.asarray(expected), rtol=1e-5, atol=1e-7)
  meta = json.loads(json.dumps(train.stage_metadata(config, exp, stage, space)))   # as checkpoints store it
  np.testing.assert_array_equal(cascade.stage_bundle({}, meta).space.target_scale, space.target_scale)
  config.diffusion.prior = ("ridge_poly2", "none")
  with pytest.raises(UserInputError, match="per_band needs a regression prior"):
    experiment.fit_stage_space(config, stage, exp.train)
