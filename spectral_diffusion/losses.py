"""Training losses: the parameterisation's regression loss plus lambda * SAM loss on the predicted x0."""
import jax.numpy as jnp

from spectral_diffusion import schedules

PARAMETERISATIONS = ("eps", "x0", "v")


def _coef(a, t, x):
  return a[t].reshape((-1,) + (1,) * (x.ndim - 1))


def to_eps_and_x0(schedule, parameterisation, x_t, t, out):
  """Network output -> (eps, x0_hat) for any parameterisation."""
  if parameterisation == "eps":
    return out, schedules.predict_x0_from_eps(schedule, x_t, t, out)
  if parameterisation == "x0":
    return schedules.predict_eps_from_x0(schedule, x_t, t, out), out
  if parameterisation == "v":
    sa = _coef(schedule.sqrt_alphas_cumprod, t, x_t)
    so = _coef(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return sa * out + so * x_t, sa * x_t - so * out
  raise ValueError(f"unknown parameterisation {parameterisation!r}; use one of {PARAMETERISATIONS}")


def regression_target(schedule, parameterisation, x0, eps, t):
  if parameterisation == "eps":
    return eps
  if parameterisation == "x0":
    return x0
  sa = _coef(schedule.sqrt_alphas_cumprod, t, x0)
  so = _coef(schedule.sqrt_one_minus_alphas_cumprod, t, x0)
  return sa * eps - so * x0


def sam_loss(pred, target, eps=1e-8):
  """Per sample: 1 - mean over pixels of the cosine between spectra (last axis)."""
  dot = jnp.sum(pred * target, axis=-1)
  norm = jnp.linalg.norm(pred, axis=-1) * jnp.linalg.norm(target, axis=-1)
  cos = dot / jnp.maximum(norm, eps)
  return 1.0 - jnp.mean(cos.reshape(cos.shape[0], -1), axis=-1)


def diffusion_loss(schedule, parameterisation, kind, sam_weight, x0, x_t, t, eps, out, offset):
  """Per-sample loss. `offset` shifts model-space x0 back to the data's origin, where SAM is defined."""
  target = regression_target(schedule, parameterisation, x0, eps, t)
  err = out - target
  per_elem = jnp.abs(err) if kind == "l1" else jnp.square(err)
  loss = jnp.mean(per_elem.reshape(per_elem.shape[0], -1), axis=-1)
  if sam_weight:
    _, x0_hat = to_eps_and_x0(schedule, parameterisation, x_t, t, out)
    loss = loss + sam_weight * sam_loss(x0_hat + offset, x0 + offset)
  return loss
