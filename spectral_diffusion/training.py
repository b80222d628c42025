"""The training loop both methods share: optimizer, EMA, NaN guard, Orbax checkpoints, automatic resume.

`fit(config, directory, init, step_fn, batch_fn, meta, ...)` trains one model to config.train.num_steps,
resuming from directory/checkpoints; a method supplies the initialiser, the pure step function and the
batch for each step. A run killed at any moment and restarted with the same command resumes from the
last checkpoint and ends with the same parameters as an uninterrupted run when the batches and random
draws depend only on (seed, stream, step), as both methods' do.
"""
import json
import os
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from spectral_diffusion import checkpoints, losses, schedules, sharding
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


RESIDUAL_SCALES = ("global", "per_band")


def check_diffusion_settings(diffusion_cfg):
  if diffusion_cfg.parameterisation not in losses.PARAMETERISATIONS:
    raise UserInputError(f"unknown diffusion.parameterisation {diffusion_cfg.parameterisation!r}: "
                         f"use eps, x0 or v")
  if diffusion_cfg.loss not in ("mse", "l1"):
    raise UserInputError(f"unknown diffusion.loss {diffusion_cfg.loss!r}: use mse or l1")
  if diffusion_cfg.get("residual_scale", "global") not in RESIDUAL_SCALES:  # absent in older configs
    raise UserInputError(f"unknown diffusion.residual_scale {diffusion_cfg.residual_scale!r}: use "
                         f"{' or '.join(RESIDUAL_SCALES)}")


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


def checkpoint_manager(directory, train_cfg):
  """Full training states (for resume); inference reads the EMA parameters through `checkpoints`."""
  options = ocp.CheckpointManagerOptions(max_to_keep=train_cfg.keep_checkpoints)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


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
    checkpoints.check_metadata(saved_meta, meta, directory)
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


def write_config(config, workdir):
  """workdir/config.json: the whole config of a run, for people (checkpoints also store it)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config.to_dict(), f, indent=1, default=str)
