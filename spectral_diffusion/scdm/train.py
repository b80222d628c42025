"""SCDM training: one independent diffusion model per cascade stage (workdir/stage_k), on the shared loop
(`training.fit`): each stage's batch is a pure function of (seed, stage, step), so resumed runs match.
"""
import jax
import jax.numpy as jnp
import numpy as np

from spectral_diffusion import checkpoints, data, losses, models, schedules, sharding, training
from spectral_diffusion.data import values
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.scdm import cascade, experiment

def scdm_example_args(out_bands, crop_size, cond_bands):
  return (jnp.zeros((1, crop_size, crop_size, out_bands), jnp.float32), jnp.zeros((1,), jnp.int32),
          jnp.zeros((1, crop_size, crop_size, cond_bands), jnp.float32))


def make_train_step(model, schedule, optimizer, diffusion_cfg, train_cfg, band_scale=None):
  """Pure (state, batch, rng) -> (state, metrics). The update is skipped when loss or grads are not
  finite, so the state handed back is always the last good one. band_scale: the model space's per-band
  scale (diffusion.residual_scale=per_band), which batch["offset"] then does not include."""
  training.check_diffusion_settings(diffusion_cfg)
  param = diffusion_cfg.parameterisation
  T = schedule.num_timesteps

  def step_fn(state, batch, rng):
    x0, cond, offset = batch["x0"], batch["cond"], batch["offset"]
    b = x0.shape[0]
    rng = jax.random.fold_in(rng, state.step)
    r_t, r_noise, r_unc, r_drop = jax.random.split(rng, 4)
    t = jax.random.randint(r_t, (b,), 0, T)
    eps = jax.random.normal(r_noise, x0.shape, x0.dtype)
    keep = jax.random.bernoulli(r_unc, 1.0 - diffusion_cfg.p_uncond, (b,))
    cond = cond * keep[:, None, None, None].astype(cond.dtype)
    x_t = schedules.q_sample(schedule, x0, t, eps)

    def loss_fn(params):
      out = model.apply({"params": params}, x_t, t, cond, train=True, rngs={"dropout": r_drop})
      per_sample = losses.diffusion_loss(schedule, param, diffusion_cfg.loss, diffusion_cfg.sam_weight,
                                         x0, x_t, t, eps, out, offset, band_scale)
      return per_sample.mean(), per_sample

    return training.apply_gradients(state, loss_fn, optimizer, train_cfg, t, T)

  return step_fn


def stage_training_cube(train_cube, stage, space):
  """(H, W, in + out + out): input bands, target bands and the reference, computed once per stage.
  The prior works pixel by pixel, so cropping, flipping and turning commute with it."""
  cond = train_cube[..., list(stage.in_bands)]
  return np.concatenate([cond, train_cube[..., list(stage.out_bands)], space.reference(cond)], axis=-1)


def make_batch(stage_cube, stage, space, train_cfg, data_cfg, seed, step):
  """The global batch for `step`, a pure function of (seed, stage, step) so resumed runs match."""
  rng = np.random.default_rng([seed, stage.index, step])
  crops = data.random_crops(stage_cube, rng, train_cfg.batch_size, data_cfg.crop_size, data_cfg.augment)
  n_in, n_out = len(stage.in_bands), len(stage.out_bands)
  cond, y, ref = crops[..., :n_in], crops[..., n_in:n_in + n_out], crops[..., n_in + n_out:]
  return {"x0": space.to_model(y, ref),
          "cond": space.network_condition(cond, ref),
          "offset": (ref if np.ndim(space.target_scale) else space.target_scale * ref).astype(np.float32)}


def stage_metadata(config, exp, stage, space):
  """Everything inference needs besides the weights, stored as JSON beside them."""
  prior = None
  if space.prior is not None:
    prior = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
             for k, v in space.prior._asdict().items()}
  return {
      "method": "scdm", "stage": stage.index, "num_stages": len(exp.stages), "num_bands": exp.num_bands,
      "rgb_bands": list(exp.rgb_bands),
      "in_bands": list(stage.in_bands), "out_bands": list(stage.out_bands),
      "cond_bands": space.condition_bands(len(stage.in_bands)),
      "target_scale": np.asarray(space.target_scale).tolist(), "prior": prior,
      "normaliser": exp.normaliser.to_dict(),
      "value_range": values.value_range(exp.normaliser, exp.train),  # input checks at sample time
      "wavelengths_nm": None if exp.wavelengths_nm is None else [float(w) for w in exp.wavelengths_nm],
      "crop_size": config.data.crop_size, **checkpoints.model_settings(config),
      "config": checkpoints.config_dict(config),
  }


def train_stage(config, workdir, exp, stage, mesh=None):
  """Trains (or resumes) one stage up to config.train.num_steps; returns the final TrainState."""
  space = experiment.fit_stage_space(config, stage, exp.train)
  model = models.build_model(config.model, len(stage.out_bands))
  training.check_crop_size(config, model)
  optimizer = training.make_optimizer(config.train)
  cond_bands = space.condition_bands(len(stage.in_bands))
  init = training.state_initializer(model, optimizer,
                                    scdm_example_args(len(stage.out_bands), config.data.crop_size, cond_bands))
  step_fn = make_train_step(model, training.make_schedule(config.diffusion), optimizer, config.diffusion,
                            config.train, space.target_scale if np.ndim(space.target_scale) else None)
  stage_cube = stage_training_cube(exp.train, stage, space)
  return training.fit(config, cascade.stage_dir(workdir, stage.index), init, step_fn,
                      lambda step: make_batch(stage_cube, stage, space, config.train, config.data, config.seed,
                                              step),
                      stage_metadata(config, exp, stage, space), stream=stage.index,
                      desc=f"stage {stage.index + 1}/{len(exp.stages)}", workdir=workdir, mesh=mesh)


def train(config, workdir):
  """Trains the stages named in config.train.stages (all by default)."""
  sharding.maybe_initialize_distributed(config.distributed.initialize)
  exp = experiment.load_experiment(config)
  wanted = tuple(config.train.stages) or tuple(range(len(exp.stages)))
  for k in wanted:
    if not 0 <= k < len(exp.stages):
      raise UserInputError(f"train.stages has {k}, but the cascade has stages 0..{len(exp.stages) - 1}")
  training.write_config(config, workdir)
  for k in wanted:
    train_stage(config, workdir, exp, exp.stages[k])
  return exp


def train_and_evaluate(config, workdir):
  """Trains every stage, then writes workdir/eval (metrics.json, table, figures); returns the metrics."""
  from spectral_diffusion.scdm import evaluate  # evaluation pulls in matplotlib; training does not need it
  return evaluate.evaluate(config, workdir, train(config, workdir))
