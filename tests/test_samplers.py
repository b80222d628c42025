"""Tests for spectral_diffusion.samplers against the exact denoiser of Gaussian data.

If x0 ~ N(mu, s^2) per dimension, x_t ~ N(sqrt(abar) mu, abar s^2 + 1 - abar) and the
exact eps(x_t, t) = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar).
Every sampler step is then affine in x, so the output moments are known exactly
(``_affine_moments``); and at enough steps they must approach (mu, s).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from conftest import raises_one_line
from spectral_diffusion import samplers
from spectral_diffusion import sampling
from spectral_diffusion import schedules

MU = np.array([0.5, -1.0])
S = np.array([0.5, 2.0])
N = 20000  # Samples per channel.
SHAPE = (N, 1, 1, 2)


def _gaussian_eps_fn(schedule, mu=MU, s=S):
  mu, s = jnp.asarray(mu, jnp.float32), jnp.asarray(s, jnp.float32)

  def eps_fn(x, t):
    abar = schedule.alphas_cumprod[t][:, None, None, None]
    return jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * mu) / (abar * s**2 + 1 - abar)

  return eps_fn


def _steps(kind, betas, mu, s, num_steps=None, eta=0.0, variance="beta"):
  """Float64 per-step (A, B, sigma): x_next = A x + B + sigma z."""
  abar_all = np.cumprod(1.0 - betas)
  steps = []
  if kind == "ddpm":
    ts = np.arange(len(betas) - 1, -1, -1)
  else:
    ts = samplers.ddim_timesteps(len(betas), num_steps)
  for i, t in enumerate(ts):
    ab = abar_all[t]
    k = np.sqrt(1 - ab) / (ab * s**2 + 1 - ab)  # eps = k x + e0.
    e0 = -k * np.sqrt(ab) * mu
    if kind == "ddpm":
      c = betas[t] / np.sqrt(1 - ab)
      a = 1 - betas[t]
      ab_prev = abar_all[t - 1] if t > 0 else 1.0
      var = betas[t] if variance == "beta" else betas[t] * (1 - ab_prev) / (1 - ab)
      steps.append(((1 - c * k) / np.sqrt(a), -c * e0 / np.sqrt(a),
                    np.sqrt(var) if t > 0 else 0.0))
    else:
      ap = abar_all[ts[i + 1]] if i + 1 < len(ts) else 1.0
      sig = eta * np.sqrt((1 - ap) / (1 - ab) * (1 - ab / ap))
      x0a, x0b = (1 - np.sqrt(1 - ab) * k) / np.sqrt(ab), -np.sqrt(1 - ab) * e0 / np.sqrt(ab)
      d = np.sqrt(max(1 - ap - sig**2, 0.0))
      steps.append((np.sqrt(ap) * x0a + d * k, np.sqrt(ap) * x0b + d * e0, sig))
  return steps


def _affine_moments(steps):
  """(mean, std, A_total, B_total) of the output, starting from N(0, 1)."""
  a_tot, b_tot, var = 1.0, 0.0, 1.0
  m = 0.0
  for a, b, sig in steps:
    m = a * m + b
    var = a * a * var + sig**2
    a_tot, b_tot = a * a_tot, a * b_tot + b
  return m, np.sqrt(var), a_tot, b_tot


def _per_channel(x):
  x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  return x.mean(0), x.std(0)


def _check_exact_moments(x, kind, schedule, **kw):
  """Sample moments equal the exact affine-propagated ones (statistics only)."""
  betas = np.asarray(schedule.betas, np.float64)
  mean, std = _per_channel(x)
  for c in range(len(MU)):
    m, sd, _, _ = _affine_moments(_steps(kind, betas, MU[c], S[c], **kw))
    se_m, se_s = sd / np.sqrt(N), sd / np.sqrt(2 * N)
    assert abs(mean[c] - m) < 5 * se_m, (c, mean[c], m)
    assert abs(std[c] - sd) < 5 * se_s, (c, std[c], sd)


def _check_target_moments(x, rel_tol):
  """Sample moments match (MU, S) up to statistics plus rel_tol * S of discretisation."""
  mean, std = _per_channel(x)
  np.testing.assert_array_less(np.abs(mean - MU), 5 * S / np.sqrt(N) + rel_tol * S)
  np.testing.assert_array_less(np.abs(std - S), 5 * S / np.sqrt(2 * N) + rel_tol * S)


@pytest.fixture(scope="module")
def sched():
  return schedules.linear()


@pytest.mark.parametrize("variance,loop", [("beta", "scan"), ("posterior", "python")])
def test_ddpm_samples_gaussian(sched, variance, loop):
  x = samplers.ddpm(_gaussian_eps_fn(sched), sched, SHAPE, jax.random.PRNGKey(0),
                    variance=variance, loop=loop)
  assert x.shape == SHAPE and x.dtype == jnp.float32
  _check_exact_moments(x, "ddpm", sched, variance=variance)
  _check_target_moments(x, rel_tol=0.02)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_samples_gaussian(sched, eta):
  eps_fn = _gaussian_eps_fn(sched)
  x = samplers.ddim(eps_fn, sched, SHAPE, jax.random.PRNGKey(1), num_steps=50, eta=eta)
  _check_exact_moments(x, "ddim", sched, num_steps=50, eta=eta)
  # 50 DDIM steps shrink the std by a few percent even with the exact eps.
  x = samplers.ddim(eps_fn, sched, SHAPE, jax.random.PRNGKey(2), num_steps=250, eta=eta)
  _check_target_moments(x, rel_tol=0.04)


def test_ddim_eta0_is_deterministic_probability_flow(sched):
  eps_fn = _gaussian_eps_fn(sched)
  rng = jax.random.PRNGKey(3)
  shape = (2000, 1, 1, 2)
  x = samplers.ddim(eps_fn, sched, shape, rng, num_steps=250)
  np.testing.assert_array_equal(x, samplers.ddim(eps_fn, sched, shape, rng, num_steps=250))
  x_T = np.asarray(jax.random.normal(jax.random.split(rng)[0], shape), np.float64)
  betas = np.asarray(sched.betas, np.float64)
  abar_T = np.prod(1 - betas)
  for c in range(2):
    # The sampler's own affine map, exactly.
    _, _, a, b = _affine_moments(_steps("ddim", betas, MU[c], S[c], num_steps=250))
    np.testing.assert_allclose(x[..., c], a * x_T[..., c] + b, atol=2e-3 * S[c])
    # The closed-form probability-flow endpoint, up to discretisation.
    flow = MU[c] + S[c] * (x_T[..., c] - np.sqrt(abar_T) * MU[c]) / np.sqrt(
        abar_T * S[c]**2 + 1 - abar_T)
    np.testing.assert_allclose(x[..., c], flow, atol=0.06 * S[c])


def _tanh_eps_fn(x, t):
  return jnp.tanh(x) * (1.0 + t[:, None, None, None].astype(jnp.float32) / 100.0)


def test_scan_and_python_loops_agree():
  s = schedules.linear(100)
  shape = (3, 4, 4, 2)
  rng = jax.random.PRNGKey(4)
  a = samplers.ddpm(_tanh_eps_fn, s, shape, rng, variance="posterior", loop="scan")
  b = samplers.ddpm(_tanh_eps_fn, s, shape, rng, variance="posterior", loop="python")
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  a = samplers.ddim(_tanh_eps_fn, s, shape, rng, num_steps=20, eta=1.0, loop="scan")
  b = samplers.ddim(_tanh_eps_fn, s, shape, rng, num_steps=20, eta=1.0, loop="python")
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_auto_loop_and_outer_jit():
  assert samplers._resolve_loop("auto") == ("python" if jax.default_backend() == "cpu"
                                            else "scan")
  with pytest.raises(ValueError):
    samplers._resolve_loop("while")
  s = schedules.linear(50)
  shape = (2, 3, 3, 1)
  rng = jax.random.PRNGKey(6)
  eager = samplers.ddim(_tanh_eps_fn, s, shape, rng, num_steps=10, eta=1.0)
  jitted = jax.jit(lambda r: samplers.ddim(_tanh_eps_fn, s, shape, r, num_steps=10, eta=1.0))
  np.testing.assert_allclose(jitted(rng), eager, rtol=1e-5, atol=1e-5)


def test_x_transform_is_applied_and_is_the_state():
  s = schedules.linear(50)
  shape = (4, 2, 2, 2)
  rng = jax.random.PRNGKey(7)
  eps_fn = lambda x, t: 0.3 * x
  seen = []

  def zero_channel0(x, t):
    seen.append(t.shape)
    return x.at[..., 0].set(0.0)

  # Channel 0 is zero before each call, eps is elementwise, so it stays exactly 0
  # (the last DDPM step adds no noise; DDIM and DPM-Solver++ end on x0_hat); channel 1 is untouched.
  for sample, loop in (
      (lambda **kw: samplers.ddpm(eps_fn, s, shape, rng, **kw), "python"),
      (lambda **kw: samplers.ddim(eps_fn, s, shape, rng, num_steps=10, eta=1.0, **kw), "scan"),
      (lambda **kw: samplers.dpm_solver_pp(eps_fn, s, shape, rng, num_steps=10, **kw), "python")):
    x = sample(x_transform=zero_channel0, loop=loop)
    ref = sample(loop=loop)
    np.testing.assert_array_equal(x[..., 0], 0.0)
    np.testing.assert_allclose(x[..., 1], ref[..., 1], rtol=1e-6)
    assert not np.allclose(ref[..., 0], 0.0)
  assert seen and all(shp == (4,) for shp in seen)


def test_ddim_timesteps():
  ts = samplers.ddim_timesteps(1000, 50)
  assert ts.dtype == np.int32 and ts.shape == (50,)
  assert ts[0] == 999 and ts[-1] == 0
  assert np.all(np.diff(ts) < 0)
  for t, n in ((10, 10), (100, 7), (1000, 999), (1000, 3), (7, 2)):
    ts = samplers.ddim_timesteps(t, n)
    assert ts[0] == t - 1 and ts[-1] == 0 and np.all(np.diff(ts) < 0), (t, n, ts)
  np.testing.assert_array_equal(samplers.ddim_timesteps(10, 10), np.arange(9, -1, -1))
  for n in (0, 1001):
    with pytest.raises(ValueError):
      samplers.ddim_timesteps(1000, n)


def test_bad_arguments_raise():
  s = schedules.linear(10)
  with pytest.raises(ValueError):
    samplers.ddpm(_tanh_eps_fn, s, (1, 2), jax.random.PRNGKey(0), variance="fixed")
  with pytest.raises(ValueError):
    samplers.ddim(_tanh_eps_fn, s, (1, 2), jax.random.PRNGKey(0), loop="nope")


def test_partial_eps_fn_reuses_the_compiled_step():
  """A tree_util.Partial of a hashable function is traced once, whatever arrays it carries."""
  import dataclasses

  traces = []

  @dataclasses.dataclass(frozen=True)
  class Scaled:
    def __call__(self, a, x_t, t):
      traces.append(1)
      return a * x_t

  schedule = schedules.linear(20)
  for a in (0.1, 0.2, 0.3):
    eps_fn = jax.tree_util.Partial(Scaled(), jnp.float32(a))
    samplers.ddim(eps_fn, schedule, (2, 3), jax.random.key(0), num_steps=4, loop="python")
  assert len(traces) == 1


def _flow_then_tweedie(x_T, schedule, mu=MU, s=S):
  """Where every sampler that ends on x0_hat(x, t=0) converges for Gaussian data: the exact probability-flow
  map from t = T-1 to t = 0, z = (x - alpha mu) / sqrt(alpha^2 s^2 + sigma^2) being constant along it, then
  the exact E[x0 | x_0] (the final step to the clean sample is an exact function of x at t = 0)."""
  abar = np.cumprod(1 - np.asarray(schedule.betas, np.float64))
  a_T, a_0 = abar[-1], abar[0]
  z = (x_T - np.sqrt(a_T) * mu) / np.sqrt(a_T * s**2 + 1 - a_T)
  x_0 = np.sqrt(a_0) * mu + np.sqrt(a_0 * s**2 + 1 - a_0) * z
  return mu + np.sqrt(a_0) * s**2 * (x_0 - np.sqrt(a_0) * mu) / (a_0 * s**2 + 1 - a_0)


def _ode_errors(sampler, sched, steps, **kw):
  shape, rng = (256, 1, 1, 2), jax.random.PRNGKey(11)
  x_T = np.asarray(jax.random.normal(jax.random.split(rng)[0], shape), np.float64)
  ref = _flow_then_tweedie(x_T, sched)
  eps_fn = _gaussian_eps_fn(sched)
  return np.array([np.max(np.abs(np.asarray(sampler(eps_fn, sched, shape, rng, num_steps=n, loop="python",
                                                    **kw), np.float64) - ref), axis=(0, 1, 2)) / S
                   for n in steps])


def test_dpm_solver_pp_is_second_order_and_beats_ddim(sched):
  steps = (20, 40, 80)
  dpm = _ode_errors(samplers.dpm_solver_pp, sched, steps, spacing="logsnr")
  ddim = _ode_errors(samplers.ddim, sched, steps)
  # Halving the step size: the error falls ~4x (second order); DDIM's (first order) ~2x.
  for ratio in dpm[:-1] / dpm[1:]:
    assert np.all((3.3 < ratio) & (ratio < 5.0)), dpm
  for ratio in ddim[:-1] / ddim[1:]:
    assert np.all((1.6 < ratio) & (ratio < 2.5)), ddim
  assert np.all(dpm * 4 < ddim), (dpm, ddim)
  # Time-uniform steps reach the same order once the steps are small against lambda's curvature near t=0.
  tu = _ode_errors(samplers.dpm_solver_pp, sched, (80, 160), spacing="time_uniform")
  assert np.all((3.3 < tu[0] / tu[1]) & (tu[0] / tu[1] < 5.0)), tu


def test_dpm_solver_pp_first_order_steps_are_ddim(sched):
  # With 1 or 2 calls every step is first order (no history / the final step to sigma = 0): exactly DDIM,
  # from the same x_T for the same rng.
  eps_fn, rng, shape = _gaussian_eps_fn(sched), jax.random.PRNGKey(12), (64, 1, 1, 2)
  for n in (1, 2):
    np.testing.assert_allclose(samplers.dpm_solver_pp(eps_fn, sched, shape, rng, num_steps=n),
                               samplers.ddim(eps_fn, sched, shape, rng, num_steps=n), rtol=1e-5, atol=1e-5)


def test_dpm_solver_pp_loops_and_outer_jit_agree():
  s = schedules.linear(100)
  shape, rng = (3, 4, 4, 2), jax.random.PRNGKey(13)
  run = lambda r, loop: samplers.dpm_solver_pp(_tanh_eps_fn, s, shape, r, num_steps=7, spacing="logsnr",
                                               loop=loop)
  a, b = run(rng, "scan"), run(rng, "python")
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(lambda r: run(r, "auto"))(rng), b, rtol=1e-5, atol=1e-5)


def test_dpm_solver_pp_calls_eps_fn_at_its_own_timesteps(sched):
  """Guidance inside eps_fn (ICMG, the PDT percentile p(t)) sees the solver's t, once per step."""
  seen = []

  def eps_fn(x, t):
    jax.debug.callback(lambda tt: seen.append(int(tt[0])), t)
    return 0.1 * x

  for spacing in ("time_uniform", "logsnr"):
    seen.clear()
    samplers.dpm_solver_pp(eps_fn, sched, (2, 3), jax.random.PRNGKey(0), num_steps=12, spacing=spacing,
                           loop="python")
    jax.effects_barrier()
    np.testing.assert_array_equal(seen, samplers.dpm_solver_timesteps(sched, 12, spacing))


def test_dpm_solver_timesteps(sched):
  np.testing.assert_array_equal(samplers.dpm_solver_timesteps(sched, 50, "time_uniform"),
                                samplers.ddim_timesteps(1000, 50))
  abar = np.asarray(sched.alphas_cumprod, np.float64)
  lam = 0.5 * np.log(abar / (1 - abar))
  for n in (3, 10, 50, 100, 999, 1000):
    ts = samplers.dpm_solver_timesteps(sched, n, "logsnr")
    assert ts.dtype == np.int32 and ts.shape == (n,) and ts[0] == 999 and ts[-1] == 0, (n, ts)
    assert np.all(np.diff(ts) < 0), (n, ts)
  # Away from the collisions near t = 0, lambda steps are equal up to the integer grid's rounding.
  ts = samplers.dpm_solver_timesteps(sched, 10, "logsnr")
  dlam = np.diff(lam[ts])
  np.testing.assert_allclose(dlam[:-2], (lam[0] - lam[-1]) / 9, rtol=0.05)
  with pytest.raises(ValueError):
    samplers.dpm_solver_timesteps(sched, 10, "cosine")
  with pytest.raises(ValueError):
    samplers.dpm_solver_timesteps(sched, 0, "logsnr")


def test_config_dispatch_names_the_samplers(sched):
  cfg = default.get_config().sample
  eps_fn, rng = _gaussian_eps_fn(sched), jax.random.PRNGKey(14)
  cfg.sampler, cfg.num_steps = "dpm_solver_pp", 5
  np.testing.assert_array_equal(
      sampling.run_sampler(sampling.SampleSettings.from_config(cfg), eps_fn, sched, (2, 1, 1, 2), rng),
      samplers.dpm_solver_pp(eps_fn, sched, (2, 1, 1, 2), rng, num_steps=5, spacing=cfg.spacing))
  for field, value, match in (("sampler", "euler", "dpm_solver_pp"), ("spacing", "karras", "logsnr"),
                              ("num_steps", 0, ">= 1"), ("batch_size", 0, ">= 1"), ("pdt_target", "x", "state"),
                              ("tile_overlap", -1, ">= 0"), ("program", "jit", "compiled"),
                              ("pdt_p_start", (0.9, 1.5), r"\(0, 1\]"), ("colour", 1, "unknown sample")):
    raises_one_line(sampling.SampleSettings.from_config, cfg, match=match, **{field: value})
  too_many = sampling.SampleSettings.from_config(cfg, num_steps=2000)
  raises_one_line(sampling.run_sampler, too_many, eps_fn, sched, (2, 1, 1, 2), rng, match="1 to 1000")


def test_python_loop_compiles_one_step_for_every_step_count():
  traces = []

  def eps_fn(x, t):
    traces.append(1)
    return 0.1 * x

  eps_fn = jax.tree_util.Partial(eps_fn)
  schedule = schedules.linear(50)
  for n in (3, 7, 50):
    samplers.dpm_solver_pp(eps_fn, schedule, (2, 3), jax.random.key(0), num_steps=n, loop="python")
  samplers.ddpm(eps_fn, schedule, (2, 3), jax.random.key(0), loop="python")
  assert len(traces) == 2  # one step function each
