"""Flax denoisers, built by name from a config's model fields."""
import jax.numpy as jnp

from spectral_diffusion.errors import UserInputError
from spectral_diffusion.models.anyband_unet import AnyBandUNet
from spectral_diffusion.models.scdm_unet import SCDMUNet

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_NAMES = ("scdm_unet", "anyband_unet")


def build_model(model_cfg, out_bands):
  """The stage's denoiser from typed fields; the module never sees the config itself."""
  if model_cfg.name not in _NAMES:
    raise UserInputError(f"unknown model.name {model_cfg.name!r}: use one of {', '.join(_NAMES)}")
  if model_cfg.dtype not in _DTYPES:
    raise UserInputError(f"unknown model.dtype {model_cfg.dtype!r}: use one of {sorted(_DTYPES)}")
  if model_cfg.base_channels % model_cfg.num_groups:
    raise UserInputError(f"model.base_channels={model_cfg.base_channels} is not a multiple of "
                         f"model.num_groups={model_cfg.num_groups}; change one of them")
  common = dict(
      out_bands=out_bands,
      base_channels=model_cfg.base_channels,
      channel_mults=tuple(model_cfg.channel_mults),
      num_res_blocks=model_cfg.num_res_blocks,
      attn_levels=tuple(model_cfg.attn_levels),
      dropout=model_cfg.dropout,
      num_groups=model_cfg.num_groups,
      time_embed_dim=model_cfg.time_embed_dim,
      dtype=_DTYPES[model_cfg.dtype],
      remat=model_cfg.remat,
  )
  if model_cfg.name == "anyband_unet":
    return AnyBandUNet(context_dim=model_cfg.get("context_dim", 512), **common)
  return SCDMUNet(**common)
