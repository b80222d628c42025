"""Guidance as pure transforms on eps functions: ICMG, PDT and physics guidance.

Each builder takes an ``eps_fn(x_t, t) -> eps`` (or a conditional model) and
returns a new one, so they compose and plug into ``samplers.ddpm`` / ``ddim``.
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


def pdt_clip(v: jax.Array, p) -> jax.Array:
  """Clamps each sample to [-tau, tau], tau = max(quantile(|v|, p), 1).

  The quantile (linear interpolation) runs over all non-batch axes; p is a
  scalar or a (batch,) array in [0, 1].
  """
  b = v.shape[0]
  flat = jnp.abs(v).reshape(b, -1)
  p = jnp.broadcast_to(jnp.asarray(p, flat.dtype), (b,))
  tau = jax.vmap(lambda a, q: jnp.quantile(a, q, method="linear"))(flat, p)
  tau = jnp.maximum(tau, 1.0).reshape((b,) + (1,) * (v.ndim - 1))
  return jnp.clip(v, -tau, tau)


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


def physics_guidance(eps_fn: EpsFn, loss_fn: LossFn,
                     schedule: schedules_lib.NoiseSchedule, scale,
                     jacobian: str = "network") -> EpsFn:
  """AnyBand-Diff physics-guided eps (PGS).

  eps_tilde = eps - s sqrt(1 - abar_t) grad_{x_t} L(x0_hat(x_t, eps_fn(x_t, t))).

  This is the paper's formula as printed. Since x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar),
  it moves x0_hat along +grad L: a positive s INCREASES the loss (classifier guidance has the other
  sign). To pull samples towards a small loss pass a negative scale, as anyband.PhysicsGuided does
  for physics.guidance_scale > 0.

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
    scale: guidance scale s.
    jacobian: "network" or "identity" (see above).

  Returns:
    eps_fn(x_t, t) -> guided eps.
  """
  if jacobian not in JACOBIANS:
    raise ValueError(f"jacobian must be one of {JACOBIANS}, got {jacobian!r}.")

  def total_loss(x0_hat):
    return jnp.sum(loss_fn(x0_hat))

  def objective(x_t, t):
    eps = eps_fn(x_t, t)
    return total_loss(schedules_lib.predict_x0_from_eps(schedule, x_t, t, eps)), eps

  def per_sample(a, t, x):
    a = a[t]
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))

  def guided(x_t, t):
    if jacobian == "network":
      (_, eps), grad = jax.value_and_grad(objective, has_aux=True)(x_t, t)
    else:
      eps = eps_fn(x_t, t)
      x0_hat = schedules_lib.predict_x0_from_eps(schedule, x_t, t, eps)
      grad = jax.grad(total_loss)(x0_hat) / per_sample(schedule.sqrt_alphas_cumprod, t, x_t)
    s = per_sample(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return eps - scale * s * grad.astype(eps.dtype)

  return guided
