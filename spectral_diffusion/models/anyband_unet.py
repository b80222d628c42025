"""The AnyBand-Diff denoiser: masked conditional diffusion (MCD) with conditional adaptive modulation (CAM).

The network sees x_t, the condition C = X_obs * M and the band mask M. C and M enter twice: at the stem
(C concatenated with x_t, M as a per-channel bias), and through a light encoder E(C, M) whose global context vector regresses a
scale and shift for the features after every res block (the paper's Eq. 1). The U-Net itself is the
DDPM layout of layers.py: 4 levels (the paper's "4 down / 4 up blocks", 3 resamplings), the decoder one
res block per level more than the encoder, attention by level index (single-head; the paper's multi-head
attention has the same parameters).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from spectral_diffusion.models import layers

PAPER_PARAMETERS = 278_000_000  # AnyBand-Diff, Table 5 (PyTorch, 103 or 191 bands; not stated which)


class CAMEncoder(nn.Module):
  """E(C, M): two stride-2 convs over C, global average pool, concatenated with the band mask (averaged
  over pixels for a pixel mask) and the mean of C per band, MLP -> context vector. The mask enters after
  pooling: as a map it is constant over space, and N more input channels would cost as much as C
  itself. The mean of C keeps the brightness that the convs' GroupNorm removes."""
  channels: int
  context_dim: int
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cond, mask):
    h = cond
    for i, width in enumerate((self.channels, 2 * self.channels)):
      h = layers.Conv(width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                  name=f"conv{i}")(h)
      h = nn.silu(layers.group_norm(self.num_groups, self.dtype, f"norm{i}")(h))
    band_mask = mask if mask.ndim == 2 else jnp.mean(mask, axis=(1, 2))
    h = jnp.concatenate([jnp.mean(h, axis=(1, 2)), band_mask, jnp.mean(cond, axis=(1, 2))], axis=-1)
    h = nn.Dense(self.context_dim, dtype=self.dtype, name="dense0")(h)
    return nn.Dense(self.context_dim, dtype=self.dtype, name="dense1")(nn.silu(h))


class AdaptiveModulation(nn.Module):
  """F_mod = gamma(h) * GroupNorm(F) + beta(h), with gamma = 1 + Dense(h) and beta = Dense(h).

  Both Dense layers start at zero, so an untrained layer is a plain (affine-free) GroupNorm of F;
  the Dense biases take the place of GroupNorm's own scale and shift. Implemented as written rather
  than as a residual F + ...: the res block already carries the skip, and on a tiny model (60 Adam
  steps of x0 regression) the written form trained as well as both residual forms (real crop) or
  slightly better (random data). gamma and beta are sown into 'intermediates' for tests.
  """
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f, h):
    c = f.shape[-1]
    gamma = 1.0 + nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="to_gamma")(h)
    beta = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="to_beta")(h)
    self.sow("intermediates", "gamma", gamma)
    self.sow("intermediates", "beta", beta)
    norm = layers.GroupNorm(num_groups=self.num_groups, use_bias=False, use_scale=False, dtype=self.dtype,
                            name="norm")(f)
    return gamma[:, None, None, :] * norm + beta[:, None, None, :]


class AnyBandUNet(nn.Module):
  """eps/x0/v_theta(x_t, t, C, M); channels-last (B, H, W, bands); the caller picks the parameterisation."""
  out_bands: int
  base_channels: int = 128
  channel_mults: Sequence[int] = (1, 2, 4, 8)
  num_res_blocks: int = 2          # encoder; the decoder uses one more, as in DDPM
  attn_levels: Sequence[int] = (2, 3)  # 16x16 and 8x8 on the paper's 64x64 patches
  dropout: float = 0.1
  num_groups: int = 32
  time_embed_dim: int = 512
  context_dim: int = 512
  dtype: Any = jnp.float32         # compute dtype; parameters stay float32
  remat: bool = False              # recompute res blocks in the backward pass to save memory

  @property
  def min_size(self):
    """Height and width must be multiples of this (one factor 2 per downsampling)."""
    return 2 ** (len(self.channel_mults) - 1)

  @nn.compact
  def __call__(self, x, t, cond, mask, train=False):
    """x, cond: (B, H, W, N); t: (B,) int; mask: (B, N) band mask or (B, H, W, N) pixel mask, 1 = observed."""
    res_block = nn.remat(layers.ResBlock, static_argnums=(3,)) if self.remat else layers.ResBlock
    levels = len(self.channel_mults)
    x = x.astype(self.dtype)
    cond = cond.astype(self.dtype)
    mask = mask.astype(self.dtype)
    temb = layers.TimeEmbedding(self.base_channels, self.time_embed_dim, self.dtype, name="time_embed")(t)
    context = CAMEncoder(self.base_channels, self.context_dim, self.num_groups, self.dtype,
                         name="cam_encoder")(cond, mask)
    # h = [E(C, M), temb]: the paper's context vector plus the noise level, so the modulation can weigh
    # the condition by t. A Dense of the concatenation is W_c E(C, M) + W_t temb: the paper's h alone
    # is the case W_t = 0, and the res blocks keep their time-only bias.
    h = nn.silu(jnp.concatenate([context, temb], axis=-1))

    def block(name, inputs, width):
      f = res_block(width, self.dropout, self.num_groups, self.dtype, name=f"{name}_res")(
          inputs, temb, not train)
      return AdaptiveModulation(self.num_groups, self.dtype, name=f"{name}_cam")(f, h)

    # The stem sees [x_t, C] and the mask M. A band mask is constant over space, so its share of a 3x3
    # conv is a per-channel bias, Dense(M) (a pixel mask gets the same Dense at every pixel).
    f = layers.Conv(self.base_channels, (3, 3), padding=1, dtype=self.dtype, name="stem")(
        jnp.concatenate([x, cond], axis=-1))
    stem_mask = nn.Dense(self.base_channels, use_bias=False, dtype=self.dtype, name="stem_mask")(mask)
    f = f + (stem_mask[:, None, None, :] if mask.ndim == 2 else stem_mask)
    skips = [f]
    for level, mult in enumerate(self.channel_mults):
      for i in range(self.num_res_blocks):
        f = block(f"down_{level}_{i}", f, self.base_channels * mult)
        if level in self.attn_levels:
          f = layers.AttnBlock(self.num_groups, self.dtype, name=f"down_{level}_attn_{i}")(f)
        skips.append(f)
      if level != levels - 1:
        f = layers.Downsample(f.shape[-1], self.dtype, name=f"down_{level}_downsample")(f)
        skips.append(f)

    ch = f.shape[-1]
    f = block("mid_0", f, ch)
    f = layers.AttnBlock(self.num_groups, self.dtype, name="mid_attn")(f)
    f = block("mid_1", f, ch)

    for level, mult in reversed(list(enumerate(self.channel_mults))):
      for i in range(self.num_res_blocks + 1):
        f = block(f"up_{level}_{i}", jnp.concatenate([f, skips.pop()], axis=-1), self.base_channels * mult)
        if level in self.attn_levels:
          f = layers.AttnBlock(self.num_groups, self.dtype, name=f"up_{level}_attn_{i}")(f)
      if level != 0:
        f = layers.Upsample(f.shape[-1], self.dtype, name=f"up_{level}_upsample")(f)

    f = nn.silu(layers.group_norm(self.num_groups, self.dtype, "out_norm")(f))
    # Zero-initialised, as DDPM's conv_out (init_scale 0): an untrained network predicts 0, which with
    # x0-prediction over a regression prior is the prior itself, so training starts from the baseline.
    out = layers.Conv(self.out_bands, (3, 3), padding=1, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                  name="out_conv")(f)
    return out.astype(jnp.float32)


def parameter_count(model, image_size, bands):
  """Parameters of `model` on (1, image_size, image_size, bands) inputs; eval_shape allocates nothing."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, bands), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, jax.ShapeDtypeStruct((1,), jnp.int32), x,
                          jax.ShapeDtypeStruct((1, bands), jnp.float32))
  return sum(p.size for p in jax.tree.leaves(shapes["params"]))
