"""Training: one independent diffusion model per cascade stage, with EMA, Orbax resume and a NaN guard.

`train_and_evaluate(config, workdir)` trains every stage (workdir/stage_k/checkpoints) and then runs the
evaluator. A run killed at any moment and restarted with the same command resumes from the last
checkpoint and ends with the same parameters as an uninterrupted run: the data and every random draw
depend only on (seed, stage, step).
"""
import json
import os
import time

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from spectral_diffusion import baselines, cascade, checkpoints, data, experiment, losses, models, schedules
from spectral_diffusion import sharding
from spectral_diffusion.errors import TrainingDiverged, UserInputError
from spectral_diffusion.progress import MetricsWriter, Progress

NUM_T_BUCKETS = 4  # loss is also logged per quarter of the timestep range


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: dict
  ema_params: dict
  opt_state: optax.OptState


def make_schedule(diffusion_cfg):
  return schedules.linear(diffusion_cfg.num_timesteps, diffusion_cfg.beta_start, diffusion_cfg.beta_end)


def make_optimizer(train_cfg):
  if train_cfg.lr_schedule == "constant":
    lr = optax.constant_schedule(train_cfg.learning_rate)
  elif train_cfg.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(train_cfg.learning_rate, max(train_cfg.num_steps, 1))
  else:
    raise UserInputError(f"unknown train.lr_schedule {train_cfg.lr_schedule!r}: use constant or cosine")
  if train_cfg.warmup_steps:
    lr = optax.join_schedules([optax.linear_schedule(0.0, train_cfg.learning_rate, train_cfg.warmup_steps),
                               lr], [train_cfg.warmup_steps])
  if train_cfg.optimizer == "adam":
    opt = optax.adam(lr)
  elif train_cfg.optimizer == "adamw":
    opt = optax.adamw(lr, b1=0.9, b2=0.999, weight_decay=train_cfg.weight_decay)
  else:
    raise UserInputError(f"unknown train.optimizer {train_cfg.optimizer!r}: use adam or adamw")
  if train_cfg.grad_clip:
    opt = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), opt)
  return opt


def new_train_state(params, optimizer):
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=optimizer.init(params))


def state_initializer(model, optimizer, example_args):
  """rng -> fresh TrainState; `example_args` are the model's call arguments (zeros of the right shape)."""

  def init(rng):
    return new_train_state(model.init(rng, *example_args)["params"], optimizer)

  return init


def scdm_example_args(out_bands, crop_size, cond_bands):
  return (jnp.zeros((1, crop_size, crop_size, out_bands), jnp.float32), jnp.zeros((1,), jnp.int32),
          jnp.zeros((1, crop_size, crop_size, cond_bands), jnp.float32))


def check_diffusion_settings(diffusion_cfg):
  if diffusion_cfg.parameterisation not in losses.PARAMETERISATIONS:
    raise UserInputError(f"unknown diffusion.parameterisation {diffusion_cfg.parameterisation!r}: "
                         f"use eps, x0 or v")
  if diffusion_cfg.loss not in ("mse", "l1"):
    raise UserInputError(f"unknown diffusion.loss {diffusion_cfg.loss!r}: use mse or l1")


def make_train_step(model, schedule, optimizer, diffusion_cfg, train_cfg):
  """Pure (state, batch, rng) -> (state, metrics). The update is skipped when loss or grads are not
  finite, so the state handed back is always the last good one."""
  check_diffusion_settings(diffusion_cfg)
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
                                         x0, x_t, t, eps, out, offset)
      return per_sample.mean(), per_sample

    return apply_gradients(state, loss_fn, optimizer, train_cfg, t, T)

  return step_fn


def apply_gradients(state, loss_fn, optimizer, train_cfg, t, num_timesteps):
  """One optimiser and EMA update from loss_fn(params) -> (mean loss, per-sample loss); skipped when loss
  or gradients are not finite. Returns (state, metrics with the loss per timestep bucket)."""
  (loss, per_sample), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = jnp.where(state.step >= train_cfg.ema_start, train_cfg.ema_decay, 0.0)
  ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
  new = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
  new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
  bucket = t * NUM_T_BUCKETS // num_timesteps
  bucket_sum = jnp.zeros(NUM_T_BUCKETS).at[bucket].add(per_sample)
  bucket_count = jnp.zeros(NUM_T_BUCKETS).at[bucket].add(1.0)
  return new, {"loss": loss, "grad_norm": grad_norm, "finite": finite,
               "bucket_sum": bucket_sum, "bucket_count": bucket_count}


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
          "offset": (space.target_scale * ref).astype(np.float32)}


def checkpoint_manager(directory, train_cfg=None, read_only=False):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=train_cfg.keep_checkpoints if train_cfg else None,
      enable_async_checkpointing=not read_only, read_only=read_only, create=not read_only)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


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
      "target_scale": space.target_scale, "prior": prior,
      "normaliser": exp.normaliser.to_dict(),
      "wavelengths_nm": None if exp.wavelengths_nm is None else [float(w) for w in exp.wavelengths_nm],
      "crop_size": config.data.crop_size, **model_settings(config), "config": config_dict(config),
  }


def config_dict(config):
  """The whole config as JSON gives it back (stored with checkpoints: pipelines load with it)."""
  return json.loads(json.dumps(config.to_dict(), default=str))


def model_settings(config):
  """The settings a checkpoint must share with the config that loads it, as JSON gives them back."""
  return json.loads(json.dumps({"model": config.model.to_dict(), "diffusion": config.diffusion.to_dict()}))


def abstract_state(init, mesh):
  shapes = jax.eval_shape(init, jax.random.key(0))
  repl = sharding.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


def restore_checkpoint(manager, step, target):
  """Restores state and metadata; a corrupt or mismatched checkpoint is a one-line UserInputError."""
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  except Exception as e:  # Orbax raises many types; the user needs the path and the way out.
    msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise UserInputError(
        f"checkpoint {manager.directory}/{step} is corrupt or does not match this config ({msg}); "
        f"use the config it was trained with, or move it away and train again") from None
  return restored["state"], restored["meta"]


def check_metadata(meta, expected, directory):
  """A checkpoint must match the config in band plan (when known) and in model/diffusion settings."""
  for key in ("in_bands", "out_bands", "num_bands", "cond_bands"):
    if key in expected and meta.get(key) != expected[key]:
      raise UserInputError(
          f"checkpoint in {directory} was trained with {key}={meta.get(key)}, this config gives "
          f"{expected[key]}; use the matching config or a fresh --workdir")
  for section in ("model", "diffusion"):
    if meta.get(section) != expected[section]:
      diff = sorted(k for k in expected[section] if meta.get(section, {}).get(k) != expected[section][k])
      raise UserInputError(f"checkpoint in {directory} was trained with different {section} settings "
                           f"({', '.join(diff)}); use the matching config or a fresh --workdir")


def train_stage(config, workdir, exp, stage, mesh=None):
  """Trains (or resumes) one stage up to config.train.num_steps; returns the final TrainState."""
  space = experiment.fit_stage_space(config, stage, exp.train)
  model = models.build_model(config.model, len(stage.out_bands))
  check_crop_size(config, model)
  optimizer = make_optimizer(config.train)
  cond_bands = space.condition_bands(len(stage.in_bands))
  init = state_initializer(model, optimizer,
                           scdm_example_args(len(stage.out_bands), config.data.crop_size, cond_bands))
  step_fn = make_train_step(model, make_schedule(config.diffusion), optimizer, config.diffusion, config.train)
  stage_cube = stage_training_cube(exp.train, stage, space)
  return fit(config, experiment.stage_dir(workdir, stage.index), init, step_fn,
             lambda step: make_batch(stage_cube, stage, space, config.train, config.data, config.seed, step),
             stage_metadata(config, exp, stage, space), stream=stage.index,
             desc=f"stage {stage.index + 1}/{len(exp.stages)}", workdir=workdir, mesh=mesh)


def check_crop_size(config, model):
  if config.data.crop_size % model.min_size:
    raise UserInputError(f"data.crop_size={config.data.crop_size} is not a multiple of the model's "
                         f"minimum size {model.min_size} (2 ** downsamplings); change one of them")


def fit(config, directory, init, step_fn, batch_fn, meta, stream, desc, workdir, mesh=None):
  """The training loop every model shares: resume or initialise, jit over the mesh, log, checkpoint.

  Checkpoints go to directory/checkpoints with `meta` beside them. `batch_fn(step)` gives the global
  batch (numpy) for a step; `stream` separates the random streams of models trained in one workdir.
  Returns the final TrainState.
  """
  mesh = mesh or sharding.data_mesh()
  tc = config.train
  sharding.check_batch(tc.batch_size, mesh)
  manager = checkpoint_manager(os.path.join(directory, "checkpoints"), tc)
  repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  latest = manager.latest_step()
  if latest is not None:
    state, saved_meta = restore_checkpoint(manager, latest, abstract_state(init, mesh))
    check_metadata(saved_meta, meta, directory)
  else:
    state = jax.jit(init, out_shardings=repl)(jax.random.fold_in(jax.random.key(config.seed), stream))

  step_fn = jax.jit(step_fn, in_shardings=(repl, batch_sh, repl), out_shardings=(repl, repl),
                    donate_argnums=0)
  rng = jax.device_put(jax.random.fold_in(jax.random.key(config.seed + 1), stream), repl)
  start = int(state.step)
  writer = MetricsWriter(os.path.join(os.path.abspath(workdir), "metrics.jsonl"))
  progress = Progress(tc.num_steps, desc, start=start)
  acc = {"loss": 0.0, "n": 0, "bucket_sum": np.zeros(NUM_T_BUCKETS), "bucket_count": np.zeros(NUM_T_BUCKETS)}
  t_log = time.perf_counter()

  def save(step):
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)))

  try:
    pending = None
    for step in range(start, tc.num_steps):
      batch = {k: sharding.put_global_batch(v, mesh) for k, v in batch_fn(step).items()}
      state, metrics = step_fn(state, batch, rng)
      # Check the previous step's flag: keeps one step in flight instead of syncing on every step.
      if pending is not None:
        _check_finite(pending, step - 1, manager)
        _accumulate(acc, pending)
      pending = metrics
      done = step + 1
      if done % tc.log_every == 0 or done == tc.num_steps or done % tc.checkpoint_every == 0:
        _check_finite(pending, step, manager)
        _accumulate(acc, pending)
        pending = None
      if done % tc.checkpoint_every == 0 or done == tc.num_steps:
        save(done)
      if (done % tc.log_every == 0 or done == tc.num_steps) and acc["n"]:
        now = time.perf_counter()
        record = {"stage": stream, "step": done, "loss": acc["loss"] / acc["n"],
                  "steps_per_s": acc["n"] / (now - t_log), "time": time.time()}
        with np.errstate(invalid="ignore"):
          for i, v in enumerate(acc["bucket_sum"] / acc["bucket_count"]):
            record[f"loss_t_q{i}"] = None if np.isnan(v) else float(v)
        if jax.process_index() == 0:
          writer.write(record)
        progress.update(done - progress.n, postfix=f"loss {record['loss']:.4f}")
        acc = {"loss": 0.0, "n": 0, "bucket_sum": np.zeros(NUM_T_BUCKETS),
               "bucket_count": np.zeros(NUM_T_BUCKETS)}
        t_log = now
  finally:
    manager.wait_until_finished()
    manager.close()
  progress.close()
  return state


def _accumulate(acc, metrics):
  acc["loss"] += float(metrics["loss"])
  acc["n"] += 1
  acc["bucket_sum"] += np.asarray(metrics["bucket_sum"])
  acc["bucket_count"] += np.asarray(metrics["bucket_count"])


def _check_finite(metrics, step, manager):
  if not bool(metrics["finite"]):
    raise TrainingDiverged(
        f"loss or gradients became NaN/Inf at step {step + 1} (loss={float(metrics['loss'])}, "
        f"grad norm={float(metrics['grad_norm'])}); the last good checkpoint "
        f"(step {manager.latest_step()}) is kept: lower train.learning_rate or set train.grad_clip")


def train(config, workdir):
  """Trains the stages named in config.train.stages (all by default)."""
  sharding.maybe_initialize_distributed(config.distributed.initialize)
  exp = experiment.load_experiment(config)
  wanted = tuple(config.train.stages) or tuple(range(len(exp.stages)))
  for k in wanted:
    if not 0 <= k < len(exp.stages):
      raise UserInputError(f"train.stages has {k}, but the cascade has stages 0..{len(exp.stages) - 1}")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config.to_dict(), f, indent=1, default=str)
  for k in wanted:
    train_stage(config, workdir, exp, exp.stages[k])
  return exp


def train_and_evaluate(config, workdir):
  """Trains every stage, then writes workdir/eval (metrics.json, table, figures)."""
  from spectral_diffusion import evaluate  # evaluation pulls in matplotlib; training does not need it
  exp = train(config, workdir)
  return evaluate.evaluate(config, workdir, exp)


def stage_bundle(params, meta):
  """A trained stage ready to sample, from its EMA parameters and checkpoint metadata alone."""
  stage = cascade.Stage(int(meta["stage"]), tuple(meta["in_bands"]), tuple(meta["out_bands"]))
  prior = None
  if meta["prior"] is not None:
    prior = baselines.RidgeModel(**{k: (np.asarray(v) if isinstance(v, list) else v)
                                    for k, v in meta["prior"].items()})
  space = cascade.StageSpace(len(stage.out_bands), meta["target_scale"], prior)
  model = models.build_model(ml_collections.ConfigDict(meta["model"]), len(stage.out_bands))
  return cascade.StageBundle(stage, space, model, params, meta["diffusion"]["parameterisation"])


def load_stage(config, workdir, stage_index, step=None):
  """A trained stage from workdir/stage_k (EMA weights, no optimizer), checked against the config:
  everything else comes from the checkpoint, so sampling needs no training data.
  Returns (StageBundle, metadata)."""
  sdir = experiment.stage_dir(workdir, stage_index)
  params, meta = checkpoints.load(sdir, f"stage {stage_index + 1}", step)
  check_metadata(meta, model_settings(config), sdir)
  return stage_bundle(params, meta), meta
