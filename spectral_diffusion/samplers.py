"""Samplers for eps-prediction models: ancestral DDPM, DDIM, DPM-Solver++ (2M, 3M and the SDE 2M) and
UniPC (bh2), all on one ``eps_fn`` and one timestep grid, each one compiled loop.

``eps_fn(x_t, t) -> eps`` is any JAX-traceable function with ``t`` int32 of shape (batch,); it may
compute in bfloat16: the sampler's state stays float32. Networks that predict x0 or v are adapted by
``predictions.eps_from_x0`` / ``eps_from_v``.

Common keyword arguments (every sampler):
  timesteps: any strictly decreasing int sequence in [0, T-1] (one network call at each); or
  num_steps + spacing: ``timesteps(schedule, num_steps, spacing)`` (see there).
  x_T: the start state (batch-first array of ``shape``) instead of the internal N(0, I) draw.
  start_step / strength: start at grid point k = start_step (strength s in (0, 1]: k = n - int(n s), the
    img2img convention) from x_T, which then must be given: the data noised to timesteps[k], e.g.
    ``schedules.q_sample(schedule, x0, t, noise)`` (SDEdit-style editing, or repair from a noised prior).
  x_transform(x_t, t) -> x_t: applied to the state before each network call; its result is the state
    the update uses (the official SCDM code clamps x_t in place this way; ``guidance.pdt_x_transform``).
  x0_transform(x0, t) -> x0: applied to each x0 prediction (``guidance.clip_x0``,
    ``guidance.dynamic_threshold``); the update then uses that x0 and the eps it implies,
    eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar), so every sampler sees one consistent prediction.
  return_trajectory: also return the states before every step, stacked (steps, *shape).
  return_x0_predictions: also return the x0 prediction of every step, stacked (steps, *shape).
    With either, the result is (x0, states), (x0, x0_predictions) or (x0, states, x0_predictions).
  loop: the driver (below).

Randomness: ``init_rng, step_rng = jax.random.split(rng)``; x_T is ``jax.random.normal(init_rng, shape)``
(unless given) and the step at grid index i (0-based, whatever start_step is) draws its noise from
``jax.random.fold_in(step_rng, i)``. Both loop drivers therefore give the same sample for the same rng.
The deterministic solvers draw only x_T, so for one rng every sampler starts from the same x_T.

Zero terminal SNR (``schedules.rescale_zero_terminal_snr``): abar is floored at
``schedules.MIN_ALPHAS_CUMPROD`` where x0 is computed, so nothing divides by zero at t = T-1.

``dpm_solver_pp_3m``, ``sde_dpm_solver_pp`` and ``unipc`` compute their coefficients in float64 on the host,
so (like the "logsnr" and "karras" grids) they need a concrete schedule, not a traced jit argument.

Loop drivers: ``loop="scan"`` compiles the whole sampler as one ``lax.scan`` in one jit; ``loop="python"``
jits one step once and calls it from a Python loop, the step index passed as a traced int32 so nothing
recompiles for another step count; ``loop="auto"`` picks per backend (see ``_resolve_loop``). Called under
an outer ``jax.jit``, "auto" uses scan, since a Python loop would unroll every step into the outer program.

Compilation is cached on the eps_fn object: passing the same function again (a closure included) reuses
the compiled program. The one rule: arrays a closure captures are compiled in as constants, so after
changing them pass a new function, or pass them as the arguments of a ``jax.tree_util.Partial`` (which
then also reuses the program across different arrays).
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


# ---------------------------------------------------------------------------------------------------
# Timestep grids.

SPACINGS = ("linspace", "time_uniform", "leading", "trailing", "logsnr", "karras")


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


def _on_integer_grid(t: np.ndarray, num_timesteps: int) -> np.ndarray:
  """Fractional timesteps (decreasing, t[0] ~ T-1) rounded to distinct integers, strictly decreasing.
  Targets that round to one t (where the spacing is dense) move to the nearest free integers."""
  ts = np.floor(t + 0.5).astype(np.int64)
  for i in range(len(ts) - 2, -1, -1):  # push collisions up, away from the dense end ...
    ts[i] = max(ts[i], ts[i + 1] + 1)
  ts[0] = num_timesteps - 1
  for i in range(1, len(ts)):           # ... but never past T-1 (only matters for num_steps near T)
    ts[i] = min(ts[i], ts[i - 1] - 1)
  return ts.astype(np.int32)


def _abar64(schedule) -> np.ndarray:
  return np.maximum(np.asarray(schedule.alphas_cumprod, np.float64), schedules_lib.MIN_ALPHAS_CUMPROD)


def timesteps(schedule: schedules_lib.NoiseSchedule, num_steps: int, spacing: str = "linspace") -> np.ndarray:
  """The int32, strictly decreasing grid of num_steps network calls in [0, T-1].

  spacing:
    "linspace" (alias "time_uniform"): round(linspace(T-1, 0, n)), DDIM's grid (``ddim_timesteps``).
    "leading": (arange(n) * (T // n))[::-1], the common schedulers' leading convention (starts below T-1).
    "trailing": round(arange(T, 0, -T / n)) - 1, their trailing convention (starts at T-1, ends at T/n - 1).
    "logsnr": uniform in lambda = log(sqrt(abar) / sqrt(1 - abar)), from T-1 to 0 (for n >= 3; else
      linspace). The DPM-Solver authors suggest it for low-resolution pixel-space models.
    "karras": Karras et al. (2022), rho = 7 on sigma = sqrt((1 - abar) / abar) from sigma(T-1) to sigma(0),
      each sigma mapped to the nearest integer t (interpolating log sigma).
  Where a spacing is denser than the integer grid (near t = 0 for logsnr and karras) colliding targets
  move to the nearest free integers. "logsnr" and "karras" need a concrete (not traced) schedule.
  """
  if spacing not in SPACINGS:
    raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}.")
  num_timesteps = schedule.num_timesteps
  ts = ddim_timesteps(num_timesteps, num_steps)  # also checks num_steps
  n = int(num_steps)
  if spacing == "leading":
    return (np.arange(n) * (num_timesteps // n))[::-1].astype(np.int32)
  if spacing == "trailing":
    return (np.round(np.arange(num_timesteps, 0, -num_timesteps / n)) - 1).astype(np.int32)[:n]
  if spacing in ("linspace", "time_uniform") or (spacing == "logsnr" and n < 3) or n == 1:
    return ts
  abar = _abar64(schedule)
  grid = np.arange(num_timesteps, dtype=np.float64)
  if spacing == "logsnr":
    lam = 0.5 * (np.log(abar) - np.log1p(-abar))  # decreasing in t
    t = np.interp(np.linspace(lam[-1], lam[0], n), lam[::-1], grid[::-1])
  else:
    rho = 7.0
    log_sigma = 0.5 * (np.log1p(-abar) - np.log(abar))  # increasing in t
    ramp = np.linspace(0.0, 1.0, n)
    hi, lo = np.exp(log_sigma[-1]) ** (1 / rho), np.exp(log_sigma[0]) ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    t = np.interp(np.log(sigmas), log_sigma, grid)
  return _on_integer_grid(t, num_timesteps)


def dpm_solver_timesteps(schedule: schedules_lib.NoiseSchedule, num_steps: int,
                         spacing: str = "time_uniform") -> np.ndarray:
  """``timesteps`` under its earlier name (DPM-Solver++'s grids were the first with a spacing)."""
  return timesteps(schedule, num_steps, spacing)


def _grid(schedule, num_steps, spacing, ts) -> np.ndarray:
  """The sampler's grid: the given timesteps (checked) or timesteps(schedule, num_steps, spacing)."""
  if ts is None:
    return timesteps(schedule, num_steps, spacing)
  if isinstance(ts, jax.core.Tracer):
    raise ValueError("timesteps must be concrete (a list or numpy array): the grid shapes the program.")
  arr = np.asarray(ts)
  if arr.ndim != 1 or arr.size < 1 or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"timesteps must be a non-empty 1-D integer sequence, got {arr.dtype} of shape {arr.shape}.")
  if np.any(np.diff(arr) >= 0) or arr[0] > schedule.num_timesteps - 1 or arr[-1] < 0:
    raise ValueError(f"timesteps must be strictly decreasing within [0, {schedule.num_timesteps - 1}], "
                     f"got {arr.tolist()}.")
  return arr.astype(np.int32)


def _start_index(n: int, start_step, strength, x_T) -> int:
  """The grid index sampling starts at (start_step, or strength as in img2img pipelines)."""
  if strength is not None:
    if start_step:
      raise ValueError("give start_step or strength, not both.")
    if not 0.0 < float(strength) <= 1.0:
      raise ValueError(f"strength must be in (0, 1], got {strength}.")
    start_step = n - int(n * float(strength))
    if start_step >= n:
      raise ValueError(f"strength {strength} runs no step of {n}; use at least {1 / n:.3g}.")
  start_step = int(start_step)
  if not 0 <= start_step < n:
    raise ValueError(f"start_step must be in [0, {n - 1}] (the grid has {n} points), got {start_step}.")
  if start_step > 0 and x_T is None:
    raise ValueError("start_step > 0 (or strength < 1) starts from a given state: pass x_T, the data noised "
                     "to timesteps[start_step] (e.g. with schedules.q_sample).")
  return start_step


# ---------------------------------------------------------------------------------------------------
# Drivers. A step is a module-level function step(state, i, c, fns, shape) -> (state, x0_hat): state is
# (x, *history) (a multistep solver's earlier predictions), i the traced grid index, c the per-step
# constants, fns = (eps_fn, x_transform, x0_transform).

# Module-level so its compilation (slow on XLA:CPU) is cached across calls.
@functools.partial(jax.jit, static_argnames="shape")
def _init(rng: jax.Array, shape: tuple) -> jax.Array:
  return jax.random.normal(rng, shape, jnp.float32)


def _as_pytree(fn):
  """eps_fn / a transform as a pytree argument of the compiled step. Its tree definition holds the function
  object, so passing the same object again reuses the compiled step; a jax.tree_util.Partial whose function
  is hashable by value (e.g. a frozen dataclass) and whose arrays are its leaves reuses it across arrays."""
  if fn is None or isinstance(fn, jax.tree_util.Partial):
    return fn
  return jax.tree_util.Partial(fn)


_PADDED_STEPS = 1024  # the python loop's constants length (more when num_steps is larger)


def _predict(x, i, c, fns, shape):
  """(state after x_transform, eps, x0_hat) at grid index i, in float32; with an x0_transform, x0_hat is
  transformed and eps is the one it implies."""
  eps_fn, x_transform, x0_transform = fns
  t = jnp.full((shape[0],), c["t"][i], jnp.int32)
  if x_transform is not None:
    x = x_transform(x, t).astype(jnp.float32)
  eps = eps_fn(x, t).astype(jnp.float32)
  x0 = (x - c["sigma"][i] * eps) / c["alpha"][i]
  if x0_transform is not None:
    x0 = x0_transform(x0, t).astype(jnp.float32)
    eps = (x - c["alpha"][i] * x0) / c["sigma"][i]
  return x, eps, x0


def _noise(c, i, shape):
  return jax.random.normal(jax.random.fold_in(c["rng"], i), shape, jnp.float32)


@functools.partial(jax.jit, static_argnames=("step", "shape", "start", "num_steps", "history", "outputs"))
def _scan_run(step, fns, x_T, consts, shape, start, num_steps, history, outputs):
  def body(state, i):
    new, x0 = step(state, i, consts, fns, shape)
    return new, tuple({"states": state[0], "x0": x0}[k] for k in outputs)

  state = (x_T,) + (jnp.zeros_like(x_T),) * history
  state, ys = jax.lax.scan(body, state, jnp.arange(start, num_steps, dtype=jnp.int32))
  return (state[0],) + ys


@functools.partial(jax.jit, static_argnames=("step", "shape", "keep_x0"))
def _one_step(step, state, i, consts, fns, shape, keep_x0):
  new, x0 = step(state, i, consts, fns, shape)
  return (new, x0) if keep_x0 else (new, None)


def _drive(step, fns, shape, rng, consts, num_steps: int, loop: str, *, history: int = 0, x_T=None,
           start: int = 0, return_trajectory: bool = False, return_x0_predictions: bool = False):
  """Runs (x, h...) <- step(...) for grid indices [start, num_steps) from x_T (given, or drawn ~ N(0, I)),
  the history h starting at zeros; returns x (and the stacked trajectory / x0 predictions if asked)."""
  init_rng, step_rng = jax.random.split(rng)
  consts = dict(consts, rng=step_rng)
  fns = tuple(_as_pytree(f) for f in fns)
  if x_T is None:
    x_T = _init(init_rng, shape)
  else:
    if tuple(jnp.shape(x_T)) != shape:
      raise ValueError(f"x_T has shape {tuple(jnp.shape(x_T))}; the sample shape is {shape}.")
    x_T = jnp.asarray(x_T, jnp.float32)
  outputs = tuple(k for k, want in (("states", return_trajectory), ("x0", return_x0_predictions)) if want)
  if _resolve_loop(loop) == "scan":
    out = _scan_run(step, fns, x_T, consts, shape, start, num_steps, history, outputs)
  else:
    # Per-step constants padded to one length, so one compiled step serves every step count.
    size = max(num_steps, _PADDED_STEPS)
    consts = {k: v if k == "rng" else jnp.pad(v, [(0, size - num_steps)] + [(0, 0)] * (v.ndim - 1))
              for k, v in consts.items()}
    state = (x_T,) + (jnp.zeros_like(x_T),) * history
    kept = {k: [] for k in outputs}
    for i in range(start, num_steps):
      if "states" in kept:
        kept["states"].append(state[0])
      state, x0 = _one_step(step, state, jnp.asarray(i, jnp.int32), consts, fns, shape, "x0" in kept)
      if "x0" in kept:
        kept["x0"].append(x0)
    out = (state[0],) + tuple(jnp.stack(kept[k]) for k in outputs)
  return out if outputs else out[0]


def _prepare(schedule, shape, num_steps, spacing, ts, x_T, start_step, strength):
  """(shape, grid, start index) after checking the arguments every sampler shares."""
  shape = tuple(int(d) for d in shape)
  if len(shape) < 1 or shape[0] < 1:
    raise ValueError(f"shape must start with a positive batch size, got {shape}.")
  ts = _grid(schedule, num_steps, spacing, ts)
  return shape, ts, _start_index(len(ts), start_step, strength, x_T)


def _alpha_sigma(schedule, ts):
  """float32 (sqrt(abar), sqrt(1 - abar)) on the grid, abar floored (zero terminal SNR)."""
  abar = jnp.maximum(schedule.alphas_cumprod[ts], schedules_lib.MIN_ALPHAS_CUMPROD)
  return abar, jnp.sqrt(abar), jnp.sqrt(1.0 - abar)


def _lambdas(schedule, ts):
  """float64 (alpha, sigma, lambda) at the grid points followed by the clean end (1, 0, inf)."""
  abar = np.concatenate([_abar64(schedule)[ts], [1.0]])
  alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
  with np.errstate(divide="ignore"):
    return alpha, sigma, np.log(alpha) - np.log(sigma)


_COMMON_DOC = """
  Common arguments (see the module docstring): timesteps / num_steps + spacing, x_T, start_step / strength,
  x_transform, x0_transform, return_trajectory, return_x0_predictions, loop.

  Returns:
    The x0 sample, float32 of the given shape (and the trajectory / x0 predictions if asked).
"""


def _documented(fn):
  fn.__doc__ += _COMMON_DOC
  return fn


# ---------------------------------------------------------------------------------------------------
# DDPM.

@_documented
def ddpm(eps_fn: EpsFn, schedule: schedules_lib.NoiseSchedule, shape: Sequence[int],
         rng: jax.Array, *, variance: str = "beta", num_steps: Optional[int] = None, spacing: str = "linspace",
         timesteps=None, x_T=None, start_step: int = 0, strength=None,
         x_transform: Optional[XTransform] = None, x0_transform: Optional[XTransform] = None,
         return_trajectory: bool = False, return_x0_predictions: bool = False, loop: str = "auto"):
  """Ancestral DDPM from x_T ~ N(0, I): over all T steps by default, or on any sub-grid of them.

  A step from t to the next grid point t' (abar' = 1 after the last) uses the sub-grid's own beta,
  b = 1 - abar_t / abar_t' (beta_t itself on the full grid):
  mu = (x_t - b / sqrt(1 - abar_t) * eps) / sqrt(1 - b) (x0 not clipped); x_t' = mu + sigma z, with no
  noise on the last step.

  Args:
    eps_fn: eps_fn(x_t, t) -> predicted noise.
    schedule: the noise schedule; T = schedule.num_timesteps.
    shape: sample shape, batch first, e.g. (B, H, W, C).
    rng: PRNG key.
    variance: "beta" (sigma^2 = b, official SCDM code) or "posterior"
      (beta tilde, b (1 - abar_t') / (1 - abar_t)).
    num_steps: network calls (default T: every step).
  """
  if variance not in ("beta", "posterior"):
    raise ValueError(f'variance must be "beta" or "posterior", got {variance!r}.')
  num_steps = schedule.num_timesteps if num_steps is None and timesteps is None else num_steps
  shape, ts, start = _prepare(schedule, shape, num_steps, spacing, timesteps, x_T, start_step, strength)
  n = len(ts)
  abar, alpha, sigma = _alpha_sigma(schedule, ts)
  abar_next = jnp.concatenate([abar[1:], jnp.ones((1,), jnp.float32)])
  # Where the grid takes one schedule step (t' = t - 1, or t = 0 to the clean end), the schedule's own
  # betas: the same numbers as the T-step sampler. Elsewhere the sub-grid's.
  one_step = jnp.asarray(np.append(ts[1:] == ts[:-1] - 1, ts[-1] == 0)) & (schedule.alphas_cumprod[ts] > 0)
  beta = jnp.where(one_step, schedule.betas[ts], 1.0 - abar / abar_next)
  step_alpha = jnp.where(one_step, schedule.alphas[ts], abar / abar_next)
  if variance == "beta":
    var = beta
  else:
    var = jnp.where(one_step, schedule.posterior_variance[ts], beta * (1.0 - abar_next) / (1.0 - abar))
  consts = dict(
      t=jnp.asarray(ts), alpha=alpha, sigma=sigma,
      eps_coef=beta / schedule.sqrt_one_minus_alphas_cumprod[ts],
      sqrt_alpha=jnp.sqrt(step_alpha),
      noise=jnp.where(jnp.arange(n) < n - 1, jnp.sqrt(var), 0.0),
  )
  return _drive(_ddpm_step, (eps_fn, x_transform, x0_transform), shape, rng, consts, n, loop, x_T=x_T,
                start=start, return_trajectory=return_trajectory, return_x0_predictions=return_x0_predictions)


def _ddpm_step(state, i, c, fns, shape):
  x, eps, x0 = _predict(state[0], i, c, fns, shape)
  mean = (x - c["eps_coef"][i] * eps) / c["sqrt_alpha"][i]
  return ((mean + c["noise"][i] * _noise(c, i, shape)).astype(jnp.float32),), x0


# ---------------------------------------------------------------------------------------------------
# DDIM.

@_documented
def ddim(eps_fn: EpsFn, schedule: schedules_lib.NoiseSchedule, shape: Sequence[int],
         rng: jax.Array, *, num_steps: int = 50, eta: float = 0.0, spacing: str = "linspace",
         timesteps=None, x_T=None, start_step: int = 0, strength=None,
         x_transform: Optional[XTransform] = None, x0_transform: Optional[XTransform] = None,
         return_trajectory: bool = False, return_x0_predictions: bool = False, loop: str = "auto"):
  """DDIM (Song et al. 2021) from x_T ~ N(0, I), on ``timesteps(schedule, num_steps, spacing)``.

  x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
  sigma = eta sqrt((1 - abar_prev) / (1 - abar) (1 - abar / abar_prev)); after the
  last step abar_prev = 1, so the result is x0_hat at the last grid point.

  Args:
    eps_fn: eps_fn(x_t, t) -> predicted noise.
    schedule: the noise schedule.
    shape: sample shape, batch first, e.g. (B, H, W, C).
    rng: PRNG key.
    num_steps: number of network calls, 1 <= num_steps <= T.
    eta: 0 for deterministic DDIM, 1 for DDPM-like (posterior) noise.
  """
  shape, ts, start = _prepare(schedule, shape, num_steps, spacing, timesteps, x_T, start_step, strength)
  # A Python eta of 0 needs no noise at all (and the RNG is slow to compile on CPU).
  stochastic = isinstance(eta, jax.Array) or float(eta) != 0.0
  abar, alpha, sigma = _alpha_sigma(schedule, ts)
  abar_prev = jnp.concatenate([abar[1:], jnp.ones((1,), jnp.float32)])
  noise = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
  consts = dict(
      t=jnp.asarray(ts), alpha=alpha, sigma=sigma,
      sqrt_abar_prev=jnp.sqrt(abar_prev),
      dir_coef=jnp.sqrt(jnp.maximum(1.0 - abar_prev - noise**2, 0.0)),
      noise=noise,
  )
  step = _ddim_step_stochastic if stochastic else _ddim_step
  return _drive(step, (eps_fn, x_transform, x0_transform), shape, rng, consts, len(ts), loop, x_T=x_T,
                start=start, return_trajectory=return_trajectory, return_x0_predictions=return_x0_predictions)


def _ddim_step(state, i, c, fns, shape, stochastic=False):
  x, eps, x0 = _predict(state[0], i, c, fns, shape)
  x = c["sqrt_abar_prev"][i] * x0 + c["dir_coef"][i] * eps
  if stochastic:
    x = x + c["noise"][i] * _noise(c, i, shape)
  return (x.astype(jnp.float32),), x0


_ddim_step_stochastic = functools.partial(_ddim_step, stochastic=True)


# ---------------------------------------------------------------------------------------------------
# DPM-Solver++ (Lu et al. 2022) in data prediction: multistep, first to third order, and the SDE form.

@_documented
def dpm_solver_pp(eps_fn: EpsFn, schedule: schedules_lib.NoiseSchedule, shape: Sequence[int],
                  rng: jax.Array, *, num_steps: int = 20, spacing: str = "logsnr",
                  timesteps=None, x_T=None, start_step: int = 0, strength=None,
                  x_transform: Optional[XTransform] = None, x0_transform: Optional[XTransform] = None,
                  return_trajectory: bool = False, return_x0_predictions: bool = False, loop: str = "auto"):
  """DPM-Solver++(2M): the probability-flow ODE, multistep second order in x0.

  With alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma), calls at the grid ts and
  D_i = x0_hat(x, ts[i]) from eps_fn, step i goes from s = ts[i] to t = ts[i + 1]:

    x_t = (sigma_t / sigma_s) x_s + (alpha_t - alpha_s sigma_t / sigma_s) D,
    D = (1 + 1 / (2 r)) D_i - 1 / (2 r) D_{i-1},  r = (lambda_s - lambda_prev) / (lambda_t - lambda_s),

  i.e. alpha_t (1 - exp(-h)) with h = lambda_t - lambda_s. The first step has no history and takes
  D = D_i (first order, which is a DDIM step); so does the last, from the last grid point to the clean
  sample (sigma = 0, lambda = inf: r -> 0, the second-order term is undefined), which returns x0_hat there
  as DDIM does. Deterministic: rng only draws x_T, exactly as ``ddim`` does.

  The default spacing is "logsnr", as in the configs: on the exact Gaussian denoiser it is 7x and 12x more
  accurate than "time_uniform" at 10 and 20 steps. eps_fn is called at the solver's own integer t, so
  guidance inside eps_fn (ICMG, the PDT percentile p(t), physics guidance) follows the solver's steps.

  Args:
    eps_fn: eps_fn(x_t, t) -> predicted noise.
    schedule: the noise schedule (discrete; any betas).
    shape: sample shape, batch first, e.g. (B, H, W, C).
    rng: PRNG key.
    num_steps: number of network calls, 1 <= num_steps <= T.
    spacing: see ``timesteps``.
  """
  shape, ts, start = _prepare(schedule, shape, num_steps, spacing, timesteps, x_T, start_step, strength)
  n = len(ts)
  _, alpha, sigma = _alpha_sigma(schedule, ts)
  # The targets of each step; the last lands on the data (alpha 1, sigma 0).
  alpha_t = jnp.concatenate([alpha[1:], jnp.ones((1,), jnp.float32)])
  sigma_t = jnp.concatenate([sigma[1:], jnp.zeros((1,), jnp.float32)])
  lam = jnp.log(alpha) - jnp.log(sigma)
  # r_i = h_{i-1} / h_i for 0 < i < n - 1 (second-order steps).
  h = lam[1:] - lam[:-1]
  inv_2r = jnp.concatenate([jnp.zeros((1,), jnp.float32), h[1:] / (2.0 * h[:-1])])
  second = (np.arange(n) > start) & (np.arange(n) < n - 1)  # history exists, and not the step to the data
  inv_2r = jnp.where(jnp.asarray(second), jnp.pad(inv_2r, (0, n - inv_2r.shape[0])), 0.0)
  consts = dict(
      t=jnp.asarray(ts), alpha=alpha, sigma=sigma,
      ratio=sigma_t / sigma,
      coef=alpha_t - alpha * sigma_t / sigma,
      w_cur=1.0 + inv_2r,
      w_prev=-inv_2r,
  )
  return _drive(_dpm_solver_pp_step, (eps_fn, x_transform, x0_transform), shape, rng, consts, n, loop,
                history=1, x_T=x_T, start=start, return_trajectory=return_trajectory,
                return_x0_predictions=return_x0_predictions)


def _dpm_solver_pp_step(state, i, c, fns, shape):
  x, x0_prev = state
  x, _, x0 = _predict(x, i, c, fns, shape)
  d = c["w_cur"][i] * x0 + c["w_prev"][i] * x0_prev
  x = c["ratio"][i] * x + c["coef"][i] * d
  return (x.astype(jnp.float32), x0), x0


def _dpm_weights(order, alpha_t, h, hs):
  """Weights on (D_i, D_{i-1}, D_{i-2}) of DPM-Solver++'s data term alpha_t * (...) for one step of
  `order`, h = lambda_t - lambda_s and hs = (h_{-1}, h_{-2}) the previous steps' lambda increments."""
  e = -np.expm1(-h)                       # 1 - exp(-h)
  if order == 1:
    return alpha_t * np.array([e, 0.0, 0.0])
  r0 = hs[0] / h
  if order == 2:                          # D = D0 + (D0 - D1) / (2 r0)
    return alpha_t * e * np.array([1 + 0.5 / r0, -0.5 / r0, 0.0])
  r1 = hs[1] / h
  d1_0, d1_1 = np.array([1.0, -1.0, 0.0]) / r0, np.array([0.0, 1.0, -1.0]) / r1
  d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
  d2 = (d1_0 - d1_1) / (r0 + r1)
  phi2 = e / h - 1.0                      # (exp(-h) - 1) / h + 1
  phi3 = -(-e + h) / h**2 + 0.5           # -((exp(-h) - 1 + h) / h^2 - 1/2)
  return alpha_t * (e * np.array([1.0, 0.0, 0.0]) - phi2 * d1 + phi3 * d2)


def _multistep_consts(schedule, ts, order, sde, start):
  """Per-step (ratio, weights (n, 3), noise): x_t = ratio x_s + sum_j w_j D_{i-j} + noise z (float64, then
  float32).

  Orders ramp up from 1 at `start` (no history); the step to the clean sample is first order, and with fewer than
  15 steps the one before it at most second order (lower_order_final, as in the common schedulers).
  The SDE form (SDE-DPM-Solver++) uses exp(-2h) where the ODE has exp(-h) and adds
  sigma_t sqrt(1 - exp(-2h)) fresh noise."""
  n = len(ts)
  alpha, sigma, lam = _lambdas(schedule, ts)
  ratio, weights, noise = np.zeros(n), np.zeros((n, 3)), np.zeros(n)
  for i in range(start, n):
    if i == n - 1:                        # to the data: x = D_i
      weights[i, 0] = 1.0
      continue
    h = lam[i + 1] - lam[i]
    hs = (lam[i] - lam[i - 1] if i >= 1 else 0.0, lam[i - 1] - lam[i - 2] if i >= 2 else 0.0)
    k = min(order, i - start + 1, 2 if (i == n - 2 and n < 15) else order)
    if sde:
      w = np.array([1.0, 0.0, 0.0]) if k == 1 else np.array([1 + 0.5 * h / hs[0], -0.5 * h / hs[0], 0.0])
      ratio[i] = sigma[i + 1] / sigma[i] * np.exp(-h)
      weights[i] = alpha[i + 1] * -np.expm1(-2 * h) * w
      noise[i] = sigma[i + 1] * np.sqrt(-np.expm1(-2 * h))
    else:
      ratio[i] = sigma[i + 1] / sigma[i]
      weights[i] = _dpm_weights(k, alpha[i + 1], h, hs)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return dict(ratio=f32(ratio), weights=f32(weights), noise=f32(noise))


def _multistep(eps_fn, schedule, shape, rng, order, sde, num_steps, spacing, timesteps, x_T, start_step,
               strength, x_transform, x0_transform, return_trajectory, return_x0_predictions, loop):
  shape, ts, start = _prepare(schedule, shape, num_steps, spacing, timesteps, x_T, start_step, strength)
  _, alpha, sigma = _alpha_sigma(schedule, ts)
  consts = dict(t=jnp.asarray(ts), alpha=alpha, sigma=sigma, **_multistep_consts(schedule, ts, order, sde, start))
  step = _sde_multistep_step if sde else _multistep_step
  return _drive(step, (eps_fn, x_transform, x0_transform), shape, rng, consts, len(ts), loop, history=2,
                x_T=x_T, start=start, return_trajectory=return_trajectory,
                return_x0_predictions=return_x0_predictions)


def _multistep_step(state, i, c, fns, shape, sde=False):
  x, d1, d2 = state
  x, _, x0 = _predict(x, i, c, fns, shape)
  w = c["weights"][i]
  x = c["ratio"][i] * x + w[0] * x0 + w[1] * d1 + w[2] * d2
  if sde:
    x = x + c["noise"][i] * _noise(c, i, shape)
  return (x.astype(jnp.float32), x0, d1), x0


_sde_multistep_step = functools.partial(_multistep_step, sde=True)


@_documented
def dpm_solver_pp_3m(eps_fn: EpsFn, schedule: schedules_lib.NoiseSchedule, shape: Sequence[int],
                     rng: jax.Array, *, num_steps: int = 20, spacing: str = "logsnr",
                     timesteps=None, x_T=None, start_step: int = 0, strength=None,
                     x_transform: Optional[XTransform] = None, x0_transform: Optional[XTransform] = None,
                     return_trajectory: bool = False, return_x0_predictions: bool = False, loop: str = "auto"):
  """DPM-Solver++(3M): multistep third order in x0 (Lu et al. 2022, the data-prediction form).

  Step i from s to t (h = lambda_t - lambda_s, r0 = h_{i-1} / h, r1 = h_{i-2} / h):
    x_t = (sigma_t / sigma_s) x_s + alpha_t [e D_i + (1 - e / h) D1 - ((h - e) / h^2 - 1/2) D2],  e = 1 - e^-h,
  D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1), D1_0 = (D_i - D_{i-1}) / r0,
  D1_1 = (D_{i-1} - D_{i-2}) / r1. Orders ramp 1, 2, 3; the final step (to the clean sample) is first
  order and, under 15 steps, the one before it second order. Deterministic (rng draws only x_T).

  These are the published coefficients (the DPM-Solver authors' code, diffusers and k-diffusion use the
  same). Measured on the exact Gaussian flow (tests/test_samplers.py): D2 approximates h^2 D''/2 while the
  Taylor-exact weight of that term is twice the one used, so one step's error is O(h^3) and the error falls
  about 4-6x per doubling of steps (second order asymptotically), not 8x; it still beats 2M from 20 steps
  on (1.7-2.5x lower error at 20-40 logsnr steps). For a higher order per call use ``unipc``.
  """
  return _multistep(eps_fn, schedule, shape, rng, 3, False, num_steps, spacing, timesteps, x_T, start_step,
                    strength, x_transform, x0_transform, return_trajectory, return_x0_predictions, loop)


@_documented
def sde_dpm_solver_pp(eps_fn: EpsFn, schedule: schedules_lib.NoiseSchedule, shape: Sequence[int],
                      rng: jax.Array, *, num_steps: int = 20, spacing: str = "logsnr",
                      timesteps=None, x_T=None, start_step: int = 0, strength=None,
                      x_transform: Optional[XTransform] = None, x0_transform: Optional[XTransform] = None,
                      return_trajectory: bool = False, return_x0_predictions: bool = False,
                      loop: str = "auto"):
  """SDE-DPM-Solver++(2M) (Lu et al. 2022): the reverse SDE, multistep second order (midpoint) in x0:

    x_t = (sigma_t / sigma_s) e^-h x_s + alpha_t (1 - e^-2h) (D_i + (D_i - D_{i-1}) / (2 r))
          + sigma_t sqrt(1 - e^-2h) z,

  z from fold_in(step_rng, i). First order on the first and last steps; the last (to sigma = 0) returns
  x0_hat there without noise.
  """
  return _multistep(eps_fn, schedule, shape, rng, 2, True, num_steps, spacing, timesteps, x_T, start_step,
                    strength, x_transform, x0_transform, return_trajectory, return_x0_predictions, loop)


# ---------------------------------------------------------------------------------------------------
# UniPC (Zhao et al. 2023), bh2, data prediction: a predictor (UniP) and, at no extra network call, a
# corrector (UniC) that refines each state once the network has been called there.

def _unipc_weights(alpha, sigma, lam, a, order, corrector):
  """x_t = ratio x_a + sum_j w[j] m_{a+1-j}, t = a + 1, from the x0 predictions m (m_{a+1} only for the
  corrector): UniP (corrector=False) or UniC of `order`, B(h) = e^{-h} - 1 (bh2)."""
  t = a + 1
  w = np.zeros(5)                       # w[j] weighs m_{a+1-j}
  if not np.isfinite(lam[t]):           # to the data (first order): x = m_a
    w[1] = 1.0
    return 0.0, w
  h = lam[t] - lam[a]
  hh = -h
  h_phi_1 = np.expm1(hh)
  b_h = np.expm1(hh)
  rks = np.array([(lam[a - k] - lam[a]) / h for k in range(1, order)] + [1.0])
  rows, b = [], []
  h_phi_k, factorial = h_phi_1 / hh - 1.0, 1.0
  for k in range(1, order + 1):
    rows.append(rks ** (k - 1))
    b.append(h_phi_k * factorial / b_h)
    factorial *= k + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  rows, b = np.stack(rows), np.array(b)
  w[1] = -alpha[t] * h_phi_1
  if corrector:
    rhos = np.array([0.5]) if order == 1 else np.linalg.solve(rows, b)
    w[0] -= alpha[t] * b_h * rhos[-1]   # D1_t = m_t - m_a
    w[1] += alpha[t] * b_h * rhos[-1]
  elif order >= 2:
    rhos = np.array([0.5]) if order == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1])
  for k in range(1, order):             # D1_k = (m_{a-k} - m_a) / r_k
    w[1 + k] -= alpha[t] * b_h * rhos[k - 1] / rks[k - 1]
    w[1] += alpha[t] * b_h * rhos[k - 1] / rks[k - 1]
  return sigma[t] / sigma[a], w


def _unipc_consts(schedule, ts, order, start):
  """Per grid index i: the corrector of x_i (from x_{i-1} corrected, the order of the predictor that
  reached i) and the predictor to i + 1. Orders ramp up from start and fall to 1 on the final steps
  (min(order, steps done + 1, steps left)), as in the common schedulers; no corrector at start."""
  n = len(ts)
  alpha, sigma, lam = _lambdas(schedule, ts)
  orders = [min(order, i - start + 1, n - i) for i in range(n)]
  keep, c_prev, c_w = np.zeros(n), np.zeros(n), np.zeros((n, 4))
  p_ratio, p_w = np.zeros(n), np.zeros((n, 3))
  for i in range(start, n):
    if i == start:
      keep[i] = 1.0
    else:
      c_prev[i], w = _unipc_weights(alpha, sigma, lam, i - 1, orders[i - 1], corrector=True)
      c_w[i] = w[:4]
    p_ratio[i], w = _unipc_weights(alpha, sigma, lam, i, orders[i], corrector=False)
    p_w[i] = w[1:4]
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return dict(keep=f32(keep), c_prev=f32(c_prev), c_w=f32(c_w), p_ratio=f32(p_ratio), p_w=f32(p_w))


def _unipc_step(state, i, c, fns, shape):
  x, x_prev, m1, m2, m3 = state
  x, _, m0 = _predict(x, i, c, fns, shape)
  cw, pw = c["c_w"][i], c["p_w"][i]
  x = c["keep"][i] * x + c["c_prev"][i] * x_prev + cw[0] * m0 + cw[1] * m1 + cw[2] * m2 + cw[3] * m3
  x_next = c["p_ratio"][i] * x + pw[0] * m0 + pw[1] * m1 + pw[2] * m2
  return (x_next.astype(jnp.float32), x.astype(jnp.float32), m0, m1, m2), m0


@_documented
def unipc(eps_fn: EpsFn, schedule: schedules_lib.NoiseSchedule, shape: Sequence[int],
          rng: jax.Array, *, num_steps: int = 20, order: int = 2, spacing: str = "logsnr",
          timesteps=None, x_T=None, start_step: int = 0, strength=None,
          x_transform: Optional[XTransform] = None, x0_transform: Optional[XTransform] = None,
          return_trajectory: bool = False, return_x0_predictions: bool = False, loop: str = "auto"):
  """UniPC (Zhao et al. 2023) with B(h) = e^{-h} - 1 (bh2), in data prediction, order 2 or 3.

  At each grid point the network is called once; UniC corrects the state just reached with that call's x0
  (the corrected state is the next predictor's start; the network saw the uncorrected one), then UniP
  steps on with the x0 history. The final step (to the clean sample) returns x0_hat at the last grid point.
  Deterministic (rng draws only x_T).

  Args:
    eps_fn: eps_fn(x_t, t) -> predicted noise.
    schedule: the noise schedule.
    shape: sample shape, batch first, e.g. (B, H, W, C).
    rng: PRNG key.
    num_steps: number of network calls, 1 <= num_steps <= T.
    order: 2 or 3 (the predictor's; the corrector adds one).
  """
  if order not in (2, 3):
    raise ValueError(f"UniPC order must be 2 or 3, got {order!r}.")
  shape, ts, start = _prepare(schedule, shape, num_steps, spacing, timesteps, x_T, start_step, strength)
  _, alpha, sigma = _alpha_sigma(schedule, ts)
  consts = dict(t=jnp.asarray(ts), alpha=alpha, sigma=sigma, **_unipc_consts(schedule, ts, order, start))
  return _drive(_unipc_step, (eps_fn, x_transform, x0_transform), shape, rng, consts, len(ts), loop,
                history=4, x_T=x_T, start=start, return_trajectory=return_trajectory,
                return_x0_predictions=return_x0_predictions)


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpm_solver_pp": dpm_solver_pp, "dpm_solver_pp_3m": dpm_solver_pp_3m,
            "sde_dpm_solver_pp": sde_dpm_solver_pp, "unipc": unipc}
