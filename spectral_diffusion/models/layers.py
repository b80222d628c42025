"""Building blocks shared by the U-Nets: time embedding, res block, attention, resampling.

Layouts follow the DDPM U-Net that the official SCDM code uses: GroupNorm(32, eps 1e-5) and SiLU,
the time embedding added to each res block as a per-channel bias, single-head self-attention, and a
stride-2 3x3 convolution padded (1, 1) on both sides (Flax 'SAME' would pad (0, 1)).
"""
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

GROUPNORM_EPS = 1e-5  # PyTorch's default; Flax's is 1e-6.


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """lax.conv_general_dilated whose gradient w.r.t. the input is a convolution in canonical form.

  JAX's transpose of an NHWC/HWIO convolution convolves with the kernel read as HWOI. XLA:CPU
  rewrites such convolutions into the fast (Eigen / YNNPACK) form only in the entry computation,
  so inside a while loop (lax.scan: a sampler with physics guidance) they ran as a naive loop
  nest, 3-20x slower. Here the backward pass swaps the kernel's I and O axes in memory first, so
  JAX's transpose comes out HWIO wherever it is compiled. Same values, same parameters.
  """
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                           lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                           feature_group_count=feature_group_count, precision=precision, **kwargs)
  if feature_group_count != 1 or kwargs.get("batch_group_count", 1) != 1:
    return conv(lhs, rhs, dimension_numbers=dimension_numbers)
  dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  o, i = dn.rhs_spec[:2]
  dn_swapped = jax.lax.ConvDimensionNumbers(dn.lhs_spec, (i, o) + tuple(dn.rhs_spec[2:]), dn.out_spec)

  @jax.custom_vjp
  def f(x, k):
    return conv(x, k, dimension_numbers=dn)

  def fwd(x, k):
    return f(x, k), (x, k)

  def bwd(res, g):
    x, k = res
    k_swapped = jnp.swapaxes(k, o, i)  # the same kernel stored with I and O exchanged
    _, vjp_x = jax.vjp(lambda xx: conv(xx, k_swapped, dimension_numbers=dn_swapped), x)
    _, vjp_k = jax.vjp(lambda kk: conv(x, kk, dimension_numbers=dn), k)
    return vjp_x(g)[0], vjp_k(g)[0]

  f.defvjp(fwd, bwd)
  return f(lhs, rhs)


# Every convolution of the U-Nets: nn.Conv with the gradient form above (parameter names unchanged).
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


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


def _group_mean(v):
  """Mean of (B, H, ..., G, C/G) over all but B and G, summed in two levels: each row (the other
  pixel axes and the group's channels), then the rows. XLA:CPU reduces a batch of 4 or more in one
  sequential pass per group, which in float32 loses about n * 6e-8 over n terms (16k at 64x64); the
  barrier keeps XLA from merging the two sums back into one."""
  inner = tuple(range(2, v.ndim - 2)) + (v.ndim - 1,)
  rows = jax.lax.optimization_barrier(jnp.sum(v, inner, keepdims=True))
  return jnp.sum(rows, 1, keepdims=True) / (v.size // (v.shape[0] * v.shape[-2]))


class GroupNorm(nn.Module):
  """nn.GroupNorm (same parameters 'scale' and 'bias', same result) with float32 statistics that stay
  exact when a group is nearly constant, as the condition stream of a zero condition (ICMG's
  unconditional pass) makes it.

  Flax's one-pass variance E[x^2] - E[x]^2 cancels there, and even its two-pass one is off: the mean's
  rounding, relative to |mean|, is large against the tiny spread it is divided by, and at batch >= 4 the
  sums run sequentially (the whole U-Net's float32 output was 7e-5, then 3e-5, off its float64 self).
  Here every group is first shifted by a value of its own (its mean at the centre pixel), so the sums
  run over deviations of the size of the spread; then mean, then mean of squared deviations, each
  summed in two levels (_group_mean).
  """
  num_groups: int = 32
  epsilon: float = GROUPNORM_EPS
  dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True

  @nn.compact
  def __call__(self, x):
    c, g = x.shape[-1], self.num_groups
    stat = jnp.promote_types(x.dtype, jnp.float32)  # float32 statistics (float64 stays float64)
    xg = x.astype(stat).reshape(x.shape[:-1] + (g, c // g))
    centre = xg[(slice(None),) + tuple(n // 2 for n in x.shape[1:-1])]           # (B, G, C/G)
    pivot = jnp.mean(centre, axis=-1).reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (g, 1))
    d = xg - pivot
    d = d - _group_mean(d)
    var = _group_mean(jnp.square(d))
    y = (d * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    if self.use_scale:
      y = y * self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    return y.astype(self.dtype)


def group_norm(num_groups, dtype, name=None):
  return GroupNorm(num_groups=num_groups, epsilon=GROUPNORM_EPS, dtype=dtype, name=name)


class ResBlock(nn.Module):
  """GN-SiLU-conv, + Dense(SiLU(temb)) bias, GN-SiLU-dropout-conv, 1x1 shortcut when widths differ."""
  out_channels: int
  dropout: float = 0.0
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, deterministic=True):
    h = nn.silu(group_norm(self.num_groups, self.dtype, "norm0")(x))
    h = Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype, name="conv0")(h)
    h = h + nn.Dense(self.out_channels, dtype=self.dtype, name="temb_proj")(nn.silu(temb))[:, None, None, :]
    h = nn.silu(group_norm(self.num_groups, self.dtype, "norm1")(h))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype, name="conv1")(h)
    if x.shape[-1] != self.out_channels:
      x = Conv(self.out_channels, (1, 1), dtype=self.dtype, name="shortcut")(x)
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
    return Conv(self.channels, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype)(x)


class Upsample(nn.Module):
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
    return Conv(self.channels, (3, 3), padding=1, dtype=self.dtype)(x)
