"""SCDM as a `methods.Method`: RGB -> every band through a cascade of conditional diffusion models."""
import jax
import jax.numpy as jnp

from spectral_diffusion import models, pipelines, settings
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.scdm import cascade, experiment


class SCDM:
  name = "scdm"
  file_mode = "sample"
  sections = ("cascade",)

  def check_config(self, config):
    settings.check_common(config)
    if config.cascade.num_stages < 1:
      raise UserInputError(f"cascade.num_stages is {config.cascade.num_stages}: use 1 or more")
    for k in range(config.cascade.num_stages):
      prior = cascade.per_stage(config.diffusion.prior, k, "diffusion.prior")
      if prior not in experiment.PRIOR_DEGREES and prior != "none":
        raise UserInputError(f"unknown diffusion.prior {prior!r}: use none, ridge or ridge_poly2")
      cascade.per_stage(config.sample.icmg_scale, k, "sample.icmg_scale")
      cascade.per_stage(config.sample.pdt_p_start, k, "sample.pdt_p_start")
    for k in config.train.stages:
      if not 0 <= k < config.cascade.num_stages:
        raise UserInputError(f"train.stages has {k}, but the cascade has stages 0..{config.cascade.num_stages - 1}")

  def load_data(self, config):
    return experiment.load_experiment(config)

  def train_and_evaluate(self, config, workdir):
    from spectral_diffusion.scdm import train
    return train.train_and_evaluate(config, workdir)

  def evaluate(self, config, workdir):
    from spectral_diffusion.scdm import evaluate
    return evaluate.evaluate(config, workdir)

  def load(self, workdir, config=None, **sample):
    return pipelines.SCDM.load(workdir, config=config, **sample)

  def run_file(self, config, workdir, request):
    from spectral_diffusion.scdm import sample
    if request.missing_bands:
      raise UserInputError("--missing_bands is for --mode=repair (anyband configs); --mode=sample takes an "
                           "RGB image (or --input_bands=R,G,B of a multi-band file)")
    return sample.sample_file(config, workdir, request.input, request.output, input_key=request.input_key,
                              input_bands=request.input_bands, wavelengths=request.wavelengths,
                              sensor=request.sensor)

  def describe(self, config):
    stages = experiment.plan_from_config(config)
    lines = [f"cascade: {len(stages)} stage(s), model {config.model.name}, base {config.model.base_channels}, "
             f"mults {tuple(config.model.channel_mults)}, parameterisation {config.diffusion.parameterisation}"
             f", regression prior {config.diffusion.prior}"]
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


def stage_parameter_count(config, stage, cond_bands):
  model = models.build_model(config.model, len(stage.out_bands))
  size = model.min_size
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, len(stage.out_bands))),
                          jnp.zeros((1,), jnp.int32), jnp.zeros((1, size, size, cond_bands)))
  return sum(x.size for x in jax.tree.leaves(shapes))


def _compact(bands):
  bands = list(bands)
  if len(bands) > 2 and all(b - a == bands[1] - bands[0] for a, b in zip(bands, bands[1:])):
    return f"{bands[0]}..{bands[-1]} step {bands[1] - bands[0]}"
  return str(bands)
