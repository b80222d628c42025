"""What a network predicts (eps, x0 or v) and the ``eps_fn(x_t, t)`` the samplers take.

With a = sqrt(abar_t) and s = sqrt(1 - abar_t), x_t = a x0 + s eps and v = a eps - s x0 (Salimans & Ho), so

  eps = (x_t - a x0) / s,   eps = a v + s x_t,   x0 = (x_t - s eps) / a,   x0 = a x_t - s v.

Array forms: ``to_eps`` / ``to_x0`` turn one network output into eps / x0 (training uses them). Function
forms: ``eps_from_x0(schedule, fn)`` and ``eps_from_v(schedule, fn)`` wrap an x0- or v-predicting
``fn(x_t, t)`` into an eps_fn for any sampler, ``x0_from_eps(schedule, eps_fn)`` goes back. The wrappers are
``jax.tree_util.Partial`` objects: wrapping the same fn twice gives equal functions, so a sampler given
either reuses its compiled program. abar is floored at ``schedules.MIN_ALPHAS_CUMPROD`` where it divides, so
zero-terminal-SNR schedules stay finite (and eps_from_v keeps v's information at t = T-1).
"""
from typing import Callable

import jax

from spectral_diffusion import schedules as schedules_lib

PREDICTIONS = ("eps", "x0", "v")
Fn = Callable[[jax.Array, jax.Array], jax.Array]


def _check(prediction):
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction type {prediction!r}; use one of {PREDICTIONS}")


def to_eps(schedule, prediction: str, x_t: jax.Array, t: jax.Array, out: jax.Array) -> jax.Array:
  """The eps implied by a network output `out` of type `prediction` ("eps", "x0" or "v") at (x_t, t)."""
  _check(prediction)
  if prediction == "eps":
    return out
  if prediction == "x0":
    return schedules_lib.predict_eps_from_x0(schedule, x_t, t, out)
  a, s = schedules_lib.signal_and_noise(schedule, t, x_t.ndim)
  return a * out + s * x_t


def to_x0(schedule, prediction: str, x_t: jax.Array, t: jax.Array, out: jax.Array) -> jax.Array:
  """The x0 implied by a network output `out` of type `prediction` at (x_t, t) (Tweedie for eps; no clipping)."""
  _check(prediction)
  if prediction == "x0":
    return out
  if prediction == "eps":
    return schedules_lib.predict_x0_from_eps(schedule, x_t, t, out)
  a, s = schedules_lib.signal_and_noise(schedule, t, x_t.ndim)
  return a * x_t - s * out


def _as_partial(fn):
  return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


# Module-level, so that equal wrappers have equal tree definitions (one compiled program).
def _eps_of_x0(schedule, fn, x_t, t):
  return to_eps(schedule, "x0", x_t, t, fn(x_t, t))


def _eps_of_v(schedule, fn, x_t, t):
  return to_eps(schedule, "v", x_t, t, fn(x_t, t))


def _x0_of_eps(schedule, fn, x_t, t):
  return to_x0(schedule, "eps", x_t, t, fn(x_t, t))


def eps_from_x0(schedule, fn: Fn) -> Fn:
  """An eps_fn(x_t, t) from an x0-predicting fn(x_t, t)."""
  return jax.tree_util.Partial(_eps_of_x0, schedule, _as_partial(fn))


def eps_from_v(schedule, fn: Fn) -> Fn:
  """An eps_fn(x_t, t) from a v-predicting fn(x_t, t)."""
  return jax.tree_util.Partial(_eps_of_v, schedule, _as_partial(fn))


def x0_from_eps(schedule, eps_fn: Fn) -> Fn:
  """An x0_fn(x_t, t) (the Tweedie estimate) from an eps_fn(x_t, t)."""
  return jax.tree_util.Partial(_x0_of_eps, schedule, _as_partial(eps_fn))
