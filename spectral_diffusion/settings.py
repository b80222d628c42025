"""The config checked at the edge: every enumerated and numeric setting both methods read, once, right
after the command line is parsed (a one-line UserInputError names the field and its allowed values).
Methods add their own sections' checks (methods.Method.check_config). The checks are the library's own
validators, called early, so a setting is validated in one place whether it comes from here or not."""
from spectral_diffusion import models, sampling, training
from spectral_diffusion.data import datasets
from spectral_diffusion.errors import UserInputError

DATA_SOURCES = ("scene", "tfds")
NORMALISERS = ("minmax", "affine")


def _at_least(config, path, low):
  section, key = path.split(".")
  value = config[section][key]
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise UserInputError(f"{path} is {value!r}: use a whole number >= {low}")


def check_common(config):
  """Checks data, model, diffusion, train and sample settings; raises UserInputError."""
  data = config.data
  if data.source not in DATA_SOURCES:
    raise UserInputError(f"unknown data.source {data.source!r}: use one of {', '.join(DATA_SOURCES)}")
  if data.normalise not in NORMALISERS:
    raise UserInputError(f"unknown data.normalise {data.normalise!r}: use one of {', '.join(NORMALISERS)}")
  names = ("indian_pines", "file") + datasets.BUILDERS
  if data.name not in names:
    raise UserInputError(f"unknown data.name {data.name!r}: use one of {', '.join(names)}")
  if data.normalise == "affine" and not data.scale:
    raise UserInputError("data.scale is 0 with data.normalise=affine: give the data's scale (x - offset) / scale")
  for path, low in (("data.crop_size", 1), ("data.num_bands", 0), ("train.batch_size", 1), ("train.num_steps", 0),
                    ("train.warmup_steps", 0), ("train.log_every", 1), ("train.checkpoint_every", 1),
                    ("train.keep_checkpoints", 1), ("train.ema_start", 0), ("diffusion.num_timesteps", 2)):
    _at_least(config, path, low)
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise UserInputError(f"train.ema_decay is {config.train.ema_decay}: use a value in [0, 1)")
  if not 0.0 < config.diffusion.beta_start < config.diffusion.beta_end < 1.0:
    raise UserInputError(f"diffusion.beta_start={config.diffusion.beta_start}, beta_end="
                         f"{config.diffusion.beta_end}: use 0 < beta_start < beta_end < 1")
  training.check_crop_size(config, models.build_model(config.model, 1))  # also: model name, dtype, groups
  training.check_diffusion_settings(config.diffusion)
  training.make_optimizer(config.train)          # optimizer, lr_schedule
  sampling.SampleSettings.from_config(config.sample)
