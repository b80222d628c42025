"""`--mode=describe`: the resolved cascade and each stage's parameter count, with no parameters allocated."""
import jax
import jax.numpy as jnp

from spectral_diffusion import cascade, experiment, models


def stage_parameter_count(config, stage, cond_bands):
  model = models.build_model(config.model, len(stage.out_bands))
  size = model.min_size
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, len(stage.out_bands))),
                          jnp.zeros((1,), jnp.int32), jnp.zeros((1, size, size, cond_bands)))
  return sum(x.size for x in jax.tree.leaves(shapes))


def describe(config):
  if config.method == "anyband":
    return describe_anyband(config)
  stages = experiment.plan_from_config(config)
  lines = [f"cascade: {len(stages)} stage(s), model {config.model.name}, base {config.model.base_channels}, "
           f"mults {tuple(config.model.channel_mults)}, parameterisation {config.diffusion.parameterisation}"
           + f", regression prior {config.diffusion.prior}"]
  total = 0
  for s in stages:
    prior = cascade.per_stage(config.diffusion.prior, s.index, "diffusion.prior") != "none"
    cond = len(s.in_bands) + (len(s.out_bands) if prior else 0)
    n = stage_parameter_count(config, s, cond)
    total += n
    lines.append(f"stage {s.index + 1}: {len(s.in_bands)} -> {len(s.out_bands)} bands; "
                 f"input bands {list(s.in_bands)}; output bands {_compact(s.out_bands)}; "
                 f"{n:,} parameters")
  lines.append(f"total: {total:,} parameters")
  return "\n".join(lines)


def _compact(bands):
  bands = list(bands)
  if len(bands) > 2 and all(b - a == bands[1] - bands[0] for a, b in zip(bands, bands[1:])):
    return f"{bands[0]}..{bands[-1]} step {bands[1] - bands[0]}"
  return str(bands)


def describe_anyband(config):
  """The AnyBand model's size beside the paper's; needs data.num_bands (or reads the data for it)."""
  from spectral_diffusion import anyband
  from spectral_diffusion.models import anyband_unet
  prior = anyband.check_config(config)
  n = config.data.num_bands or anyband.load_data(config).num_bands
  model = models.build_model(config.model, n)
  count = anyband_unet.parameter_count(model, max(model.min_size, config.data.crop_size), n)
  return "\n".join([
      f"anyband: {n} bands, model {config.model.name}, base {config.model.base_channels}, "
      f"mults {tuple(config.model.channel_mults)}, attention at levels {tuple(config.model.attn_levels)}, "
      f"CAM context {config.model.context_dim}, parameterisation {config.diffusion.parameterisation}, "
      f"prior {prior}",
      f"parameters: {count:,} (the paper reports {anyband_unet.PAPER_PARAMETERS / 1e6:.0f} M for its "
      f"configuration; see README)"])
