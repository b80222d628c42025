"""Building blocks shared by the U-Nets: time embedding, res block, attention, resampling.

Layouts follow the DDPM U-Net that the official SCDM code uses: GroupNorm(32, eps 1e-5) and SiLU,
the time embedding added to each res block as a per-channel bias, single-head self-attention, and a
stride-2 3x3 convolution padded (1, 1) on both sides (Flax 'SAME' would pad (0, 1)).
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

GROUPNORM_EPS = 1e-5  # PyTorch's default; Flax's is 1e-6.


def timestep_embedding(t, dim):
  """Sinusoidal embedding of integer timesteps, [sin, cos] halves, raw t (not scaled to [0, 1])."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimeEmbedding(nn.Module):
  """sinusoidal(base) -> Linear(embed_dim) -> SiLU -> Linear(embed_dim)."""
  base_dim: int
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t):
    emb = timestep_embedding(t, self.base_dim).astype(self.dtype)
    emb = nn.Dense(self.embed_dim, dtype=self.dtype, name="dense0")(emb)
    return nn.Dense(self.embed_dim, dtype=self.dtype, name="dense1")(nn.silu(emb))


def group_norm(num_groups, dtype, name=None):
  return nn.GroupNorm(num_groups=num_groups, epsilon=GROUPNORM_EPS, dtype=dtype, name=name)


class ResBlock(nn.Module):
  """GN-SiLU-conv, + Dense(SiLU(temb)) bias, GN-SiLU-dropout-conv, 1x1 shortcut when widths differ."""
  out_channels: int
  dropout: float = 0.0
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, deterministic=True):
    h = nn.silu(group_norm(self.num_groups, self.dtype, "norm0")(x))
    h = nn.Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype, name="conv0")(h)
    h = h + nn.Dense(self.out_channels, dtype=self.dtype, name="temb_proj")(nn.silu(temb))[:, None, None, :]
    h = nn.silu(group_norm(self.num_groups, self.dtype, "norm1")(h))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = nn.Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype, name="conv1")(h)
    if x.shape[-1] != self.out_channels:
      x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all pixels, with a residual connection."""
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, hgt, wid, c = x.shape
    h = group_norm(self.num_groups, self.dtype, "norm")(x)
    q = nn.Dense(c, dtype=self.dtype, name="q")(h).reshape(b, hgt * wid, c)
    k = nn.Dense(c, dtype=self.dtype, name="k")(h).reshape(b, hgt * wid, c)
    v = nn.Dense(c, dtype=self.dtype, name="v")(h).reshape(b, hgt * wid, c)
    w = jnp.einsum("bqc,bkc->bqk", q, k) * (c ** -0.5)
    w = nn.softmax(w.astype(jnp.float32), axis=-1).astype(self.dtype)
    h = jnp.einsum("bqk,bkc->bqc", w, v).reshape(b, hgt, wid, c)
    return x + nn.Dense(c, dtype=self.dtype, name="proj_out")(h)


class Downsample(nn.Module):
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.channels, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype)(x)


class Upsample(nn.Module):
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
    return nn.Conv(self.channels, (3, 3), padding=1, dtype=self.dtype)(x)
