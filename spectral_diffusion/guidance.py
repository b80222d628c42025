"""Guidance as pure transforms on eps functions: ICMG, PDT and physics guidance.

Each builder takes an ``eps_fn(x_t, t) -> eps`` (or a conditional model) and
returns a new one, so they compose and plug into any sampler; ``clip_x0`` and ``dynamic_threshold``
act on each step's x0 prediction instead (a sampler's ``x0_transform=``).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from spectral_diffusion import schedules as schedules_lib

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
ModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
LossFn = Callable[[jax.Array], jax.Array]


def icmg(eps_cond: jax.Array, eps_uncond: jax.Array, scale) -> jax.Array:
  """SCDM's image condition mixture guidance: eps_c + s (eps_c - eps_u)."""
  return eps_cond + scale * (eps_cond - eps_uncond)


def icmg_eps_fn(model_fn: ModelFn, cond: jax.Array, scale) -> EpsFn:
  """An eps_fn that mixes conditional and unconditional passes with ``icmg``.

  Both passes run as one call of batch 2B: x = [x_t, x_t], condition
  [cond, 0] (the zeroed condition of p_unc training), t twice. A Python scale of
  0 skips the unconditional pass.

  Args:
    model_fn: model_fn(x_t, t, cond) -> eps.
    cond: the condition, batch first, same batch as x_t.
    scale: guidance scale s (official SCDM code: 2.5).

  Returns:
    eps_fn(x_t, t) -> guided eps.
  """
  if not isinstance(scale, jax.Array) and float(scale) == 0.0:
    return lambda x_t, t: model_fn(x_t, t, cond)

  def eps_fn(x_t, t):
    x = jnp.concatenate([x_t, x_t], axis=0)
    c = jnp.concatenate([cond, jnp.zeros_like(cond)], axis=0)
    eps = model_fn(x, jnp.concatenate([t, t], axis=0), c)
    eps_cond, eps_uncond = jnp.split(eps, 2, axis=0)
    return icmg(eps_cond, eps_uncond, scale)

  return eps_fn


def pdt_percentile(t, num_timesteps: int, p_start, p_end=1.0) -> jax.Array:
  """PDT percentile, linear in t: p_start at t = T-1, p_end at t = 0."""
  frac = jnp.asarray(t, jnp.float32) / (num_timesteps - 1)
  return p_end + (p_start - p_end) * frac


def _kth_smallest(bits: jax.Array, k: jax.Array) -> jax.Array:
  """Per row of non-negative int32 `bits` (b, n), the k-th smallest (0-based, k of shape (b,)), by radix
  select: the answer is built bit by bit as the largest value with at most k entries below it, one
  compare-and-count pass per bit (31 passes over the data, no sort)."""
  def bit(j, ans):
    cand = ans | jnp.left_shift(jnp.int32(1), 30 - j)
    below = jnp.sum(bits < cand[:, None], axis=1, dtype=jnp.int32)
    return jnp.where(below <= k, cand, ans)
  return jax.lax.fori_loop(0, 31, bit, jnp.zeros(bits.shape[:1], jnp.int32))


def abs_quantile(v: jax.Array, p) -> jax.Array:
  """Per sample (batch first), quantile(|v|, p) over all non-batch axes with linear interpolation:
  ``jnp.quantile(|v|, p, method="linear")`` to the bit, without sorting. Sorting every value cost 3x a
  network call at the demo's stage 2; this takes 33 counting passes (radix select on the float bits,
  which order like the values since |v| >= 0). p is a scalar or a (batch,) array in [0, 1]."""
  b = v.shape[0]
  mag = jnp.abs(v).reshape(b, -1).astype(jnp.float32)
  n = mag.shape[1]
  p = jnp.broadcast_to(jnp.asarray(p, jnp.float32), (b,))
  pos = p * jnp.float32(n - 1)                      # jnp.quantile's arithmetic, step by step
  low = jnp.floor(pos)
  high_weight = pos - low
  k = jnp.clip(low, 0, n - 1).astype(jnp.int32)
  bits = jax.lax.bitcast_convert_type(mag, jnp.int32)
  lo_bits = _kth_smallest(bits, k)
  # The (k+1)-th: the same value if it repeats, else the smallest value above it.
  at_most = jnp.sum(bits <= lo_bits[:, None], axis=1, dtype=jnp.int32)
  above = jnp.min(jnp.where(bits > lo_bits[:, None], bits, jnp.iinfo(jnp.int32).max), axis=1)
  hi_bits = jnp.where((at_most > k + 1) | (k + 1 > n - 1), lo_bits, above)
  lo_val = jax.lax.bitcast_convert_type(lo_bits, jnp.float32)
  hi_val = jax.lax.bitcast_convert_type(hi_bits, jnp.float32)
  return lo_val * (1 - high_weight) + hi_val * high_weight


def pdt_clip(v: jax.Array, p) -> jax.Array:
  """Clamps each sample to [-tau, tau], tau = max(quantile(|v|, p), 1).

  The quantile (linear interpolation) runs over all non-batch axes (``abs_quantile``); p is a
  scalar or a (batch,) array in [0, 1].
  """
  tau = jnp.maximum(abs_quantile(v, p), 1.0).astype(v.dtype).reshape((v.shape[0],) + (1,) * (v.ndim - 1))
  return jnp.clip(v, -tau, tau)


def dynamic_threshold(x0: jax.Array, percentile=0.995) -> jax.Array:
  """Imagen's dynamic thresholding (Saharia et al. 2022): per sample s = max(quantile(|x0|, percentile), 1),
  x0 -> clip(x0, -s, s) / s. Use it as a sampler's x0 transform:
  ``x0_transform=lambda x0, t: guidance.dynamic_threshold(x0, 0.995)`` (made once, so it compiles once)."""
  s = jnp.maximum(abs_quantile(x0, percentile), 1.0).astype(x0.dtype).reshape(
      (x0.shape[0],) + (1,) * (x0.ndim - 1))
  return jnp.clip(x0, -s, s) / s


def clip_x0(lo=-1.0, hi=1.0):
  """An x0 transform (for a sampler's ``x0_transform=``) clipping x0 to [lo, hi]: DDPM's static
  thresholding for data scaled to [-1, 1]."""
  if not lo < hi:
    raise ValueError(f"clip_x0 needs lo < hi, got {lo} and {hi}.")
  return jax.tree_util.Partial(_clip, jnp.float32(lo), jnp.float32(hi))


def _clip(lo, hi, x0, t):
  return jnp.clip(x0, lo, hi)


def pdt_eps_fn(eps_fn: EpsFn, num_timesteps: int, p_start) -> EpsFn:
  """PDT as in the SCDM paper: clip the predicted noise at pdt_percentile(t)."""

  def clipped(x_t, t):
    return pdt_clip(eps_fn(x_t, t), pdt_percentile(t, num_timesteps, p_start))

  return clipped


def pdt_x_transform(num_timesteps: int, p_start):
  """PDT as in the official SCDM code: an x_transform clamping the state x_t.

  Pass it as ``x_transform=`` to a sampler; the clamped x_t is fed to the
  network and used for the update.
  """
  return lambda x_t, t: pdt_clip(x_t, pdt_percentile(t, num_timesteps, p_start))


JACOBIANS = ("network", "identity")
SIGNS = ("descend", "paper")


def physics_guidance(eps_fn: EpsFn, loss_fn: LossFn,
                     schedule: schedules_lib.NoiseSchedule, scale,
                     jacobian: str = "network", sign: str = "descend") -> EpsFn:
  """AnyBand-Diff physics-guided eps (PGS): a positive scale lowers the loss.

  eps_tilde = eps + s sqrt(1 - abar_t) grad_{x_t} L(x0_hat(x_t, eps_fn(x_t, t))).

  Since x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar), this moves x0_hat by
  -s (1 - abar) / sqrt(abar) grad L: down the loss, as classifier guidance does. The paper prints the
  opposite sign (eps - s sqrt(1 - abar) grad L), which moves x0_hat UP the loss for s > 0;
  ``sign="paper"`` gives that form.

  jacobian="network" (the paper's PGS, the default) takes the gradient through
  eps_fn: one forward and one backward pass of the network per call (a backward
  costs about two forwards), and the returned eps comes from the same forward.

  jacobian="identity" skips the network's Jacobian: d x0_hat / d x_t is taken as
  I / sqrt(abar_t), the Tweedie formula with eps held fixed, so
  grad_{x_t} L = grad_{x0_hat} L / sqrt(abar_t) and the cost is one forward plus
  the loss's own gradient. Dropping the denoiser Jacobian is the standard cheap
  form of gradient guidance (He et al., "Manifold Preserving Guided Diffusion",
  ICLR 2024; Chung et al., "Decomposed Diffusion Sampler", ICLR 2024). The two
  agree where x0_hat is locally x_t / sqrt(abar_t) plus a constant (low noise);
  at high noise a trained denoiser's x0_hat barely moves with x_t, so "identity"
  steps further there and may want a smaller scale.

  Args:
    eps_fn: eps_fn(x_t, t) -> eps.
    loss_fn: maps x0_hat (B, H, W, C) to a scalar or per-sample (B,) loss; summed,
      so each sample gets the gradient of its own loss.
    schedule: the noise schedule.
    scale: guidance scale s (> 0 lowers the loss).
    jacobian: "network" or "identity" (see above).
    sign: "descend" (default) or "paper" (the printed formula: s > 0 raises the loss).

  Returns:
    eps_fn(x_t, t) -> guided eps.
  """
  if jacobian not in JACOBIANS:
    raise ValueError(f"jacobian must be one of {JACOBIANS}, got {jacobian!r}.")
  if sign not in SIGNS:
    raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}.")
  direction = 1.0 if sign == "descend" else -1.0

  def total_loss(x0_hat):
    return jnp.sum(loss_fn(x0_hat))

  def objective(x_t, t):
    eps = eps_fn(x_t, t)
    return total_loss(schedules_lib.predict_x0_from_eps(schedule, x_t, t, eps)), eps

  def guided(x_t, t):
    a, s = schedules_lib.signal_and_noise(schedule, t, x_t.ndim)
    if jacobian == "network":
      (_, eps), grad = jax.value_and_grad(objective, has_aux=True)(x_t, t)
    else:
      eps = eps_fn(x_t, t)
      x0_hat = schedules_lib.predict_x0_from_eps(schedule, x_t, t, eps)
      grad = jax.grad(total_loss)(x0_hat) / a
    return eps + direction * scale * s * grad.astype(eps.dtype)

  return guided
