"""Ancestral DDPM, DDIM and DPM-Solver++(2M) samplers for eps-prediction models.

``eps_fn(x_t, t) -> eps`` is any JAX-traceable function with ``t`` int32 of shape
(batch,). ``x_transform(x_t, t) -> x_t`` (optional) is applied to the state before
each network call, and its result is the state the update uses (the official SCDM
code clamps x_t in place this way; see ``guidance.pdt_x_transform``).

Randomness: ``init_rng, step_rng = jax.random.split(rng)``; x_T is
``jax.random.normal(init_rng, shape)`` and step i (0-based, in sampling order) draws
its noise from ``jax.random.fold_in(step_rng, i)``. Both loop drivers therefore
give the same sample for the same rng. DDIM with eta = 0 and DPM-Solver++ draw
only x_T, so for one rng they start from the same x_T as each other and as DDPM.

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
  # A lax.scan whose body took a gradient through convolutions ran 3-20x slower
  # than a Python loop on XLA:CPU, which rewrites convolutions into its fast form
  # only in the entry computation; models.layers.Conv now writes the gradient in
  # that form. Measured since (AnyBand demo, CPU): unguided steps equal, guided
  # steps 17-27% faster in scan (step-invariant work is hoisted out of the loop),
  # but scan compiles once per step count (~8 s) where the Python loop compiles
  # one step for all counts. On accelerators one compiled loop avoids per-step
  # dispatch.
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


_PADDED_STEPS = 1024  # the python loop's constants length (more when num_steps is larger)


def _start(x_T: jax.Array, carry: bool):
  """The loop state: x_T, or (x_T, zeros) when the step also carries an array (a multistep history)."""
  return (x_T, jnp.zeros_like(x_T)) if carry else x_T


@functools.partial(jax.jit, static_argnames=("step", "shape", "num_steps", "carry"))
def _scan_run(step, eps_fn, x_transform, init_rng, consts, shape, num_steps, carry=False):
  body = lambda x, i: (step(x, i, consts, eps_fn, x_transform, shape), None)
  state = _start(_init(init_rng, shape), carry)
  state, _ = jax.lax.scan(body, state, jnp.arange(num_steps, dtype=jnp.int32))
  return state[0] if carry else state


@functools.partial(jax.jit, static_argnames=("step", "shape"))
def _one_step(step, x, i, consts, eps_fn, x_transform, shape):
  return step(x, i, consts, eps_fn, x_transform, shape)


def _drive(step, eps_fn, x_transform, shape, rng, consts, num_steps: int, loop: str,
           carry: bool = False) -> jax.Array:
  """Runs x <- step(x, i, consts, eps_fn, x_transform, shape) for i in [0, num_steps) from x_T ~ N(0, I).

  `step` is a module-level function (static, so compilations are cached); i is traced. With carry, the
  state is (x, h), h starting at zeros (e.g. a multistep solver's previous prediction); x is returned."""
  init_rng, step_rng = jax.random.split(rng)
  consts = dict(consts, rng=step_rng)
  eps_fn, x_transform = _as_pytree(eps_fn), _as_pytree(x_transform)
  if _resolve_loop(loop) == "scan":
    return _scan_run(step, eps_fn, x_transform, init_rng, consts, shape, num_steps, carry)
  # Per-step constants padded to one length, so one compiled step serves every step count.
  size = max(num_steps, _PADDED_STEPS)
  consts = {k: v if k == "rng" else jnp.pad(v, (0, size - num_steps)) for k, v in consts.items()}
  state = _start(_init(init_rng, shape), carry)
  for i in range(num_steps):
    state = _one_step(step, state, jnp.asarray(i, jnp.int32), consts, eps_fn, x_transform, shape)
  return state[0] if carry else state


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


SPACINGS = ("time_uniform", "logsnr")


def dpm_solver_timesteps(schedule: schedules_lib.NoiseSchedule, num_steps: int,
                         spacing: str = "time_uniform") -> np.ndarray:
  """DPM-Solver++ timesteps: int32, strictly decreasing from T-1 to 0 (for num_steps >= 2).

  "time_uniform" is ``ddim_timesteps``; "logsnr" is uniform in lambda = log(sqrt(abar) / sqrt(1 - abar)),
  rounded to the integer grid (the DPM-Solver authors suggest logsnr for low-resolution pixel-space
  models, time-uniform for high-resolution and guided ones; steps_sweep measures both). lambda
  is steep near t = 0, so there several targets round to one t; those are moved to the nearest free
  integers, keeping the sequence strictly decreasing. "logsnr" needs a concrete (not traced) schedule.
  """
  if spacing not in SPACINGS:
    raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}.")
  num_timesteps = schedule.num_timesteps
  ts = ddim_timesteps(num_timesteps, num_steps)  # also checks num_steps
  if spacing == "time_uniform" or num_steps < 3:
    return ts
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  lam = 0.5 * (np.log(abar) - np.log1p(-abar))  # decreasing in t
  grid = np.arange(num_timesteps, dtype=np.float64)
  t = np.interp(np.linspace(lam[-1], lam[0], num_steps), lam[::-1], grid[::-1])
  ts = np.floor(t + 0.5).astype(np.int64)
  for i in range(num_steps - 2, -1, -1):  # push collisions up, away from the steep end ...
    ts[i] = max(ts[i], ts[i + 1] + 1)
  ts[0] = num_timesteps - 1
  for i in range(1, num_steps):           # ... but never past T-1 (only matters for num_steps near T)
    ts[i] = min(ts[i], ts[i - 1] - 1)
  return ts.astype(np.int32)


def dpm_solver_pp(eps_fn: EpsFn, schedule: schedules_lib.NoiseSchedule, shape: Sequence[int],
                  rng: jax.Array, *, num_steps: int = 20, spacing: str = "time_uniform",
                  x_transform: Optional[XTransform] = None, loop: str = "auto") -> jax.Array:
  """DPM-Solver++(2M) (Lu et al. 2022): the probability-flow ODE, multistep second order in x0.

  With alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma), calls at
  ts = ``dpm_solver_timesteps(schedule, num_steps, spacing)`` and D_i = x0_hat(x, ts[i]) from eps_fn,
  step i goes from s = ts[i] to t = ts[i + 1]:

    x_t = (sigma_t / sigma_s) x_s + (alpha_t - alpha_s sigma_t / sigma_s) D,
    D = (1 + 1 / (2 r)) D_i - 1 / (2 r) D_{i-1},  r = (lambda_s - lambda_prev) / (lambda_t - lambda_s),

  i.e. alpha_t (1 - exp(-h)) with h = lambda_t - lambda_s. The first step has no history and takes
  D = D_i (first order, which is a DDIM step); so does the last, from t = 0 to the clean sample
  (sigma = 0, lambda = inf: r -> 0, the second-order term is undefined), which returns x0_hat at t = 0
  as DDIM does. This is the papers' lower-order final step. Deterministic: rng only draws x_T, exactly
  as ``ddim`` does, so both start from the same x_T for the same rng.

  eps_fn is called at the solver's own integer t, so guidance inside eps_fn (ICMG, the PDT percentile
  p(t), physics guidance) follows the solver's steps; x_transform, if given, clamps the state before
  each call and the clamped state is the one the update uses.

  Args:
    eps_fn: eps_fn(x_t, t) -> predicted noise.
    schedule: the noise schedule (discrete; any betas).
    shape: sample shape, batch first, e.g. (B, H, W, C).
    rng: PRNG key.
    num_steps: number of network calls, 1 <= num_steps <= T.
    spacing: "time_uniform" or "logsnr" (see ``dpm_solver_timesteps``).
    x_transform: optional x_transform(x_t, t) -> x_t applied before each call.
    loop: "auto", "scan" or "python" (see module docstring).

  Returns:
    The x0 sample, float32 of the given shape.
  """
  shape = _check_shape(shape)
  ts = dpm_solver_timesteps(schedule, num_steps, spacing)
  abar = schedule.alphas_cumprod[ts]
  alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  # The targets of each step; the last lands on the data (alpha 1, sigma 0).
  alpha_t = jnp.concatenate([alpha[1:], jnp.ones((1,), jnp.float32)])
  sigma_t = jnp.concatenate([sigma[1:], jnp.zeros((1,), jnp.float32)])
  lam = jnp.log(alpha) - jnp.log(sigma)
  # r_i = h_{i-1} / h_i for 0 < i < num_steps - 1 (second-order steps).
  h = lam[1:] - lam[:-1]
  inv_2r = jnp.concatenate([jnp.zeros((1,), jnp.float32), h[1:] / (2.0 * h[:-1])])
  second = (np.arange(num_steps) > 0) & (np.arange(num_steps) < num_steps - 1)
  inv_2r = jnp.where(jnp.asarray(second), jnp.pad(inv_2r, (0, num_steps - inv_2r.shape[0])), 0.0)
  consts = dict(
      t=jnp.asarray(ts),
      alpha=alpha,
      sigma=sigma,
      ratio=sigma_t / sigma,
      coef=alpha_t - alpha * sigma_t / sigma,
      w_cur=1.0 + inv_2r,
      w_prev=-inv_2r,
  )
  return _drive(_dpm_solver_pp_step, eps_fn, x_transform, shape, rng, consts, num_steps, loop, carry=True)


def _dpm_solver_pp_step(state, i, c, eps_fn, x_transform, shape):
  x, x0_prev = state
  t = jnp.full((shape[0],), c["t"][i], jnp.int32)
  if x_transform is not None:
    x = x_transform(x, t)
  eps = eps_fn(x, t)
  x0 = (x - c["sigma"][i] * eps) / c["alpha"][i]
  d = c["w_cur"][i] * x0 + c["w_prev"][i] * x0_prev
  x = c["ratio"][i] * x + c["coef"][i] * d
  return x.astype(jnp.float32), x0.astype(jnp.float32)
