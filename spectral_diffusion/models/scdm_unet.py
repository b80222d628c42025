"""The SCDM denoiser: a DDPM U-Net whose condition image runs through the same encoder.

The noisy bands and the condition bands each have their own 3x3 stem; after that both go through the
SAME encoder modules (shared weights, one batched call of size 2B), and every decoder block takes
concat[h, skip_x, skip_cond]. See REFERENCE.md for the official layout this reproduces.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from spectral_diffusion.models import layers


class SCDMUNet(nn.Module):
  """eps_theta(x_t, t, cond) for one cascade stage; channels-last (B, H, W, bands)."""
  out_bands: int
  base_channels: int = 128
  channel_mults: Sequence[int] = (1, 2, 2, 2, 2, 2, 2)
  num_res_blocks: int = 2          # encoder; the decoder uses one more, as in DDPM
  attn_levels: Sequence[int] = (3,)
  dropout: float = 0.1
  num_groups: int = 32
  time_embed_dim: int = 512
  dtype: Any = jnp.float32         # compute dtype; parameters stay float32
  remat: bool = False              # recompute res blocks in the backward pass to save memory

  @property
  def min_size(self):
    """Height and width must be multiples of this (one factor 2 per downsampling)."""
    return 2 ** (len(self.channel_mults) - 1)

  @nn.compact
  def __call__(self, x, t, cond, train=False):
    res_block = nn.remat(layers.ResBlock, static_argnums=(3,)) if self.remat else layers.ResBlock
    levels = len(self.channel_mults)
    batch = x.shape[0]
    x = x.astype(self.dtype)
    cond = cond.astype(self.dtype)
    temb = layers.TimeEmbedding(self.base_channels, self.time_embed_dim, self.dtype, name="time_embed")(t)

    # Both streams share every encoder module: run them as one batch of 2B, interleaved (x_0, c_0, x_1,
    # c_1, ...) so that a batch split over devices keeps each sample's two streams on its own device
    # ([x; c] along the batch made XLA move halves between devices: all-to-all in every call).
    h_x = layers.Conv(self.base_channels, (3, 3), padding=1, dtype=self.dtype, name="stem_x")(x)
    h_c = layers.Conv(self.base_channels, (3, 3), padding=1, dtype=self.dtype, name="stem_cond")(cond)
    h = jnp.stack([h_x, h_c], axis=1).reshape((2 * batch,) + h_x.shape[1:])
    temb2 = jnp.repeat(temb, 2, axis=0)
    skips = [h]
    for level, mult in enumerate(self.channel_mults):
      for i in range(self.num_res_blocks):
        h = res_block(self.base_channels * mult, self.dropout, self.num_groups, self.dtype,
                      name=f"down_{level}_res_{i}")(h, temb2, not train)
        if level in self.attn_levels:
          h = layers.AttnBlock(self.num_groups, self.dtype, name=f"down_{level}_attn_{i}")(h)
        skips.append(h)
      if level != levels - 1:
        h = layers.Downsample(h.shape[-1], self.dtype, name=f"down_{level}_downsample")(h)
        skips.append(h)

    h = _streams(h)[0]  # the middle and the decoder work on the noisy stream only
    ch = h.shape[-1]
    h = res_block(ch, self.dropout, self.num_groups, self.dtype, name="mid_res_0")(h, temb, not train)
    h = layers.AttnBlock(self.num_groups, self.dtype, name="mid_attn")(h)
    h = res_block(ch, self.dropout, self.num_groups, self.dtype, name="mid_res_1")(h, temb, not train)

    for level, mult in reversed(list(enumerate(self.channel_mults))):
      for i in range(self.num_res_blocks + 1):
        skip_x, skip_c = _streams(skips.pop())
        h = jnp.concatenate([h, skip_x, skip_c], axis=-1)
        h = res_block(self.base_channels * mult, self.dropout, self.num_groups, self.dtype,
                      name=f"up_{level}_res_{i}")(h, temb, not train)
        if level in self.attn_levels:
          h = layers.AttnBlock(self.num_groups, self.dtype, name=f"up_{level}_attn_{i}")(h)
      if level != 0:
        h = layers.Upsample(h.shape[-1], self.dtype, name=f"up_{level}_upsample")(h)

    h = nn.silu(layers.group_norm(self.num_groups, self.dtype, "out_norm")(h))
    out = layers.Conv(self.out_bands, (3, 3), padding=1, dtype=self.dtype, name="out_conv")(h)
    return out.astype(jnp.float32)


def _streams(h):
  """The noisy and the condition stream of an interleaved encoder batch (2B, ...)."""
  pairs = h.reshape((h.shape[0] // 2, 2) + h.shape[1:])
  return pairs[:, 0], pairs[:, 1]
