"""Ancestral DDPM and DDIM samplers for eps-prediction models.

``eps_fn(x_t, t) -> eps`` is any JAX-traceable function with ``t`` int32 of shape
(batch,). ``x_transform(x_t, t) -> x_t`` (optional) is applied to the state before
each network call, and its result is the state the update uses (the official SCDM
code clamps x_t in place this way; see ``guidance.pdt_x_transform``).

Randomness: ``init_rng, step_rng = jax.random.split(rng)``; x_T is
``jax.random.normal(init_rng, shape)`` and step i (0-based, in sampling order) draws
its noise from ``jax.random.fold_in(step_rng, i)``. Both loop drivers therefore
give the same sample for the same rng.

Loop drivers: ``loop="scan"`` compiles the whole sampler as one ``lax.scan`` in one
jit; ``loop="python"`` jits one step once and calls it from a Python loop, the step
index passed as a traced int32 so nothing recompiles; ``loop="auto"`` picks per
backend (see ``_resolve_loop``). Called under an outer ``jax.jit``, "auto" uses
scan, since a Python loop would unroll every step into the outer program.
"""

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spectral_diffusion import schedules as schedules_lib

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
XTransform = Callable[[jax.Array, jax.Array], jax.Array]

_LOOPS = ("auto", "scan", "python")


def _resolve_loop(loop: str) -> str:
  """Maps "auto" to a concrete driver."""
  if loop not in _LOOPS:
    raise ValueError(f"loop must be one of {_LOOPS}, got {loop!r}.")
  if loop != "auto":
    return loop
  # Every op is staged under an outer jit, so a fresh constant is a tracer there.
  if isinstance(jnp.zeros(()), jax.core.Tracer):
    return "scan"
  # On XLA:CPU a lax.scan whose body takes a gradient through convolutions
  # (physics guidance) was measured 3-5x (a 2-layer conv net: ~12x) slower than
  # a Python loop of jitted steps; on accelerators one compiled loop avoids
  # per-step dispatch.
  return "python" if jax.default_backend() == "cpu" else "scan"


# Module-level so its compilation (slow on XLA:CPU) is cached across calls.
@functools.partial(jax.jit, static_argnames="shape")
def _init(rng: jax.Array, shape: tuple) -> jax.Array:
  return jax.random.normal(rng, shape, jnp.float32)


def _as_pytree(fn):
  """eps_fn / x_transform as a pytree argument of the compiled step. A jax.tree_util.Partial whose
  function is hashable by value (e.g. a frozen dataclass) and whose arrays are its leaves reuses the
  compiled step across calls; a plain closure is new each call and is traced again."""
  if fn is None or isinstance(fn, jax.tree_util.Partial):
    return fn
  return jax.tree_util.Partial(fn)


@functools.partial(jax.jit, static_argnames=("step", "shape", "num_steps"))
def _scan_run(step, eps_fn, x_transform, init_rng, consts, shape, num_steps):
  body = lambda x, i: (step(x, i, consts, eps_fn, x_transform, shape), None)
  x, _ = jax.lax.scan(body, _init(init_rng, shape), jnp.arange(num_steps, dtype=jnp.int32))
  return x


@functools.partial(jax.jit, static_argnames=("step", "shape"))
def _one_step(step, x, i, consts, eps_fn, x_transform, shape):
  return step(x, i, consts, eps_fn, x_transform, shape)


def _drive(step, eps_fn, x_transform, shape, rng, consts, num_steps: int, loop: str) -> jax.Array:
  """Runs x <- step(x, i, consts, eps_fn, x_transform, shape) for i in [0, num_steps) from x_T ~ N(0, I).

  `step` is a module-level function (static, so compilations are cached); i is traced."""
  init_rng, step_rng = jax.random.split(rng)
  consts = dict(consts, rng=step_rng)
  eps_fn, x_transform = _as_pytree(eps_fn), _as_pytree(x_transform)
  if _resolve_loop(loop) == "scan":
    return _scan_run(step, eps_fn, x_transform, init_rng, consts, shape, num_steps)
  x = _init(init_rng, shape)
  for i in range(num_steps):
    x = _one_step(step, x, jnp.asarray(i, jnp.int32), consts, eps_fn, x_transform, shape)
  return x


def _check_shape(shape) -> tuple:
  shape = tuple(int(d) for d in shape)
  if len(shape) < 1 or shape[0] < 1:
    raise ValueError(f"shape must start with a positive batch size, got {shape}.")
  return shape


def ddpm(eps_fn: EpsFn, schedule: schedules_lib.NoiseSchedule, shape: Sequence[int],
         rng: jax.Array, *, variance: str = "beta",
         x_transform: Optional[XTransform] = None, loop: str = "auto") -> jax.Array:
  """Ancestral DDPM sampling over all T steps, t = T-1 .. 0, from x_T ~ N(0, I).

  mu = (x_t - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t) (x0 not clipped);
  x_{t-1} = mu + sigma_t z, with no noise at t = 0.

  Args:
    eps_fn: eps_fn(x_t, t) -> predicted noise.
    schedule: the noise schedule; T = schedule.num_timesteps.
    shape: sample shape, batch first, e.g. (B, H, W, C).
    rng: PRNG key.
    variance: "beta" (sigma^2 = beta_t, official SCDM code) or "posterior"
      (sigma^2 = beta tilde).
    x_transform: optional x_transform(x_t, t) -> x_t applied before each call.
    loop: "auto", "scan" or "python" (see module docstring).

  Returns:
    The x0 sample, float32 of the given shape.
  """
  shape = _check_shape(shape)
  if variance == "beta":
    var = schedule.betas
  elif variance == "posterior":
    var = schedule.posterior_variance
  else:
    raise ValueError(f'variance must be "beta" or "posterior", got {variance!r}.')
  num_steps = schedule.num_timesteps
  ts = np.arange(num_steps - 1, -1, -1, dtype=np.int32)
  consts = dict(
      t=jnp.asarray(ts),
      eps_coef=schedule.betas[ts] / schedule.sqrt_one_minus_alphas_cumprod[ts],
      sqrt_alpha=jnp.sqrt(schedule.alphas[ts]),
      sigma=jnp.where(ts > 0, jnp.sqrt(var[ts]), 0.0),
  )

  return _drive(_ddpm_step, eps_fn, x_transform, shape, rng, consts, num_steps, loop)


def _ddpm_step(x, i, c, eps_fn, x_transform, shape):
  t = jnp.full((shape[0],), c["t"][i], jnp.int32)
  if x_transform is not None:
    x = x_transform(x, t)
  eps = eps_fn(x, t)
  mean = (x - c["eps_coef"][i] * eps) / c["sqrt_alpha"][i]
  z = jax.random.normal(jax.random.fold_in(c["rng"], i), shape, jnp.float32)
  return (mean + c["sigma"][i] * z).astype(jnp.float32)


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """DDIM timesteps: round(linspace(T-1, 0, num_steps)), int32, strictly decreasing.

  The first is T-1 and the last 0 (for num_steps >= 2), so sampling starts from
  the noisiest step and the final update lands on abar_prev = 1.
  """
  num_timesteps, num_steps = int(num_timesteps), int(num_steps)
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(
        f"num_steps must be in [1, {num_timesteps}] (the schedule's T), got {num_steps}.")
  # floor(x + 0.5) rather than round-half-even keeps the sequence strictly monotone.
  ts = np.floor(np.linspace(num_timesteps - 1, 0, num_steps) + 0.5)
  return ts.astype(np.int32)


def ddim(eps_fn: EpsFn, schedule: schedules_lib.NoiseSchedule, shape: Sequence[int],
         rng: jax.Array, *, num_steps: int = 50, eta: float = 0.0,
         x_transform: Optional[XTransform] = None, loop: str = "auto") -> jax.Array:
  """DDIM sampling on ``ddim_timesteps(T, num_steps)`` from x_T ~ N(0, I).

  x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
  sigma = eta sqrt((1 - abar_prev) / (1 - abar) (1 - abar / abar_prev)); after the
  last step (t = 0) abar_prev = 1, so the result is x0_hat at t = 0.

  Args:
    eps_fn: eps_fn(x_t, t) -> predicted noise.
    schedule: the noise schedule.
    shape: sample shape, batch first, e.g. (B, H, W, C).
    rng: PRNG key.
    num_steps: number of network calls, 1 <= num_steps <= T.
    eta: 0 for deterministic DDIM, 1 for DDPM-like (posterior) noise.
    x_transform: optional x_transform(x_t, t) -> x_t applied before each call.
    loop: "auto", "scan" or "python" (see module docstring).

  Returns:
    The x0 sample, float32 of the given shape.
  """
  shape = _check_shape(shape)
  # A Python eta of 0 needs no noise at all (and the RNG is slow to compile on CPU).
  stochastic = isinstance(eta, jax.Array) or float(eta) != 0.0
  ts = ddim_timesteps(schedule.num_timesteps, num_steps)
  abar = schedule.alphas_cumprod[ts]
  abar_prev = jnp.concatenate([schedule.alphas_cumprod[ts[1:]], jnp.ones((1,), jnp.float32)])
  sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
  consts = dict(
      t=jnp.asarray(ts),
      sqrt_abar=jnp.sqrt(abar),
      sqrt_one_minus_abar=jnp.sqrt(1.0 - abar),
      sqrt_abar_prev=jnp.sqrt(abar_prev),
      dir_coef=jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0)),
      sigma=sigma,
  )

  step = _ddim_step_stochastic if stochastic else _ddim_step
  return _drive(step, eps_fn, x_transform, shape, rng, consts, num_steps, loop)


def _ddim_step(x, i, c, eps_fn, x_transform, shape, stochastic=False):
  t = jnp.full((shape[0],), c["t"][i], jnp.int32)
  if x_transform is not None:
    x = x_transform(x, t)
  eps = eps_fn(x, t)
  x0 = (x - c["sqrt_one_minus_abar"][i] * eps) / c["sqrt_abar"][i]
  x = c["sqrt_abar_prev"][i] * x0 + c["dir_coef"][i] * eps
  if stochastic:
    z = jax.random.normal(jax.random.fold_in(c["rng"], i), shape, jnp.float32)
    x = x + c["sigma"][i] * z
  return x.astype(jnp.float32)


_ddim_step_stochastic = functools.partial(_ddim_step, stochastic=True)
