"""A trained model for inference: its EMA parameters and its metadata, read and written on their own.

Training keeps full-state Orbax checkpoints (parameters, EMA, optimizer state) in
`<model dir>/checkpoints/<step>/` for exact resume. Everything that only uses a trained model (sampling,
repair, evaluation, sweeps, the benchmark, the pipelines) reads through `load`, which restores the EMA
subtree alone, with shapes and dtypes from the checkpoint's own metadata: no model and no optimizer is
built to restore. `save` writes the same two parts as a standalone export (`<dir>/params`, `<dir>/meta`),
and `save_compact` as two small files (`<dir>/params.npz`, compressed, and `<dir>/meta.json`: how the
pretrained weights ship inside the package); `load` reads all three.

The metadata is JSON: the band plan, the normaliser, the band centres, the model and diffusion settings
the parameters need, and (for checkpoints written since it was added) the whole training config.
"""
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from spectral_diffusion.errors import UserInputError

_PARAMS, _META = "params", "meta"
_COMPACT_PARAMS, _COMPACT_META = "params.npz", "meta.json"


def _one_line(e):
  text = str(e).splitlines()[0][:200] if str(e) else ""
  return text or type(e).__name__


def latest_step(model_dir):
  """The newest finished training step in model_dir/checkpoints, or None."""
  ckpt_dir = os.path.join(model_dir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    return None
  steps = [int(n) for n in os.listdir(ckpt_dir)
           if n.isdigit() and os.path.isfile(os.path.join(ckpt_dir, n, "commit_success.txt"))]
  return max(steps) if steps else None


def _paths(model_dir, step=None):
  """(params path, meta path, step) of the export in model_dir, or of its newest (or given) training
  checkpoint; the export wins when both exist and no step is asked for."""
  if step is None and os.path.isdir(os.path.join(model_dir, _PARAMS)):
    return os.path.join(model_dir, _PARAMS), os.path.join(model_dir, _META), None
  if step is None and os.path.isfile(os.path.join(model_dir, _COMPACT_PARAMS)):
    return os.path.join(model_dir, _COMPACT_PARAMS), os.path.join(model_dir, _COMPACT_META), None
  step = latest_step(model_dir) if step is None else step
  if step is None:
    return None, None, None
  root = os.path.join(model_dir, "checkpoints", str(step))
  return os.path.join(root, "state"), os.path.join(root, "meta"), step


def load_meta(model_dir, what="the model", step=None):
  """The metadata (a dict) of the model in model_dir; a one-line UserInputError when there is none."""
  model_dir = os.path.abspath(model_dir)
  _, meta_path, step = _paths(model_dir, step)
  if meta_path is None:
    raise UserInputError(f"no finished checkpoint for {what} in {model_dir}; train first with "
                         f"--mode=train and the same --config and --workdir")
  try:
    return _read_json(meta_path)
  except Exception as e:  # Orbax/JSON raise many types; the user needs the path and the way out.
    raise UserInputError(f"checkpoint {os.path.dirname(meta_path)} has unreadable metadata "
                         f"({type(e).__name__}); move it away and train again") from None


def _read_json(meta_path):
  if os.path.isfile(meta_path):  # a compact export
    with open(meta_path, encoding="utf-8") as f:
      return json.load(f)
  # Orbax's JsonSave writes the dict as one file inside the item directory.
  files = [f for f in os.listdir(meta_path) if not f.startswith("_") and f != "commit_success.txt"]
  if len(files) != 1:
    raise ValueError(f"expected one metadata file in {meta_path}, found {files}")
  with open(os.path.join(meta_path, files[0]), encoding="utf-8") as f:
    return json.load(f)


def load(model_dir, what="the model", step=None, sharding=None):
  """(EMA parameters, metadata) of the model in model_dir, without building a model or an optimizer.

  Reads model_dir/params + model_dir/meta (an export written by `save`), else the newest (or `step`)
  training checkpoint in model_dir/checkpoints, from which only `ema_params` is restored. Arrays land
  on `sharding` (default: the first local device). A missing, corrupt or truncated checkpoint is a
  one-line UserInputError that names it and the way out.
  """
  model_dir = os.path.abspath(model_dir)
  meta = load_meta(model_dir, what, step)
  params_path, _, step = _paths(model_dir, step)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  if params_path.endswith(".npz"):
    return _load_compact(params_path, sharding), meta
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    tree = checkpointer.metadata(params_path).item_metadata.tree
    if step is not None:  # a training state: restore its EMA subtree alone
      tree = {"ema_params": tree["ema_params"]}
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(dtype=a.dtype, sharding=sharding), abstract)
    params = checkpointer.restore(params_path, args=ocp.args.PyTreeRestore(
        item=abstract, restore_args=restore_args, partial_restore=step is not None))
  except Exception as e:  # Orbax raises many types; the user needs the path and the way out.
    raise UserInputError(f"checkpoint {params_path} is corrupt or truncated ({_one_line(e)}); move it "
                         f"away and train again (or restore it from a copy)") from None
  finally:
    checkpointer.close()
  return (params["ema_params"] if step is not None else params), meta


def _load_compact(path, sharding):
  """The parameter tree of a compact export, as float32 arrays on `sharding`."""
  try:
    with np.load(path) as f:
      flat = {k: f[k] for k in f.files}
  except Exception as e:  # zip and numpy raise many types; the user needs the path and the way out
    raise UserInputError(f"pretrained weights {path} are corrupt or truncated ({_one_line(e)}); reinstall "
                         f"the package") from None
  tree = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jax.device_put(value.astype(np.float32), sharding)
  return tree


def save_compact(directory, params, meta, dtype=np.float16):
  """Writes params (nested dicts of arrays) as directory/params.npz (compressed; stored as `dtype`,
  read back as float32) and meta as directory/meta.json: the pretrained weights' format."""
  flat = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}/")
      else:
        flat[f"{prefix}{k}"] = np.asarray(v).astype(dtype)

  walk(jax.tree.map(np.asarray, params), "")
  os.makedirs(directory, exist_ok=True)
  np.savez_compressed(os.path.join(directory, _COMPACT_PARAMS), **flat)
  with open(os.path.join(directory, _COMPACT_META), "w", encoding="utf-8") as f:
    json.dump(meta, f)


def save(directory, params, meta):
  """Writes params (a pytree of arrays) and meta (JSON-able dict) as a standalone export that `load`
  reads: directory/params (Orbax) and directory/meta/meta.json. Existing exports are replaced."""
  directory = os.path.abspath(directory)
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    checkpointer.save(os.path.join(directory, _PARAMS), params, force=True)
  finally:
    checkpointer.close()
  os.makedirs(os.path.join(directory, _META), exist_ok=True)
  tmp = os.path.join(directory, _META, f".meta.json.{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(meta, f)
  os.replace(tmp, os.path.join(directory, _META, "meta.json"))


def config_dict(config):
  """The whole config as JSON gives it back (stored with checkpoints: pipelines load with it)."""
  return json.loads(json.dumps(config.to_dict(), default=str))


# Settings added after checkpoints were first written, with the value older checkpoints were trained with.
ADDED_SETTINGS = {"diffusion": {"residual_scale": "global"}}


def model_settings(config):
  """The settings a checkpoint must share with the config that loads it, as JSON gives them back."""
  return json.loads(json.dumps({"model": config.model.to_dict(), "diffusion": config.diffusion.to_dict()}))


def check_metadata(meta, expected, directory):
  """A checkpoint must match the config in band plan (when known) and in model/diffusion settings."""
  for key in ("in_bands", "out_bands", "num_bands", "cond_bands"):
    if key in expected and meta.get(key) != expected[key]:
      raise UserInputError(
          f"checkpoint in {directory} was trained with {key}={meta.get(key)}, this config gives "
          f"{expected[key]}; use the matching config or a fresh --workdir")
  for section in ("model", "diffusion"):
    # checkpoints older than a setting were trained as its default value
    saved = {**ADDED_SETTINGS.get(section, {}), **meta.get(section, {})}
    wanted = {**ADDED_SETTINGS.get(section, {}), **expected[section]}   # an older stored config, too
    if saved != wanted:
      diff = sorted(k for k in wanted if saved.get(k) != wanted[k])
      raise UserInputError(f"checkpoint in {directory} was trained with different {section} settings "
                           f"({', '.join(diff)}); use the matching config or a fresh --workdir")
