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
  for field, value, match in (("sampler", "euler", "dpm_solver_pp"), ("spacing", "cosine", "karras"), ("unipc_order", 4, "2 or 3"),
                              ("num_steps", 0, ">= 1"), ("batch_size", 0, ">= 1"), ("pdt_target", "x", "state"),
                              ("estimator", "median", "sample, mean"), ("tile_overlap", -1, ">= 0"), ("program", "jit", "compiled"),
                              ("pdt_p_start", (0.9, 1.5), r"\(0, 1\]"), ("colour", 1, "unknown sample")):
    raises_one_line(sampling.SampleSettings.from_config, cfg, match=match, **{field: value})
  too_many = sampling.SampleSettings.from_config(cfg, num_steps=2000)
  raises_one_line(sampling.run_sampler, too_many, eps_fn, sched, (2, 1, 1, 2), rng, match="1 to 1000")


def test_estimators_from_draws():
  """sample = one draw (or a stack), mean = the mean of num_samples draws with the same keys; values equal
  in every draw (observed bands) come back bit for bit."""
  rng = jax.random.key(3)
  exact = np.float32([0.1, 1 / 3, 7.7, 1e-3])

  def draw(key):
    out = np.array(jax.random.uniform(key, (4, 3)), np.float32)
    out[:, 0] = exact
    return out

  one = sampling.estimate(draw, rng, "sample", 1)
  np.testing.assert_array_equal(one, draw(rng))
  stack = sampling.estimate(draw, rng, "sample", 3)
  assert stack.shape == (3, 4, 3)
  np.testing.assert_array_equal(stack[2], draw(jax.random.fold_in(rng, 2)))
  mean = sampling.estimate(draw, rng, "mean", 3)
  assert mean.shape == (4, 3) and mean.dtype == np.float32
  np.testing.assert_allclose(mean, stack.mean(axis=0), rtol=1e-6)
  np.testing.assert_array_equal(mean[:, 0], exact)
  np.testing.assert_array_equal(sampling.estimate(draw, rng, "mean", 1), one)
  first, avg = sampling.sample_and_mean(lambda k: [draw(k), draw(k)[:1]], sampling.sample_keys(rng, 3))
  np.testing.assert_array_equal(first[0], stack[0])
  np.testing.assert_array_equal(avg[0], mean)
  raises_one_line(sampling.estimate, draw, rng, "median", 2, match="sample, mean")
  raises_one_line(sampling.estimate, draw, rng, "mean", 0, match=">= 1")
  assert default.get_config().sample.estimator == "sample"
  assert sampling.SampleSettings(estimator="mean", num_samples=4).num_draws() == 4
  assert sampling.SampleSettings(num_samples=4).num_draws() == 1


def test_keep_observed_numpy_and_jax():
  out = np.zeros((2, 3, 5), np.float32)
  given = np.arange(12, dtype=np.float32).reshape(2, 3, 2) / 7
  assert sampling.keep_observed(out, given, [4, 1]) is out   # numpy: in place
  np.testing.assert_array_equal(out[..., [4, 1]], given)
  assert not out[..., [0, 2, 3]].any()
  got = jax.jit(lambda o, g: sampling.keep_observed(o, g, (4, 1)))(jnp.zeros((2, 3, 5)), given)
  np.testing.assert_array_equal(np.asarray(got), out)


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


# ---------------------------------------------------------------------------------------------------
# The sampler API beyond the update rules: grids, start states, trajectories, prediction types,
# x0 transforms, dtypes, compile caching; every new solver against the closed forms.

ALL = {"ddim": samplers.ddim, "ddpm": samplers.ddpm, "dpm_solver_pp": samplers.dpm_solver_pp,
       "dpm_solver_pp_3m": samplers.dpm_solver_pp_3m, "sde_dpm_solver_pp": samplers.sde_dpm_solver_pp,
       "unipc": samplers.unipc}


def test_timesteps_spacings(sched):
  np.testing.assert_array_equal(samplers.timesteps(sched, 50, "linspace"), samplers.ddim_timesteps(1000, 50))
  np.testing.assert_array_equal(samplers.timesteps(sched, 10, "leading"), np.arange(900, -1, -100))
  np.testing.assert_array_equal(samplers.timesteps(sched, 10, "trailing"), np.arange(999, 0, -100))
  np.testing.assert_array_equal(samplers.timesteps(sched, 3, "trailing"), [999, 666, 332])
  abar = np.asarray(sched.alphas_cumprod, np.float64)
  sigma = np.sqrt((1 - abar) / abar)
  for spacing in samplers.SPACINGS:
    for n in (1, 2, 5, 20, 100, 1000):
      ts = samplers.timesteps(sched, n, spacing)
      assert ts.dtype == np.int32 and ts.shape == (n,), (spacing, n)
      assert np.all(np.diff(ts) < 0) and 0 <= ts[-1] and ts[0] <= 999, (spacing, n, ts)
  # Karras: rho = 7 between sigma(T-1) and sigma(0), nearest integer t where the grid is coarse enough.
  ts = samplers.timesteps(sched, 10, "karras")
  ramp = np.linspace(0, 1, 10)
  want = (sigma[-1] ** (1 / 7) + ramp * (sigma[0] ** (1 / 7) - sigma[-1] ** (1 / 7))) ** 7
  assert ts[0] == 999 and ts[-1] == 0
  np.testing.assert_allclose(sigma[ts[:6]], want[:6], rtol=0.02)
  for bad in ("cosine", "Karras"):
    with pytest.raises(ValueError, match="spacing"):
      samplers.timesteps(sched, 10, bad)


def _seen_timesteps(sampler, **kw):
  seen = []

  def eps_fn(x, t):
    jax.debug.callback(lambda tt: seen.append(int(tt[0])), t)
    return 0.1 * x

  sampler(eps_fn, schedules.linear(1000), (2, 3), jax.random.PRNGKey(0), loop="python", **kw)
  jax.effects_barrier()
  return seen


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_sampler_takes_timesteps_or_a_spacing(name, sched):
  sampler = ALL[name]
  assert _seen_timesteps(sampler, timesteps=[900, 500, 101, 3]) == [900, 500, 101, 3]
  assert _seen_timesteps(sampler, num_steps=6, spacing="karras") == list(samplers.timesteps(sched, 6, "karras"))
  assert _seen_timesteps(sampler, num_steps=10, strength=0.3, x_T=np.zeros((2, 3))) == list(
      samplers.timesteps(sched, 10, "linspace" if name in ("ddim", "ddpm") else "logsnr")[7:])
  for bad in ([5, 10], [1000, 3], [3, -1], [], [[3, 2]]):
    with pytest.raises(ValueError, match="timesteps"):
      sampler(lambda x, t: x, sched, (2, 3), jax.random.PRNGKey(0), timesteps=bad)
  for kw, match in ((dict(start_step=2), "x_T"), (dict(start_step=2, strength=0.5), "not both"),
                    (dict(strength=0.0), r"\(0, 1\]"), (dict(start_step=50, x_T=np.zeros((2, 3))), "start_step"),
                    (dict(x_T=np.zeros((3, 3))), "x_T has shape")):
    with pytest.raises(ValueError, match=match):
      sampler(lambda x, t: x, sched, (2, 3), jax.random.PRNGKey(0), num_steps=10, **kw)


def test_x_T_given_is_the_internal_draw(sched):
  rng, shape = jax.random.PRNGKey(21), (16, 1, 1, 2)
  x_T = jax.random.normal(jax.random.split(rng)[0], shape)
  eps_fn = _gaussian_eps_fn(sched)
  for name, sampler in ALL.items():
    kw = {} if name == "ddpm" else {"num_steps": 8}
    np.testing.assert_array_equal(sampler(eps_fn, sched, shape, rng, x_T=x_T, **kw),
                                  sampler(eps_fn, sched, shape, rng, **kw), err_msg=name)


def _flow_from(x_t, t, schedule, mu=MU, s=S):
  """Closed form: the exact probability-flow endpoint from x_t at t (z = (x - alpha mu) / sqrt(alpha^2 s^2 +
  sigma^2) is constant along the flow), then E[x0 | x at t = 0]."""
  abar = np.cumprod(1 - np.asarray(schedule.betas, np.float64))
  a_t, a_0 = abar[t], abar[0]
  z = (x_t - np.sqrt(a_t) * mu) / np.sqrt(a_t * s**2 + 1 - a_t)
  x_0 = np.sqrt(a_0) * mu + np.sqrt(a_0 * s**2 + 1 - a_0) * z
  return mu + np.sqrt(a_0) * s**2 * (x_0 - np.sqrt(a_0) * mu) / (a_0 * s**2 + 1 - a_0)


@pytest.mark.parametrize("name", ["ddim", "dpm_solver_pp", "dpm_solver_pp_3m", "unipc"])
def test_start_step_continues_the_flow_from_a_noised_state(name, sched):
  """SDEdit: data noised to timesteps[k] by q_sample, then the solver from grid point k: the exact flow
  from there (closed form), to the solver's accuracy; and the stochastic samplers keep the data law."""
  shape, rng = (4000, 1, 1, 2), jax.random.PRNGKey(22)
  x0 = MU + S * np.asarray(jax.random.normal(jax.random.PRNGKey(23), shape))
  n, k = 100, 60
  ts = samplers.timesteps(sched, n, "logsnr")
  noise = jax.random.normal(jax.random.PRNGKey(24), shape)
  x_t = schedules.q_sample(sched, jnp.asarray(x0, jnp.float32), jnp.full((shape[0],), ts[k], jnp.int32), noise)
  out = ALL[name](_gaussian_eps_fn(sched), sched, shape, rng, timesteps=ts, start_step=k, x_T=x_t)
  ref = _flow_from(np.asarray(x_t, np.float64), ts[k], sched)
  err = np.max(np.abs(np.asarray(out) - ref), axis=(0, 1, 2)) / S
  assert np.all(err < (0.06 if name == "ddim" else 6e-3)), (name, err)  # 40 steps of each solver
  assert not np.allclose(np.asarray(out), x0, atol=0.05)  # it is a new sample, not the input


@pytest.mark.parametrize("name", ["ddpm", "sde_dpm_solver_pp"])
def test_stochastic_samplers_from_a_noised_state_keep_the_data_law(name, sched):
  shape, rng = SHAPE, jax.random.PRNGKey(25)
  x0 = MU + S * np.asarray(jax.random.normal(jax.random.PRNGKey(26), shape))
  ts = samplers.timesteps(sched, 200, "linspace") if name == "ddpm" else samplers.timesteps(sched, 50, "logsnr")
  k = len(ts) // 2
  x_t = schedules.q_sample(sched, jnp.asarray(x0, jnp.float32), jnp.full((shape[0],), ts[k], jnp.int32),
                           jax.random.normal(jax.random.PRNGKey(27), shape))
  _check_target_moments(ALL[name](_gaussian_eps_fn(sched), sched, shape, rng, timesteps=ts, start_step=k,
                                  x_T=x_t), rel_tol=0.02)


def _posterior_mean(x, t, schedule, mu=MU, s=S):
  a = np.asarray(schedule.alphas_cumprod, np.float64)[t]
  return mu + np.sqrt(a) * s**2 * (x - np.sqrt(a) * mu) / (a * s**2 + 1 - a)


@pytest.mark.parametrize("loop", ["python", "scan"])
def test_trajectory_and_x0_predictions(loop, sched):
  """The states before every step and each step's x0 (the exact posterior mean of the state it saw)."""
  shape, rng, n = (64, 1, 1, 2), jax.random.PRNGKey(28), 12
  ts = samplers.timesteps(sched, n, "logsnr")
  x_T = np.asarray(jax.random.normal(jax.random.split(rng)[0], shape))
  for name in ("ddim", "dpm_solver_pp_3m", "unipc", "sde_dpm_solver_pp"):
    x, states, x0s = ALL[name](_gaussian_eps_fn(sched), sched, shape, rng, timesteps=ts, loop=loop,
                               return_trajectory=True, return_x0_predictions=True)
    assert states.shape == x0s.shape == (n,) + shape and states.dtype == jnp.float32
    np.testing.assert_array_equal(states[0], x_T)
    for i in range(n):
      np.testing.assert_allclose(x0s[i], _posterior_mean(np.asarray(states[i], np.float64), ts[i], sched),
                                 rtol=2e-4, atol=2e-4, err_msg=f"{name} step {i}")
    np.testing.assert_allclose(x, x0s[-1], rtol=1e-6, atol=1e-6)  # the last step returns x0_hat
    only = ALL[name](_gaussian_eps_fn(sched), sched, shape, rng, timesteps=ts, loop=loop, return_trajectory=True)
    np.testing.assert_array_equal(only[1], states)
  # Partial runs keep only their own steps.
  _, states = samplers.ddim(_gaussian_eps_fn(sched), sched, shape, rng, timesteps=ts, start_step=4, x_T=x_T,
                            return_trajectory=True, loop=loop)
  assert states.shape == (n - 4,) + shape
  np.testing.assert_array_equal(states[0], x_T)


def test_prediction_types_give_the_same_samples(sched):
  """An exact x0- or v-predicting function, adapted by predictions, samples like the exact eps_fn."""
  from spectral_diffusion import predictions
  mu, s = jnp.asarray(MU, jnp.float32), jnp.asarray(S, jnp.float32)

  def x0_fn(x, t):
    a = sched.alphas_cumprod[t][:, None, None, None]
    return mu + jnp.sqrt(a) * s**2 * (x - jnp.sqrt(a) * mu) / (a * s**2 + 1 - a)

  def v_fn(x, t):  # v = sqrt(abar) eps - sqrt(1 - abar) x0
    a = sched.alphas_cumprod[t][:, None, None, None]
    return (jnp.sqrt(a) * x - x0_fn(x, t)) / jnp.sqrt(1 - a)

  shape, rng = (256, 1, 1, 2), jax.random.PRNGKey(29)
  ref = samplers.unipc(_gaussian_eps_fn(sched), sched, shape, rng, num_steps=15)
  for eps_fn in (predictions.eps_from_x0(sched, x0_fn), predictions.eps_from_v(sched, v_fn)):
    np.testing.assert_allclose(samplers.unipc(eps_fn, sched, shape, rng, num_steps=15), ref, rtol=2e-4, atol=2e-4)
  x = jax.random.normal(jax.random.PRNGKey(30), shape)
  t = jnp.full((shape[0],), 400, jnp.int32)
  np.testing.assert_allclose(predictions.x0_from_eps(sched, _gaussian_eps_fn(sched))(x, t), x0_fn(x, t),
                             rtol=1e-5, atol=1e-5)
  for kind, out in (("eps", _gaussian_eps_fn(sched)(x, t)), ("x0", x0_fn(x, t)), ("v", v_fn(x, t))):
    np.testing.assert_allclose(predictions.to_x0(sched, kind, x, t, out), x0_fn(x, t), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(predictions.to_eps(sched, kind, x, t, out), _gaussian_eps_fn(sched)(x, t),
                               rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="prediction"):
    predictions.to_eps(sched, "score", x, t, x)


def test_x0_transform_is_the_prediction_every_sampler_uses(sched):
  """Clipping x0 to [lo, hi]: every step's x0 lies there, and so does the sample (the last step returns it)."""
  from spectral_diffusion import guidance
  shape, rng = (512, 1, 1, 2), jax.random.PRNGKey(31)
  clip = guidance.clip_x0(-0.5, 1.0)
  for name, sampler in ALL.items():
    kw = {"num_steps": 10} if name != "ddpm" else {"num_steps": 50}
    x, x0s = sampler(_gaussian_eps_fn(sched), sched, shape, rng, x0_transform=clip, return_x0_predictions=True, **kw)
    assert float(x0s.min()) >= -0.5 and float(x0s.max()) <= 1.0, name
    assert float(x.min()) >= -0.5 - 1e-4 and float(x.max()) <= 1.0 + 1e-4, name  # DDPM: eps form, round-off
    assert float(np.mean(np.abs(np.asarray(x[..., 1]) + 0.5) < 1e-4)) > 0.1, name  # N(-1, 2^2) piles up at -0.5


def test_bfloat16_eps_fn_keeps_a_float32_state(sched):
  eps32 = _gaussian_eps_fn(sched)
  eps16 = lambda x, t: eps32(x.astype(jnp.bfloat16), t).astype(jnp.bfloat16)
  shape, rng = (256, 1, 1, 2), jax.random.PRNGKey(32)
  for name, sampler in ALL.items():
    kw = {"num_steps": 20} if name != "ddpm" else {"num_steps": 100}
    x, states = sampler(eps16, sched, shape, rng, return_trajectory=True, **kw)
    assert x.dtype == states.dtype == jnp.float32, name
    np.testing.assert_allclose(x, sampler(eps32, sched, shape, rng, **kw), atol=0.05 * S.max(), err_msg=name)


@pytest.mark.parametrize("loop", ["python", "scan"])
def test_the_same_closure_twice_is_traced_once(loop):
  traces = []
  schedule = schedules.linear(50)

  def eps_fn(x, t):  # a plain closure: no Partial, no dataclass
    traces.append(1)
    return 0.1 * x

  for name, sampler in ALL.items():
    traces.clear()
    for seed in (0, 1):
      sampler(eps_fn, schedule, (2, 3), jax.random.key(seed), num_steps=5, loop=loop)
    assert len(traces) == 1, name


def test_zero_terminal_snr_never_divides_by_zero():
  """On a zero-terminal-SNR schedule (abar = 0 at T-1) with a v-predicting model, every sampler stays
  finite and samples the data law."""
  from spectral_diffusion import predictions
  sched = schedules.rescale_zero_terminal_snr(schedules.linear())
  assert float(sched.alphas_cumprod[-1]) == 0.0
  mu, s = jnp.asarray(MU, jnp.float32), jnp.asarray(S, jnp.float32)

  def v_fn(x, t):
    a = sched.alphas_cumprod[t][:, None, None, None]
    x0 = mu + jnp.sqrt(a) * s**2 * (x - jnp.sqrt(a) * mu) / (a * s**2 + 1 - a)
    return (jnp.sqrt(a) * x - x0) / jnp.sqrt(1 - a)

  eps_fn = predictions.eps_from_v(sched, v_fn)
  for name, sampler in ALL.items():
    kw = {"num_steps": 50} if name != "ddpm" else {"num_steps": 250}
    x = sampler(eps_fn, sched, SHAPE, jax.random.PRNGKey(33), **kw)
    assert np.all(np.isfinite(np.asarray(x))), name
    _check_target_moments(x, rel_tol=0.05)


def test_ddpm_on_a_sub_grid_has_the_closed_form_moments(sched):
  """Ancestral DDPM on 50 of the 1000 steps uses the sub-grid's own betas: the output law is the closed form
  of that 50-step chain (DDPM's affine steps with b = 1 - abar_t / abar_t')."""
  ts = samplers.timesteps(sched, 50, "trailing")
  abar_all = np.cumprod(1 - np.asarray(sched.betas, np.float64))
  for variance in ("beta", "posterior"):
    x = samplers.ddpm(_gaussian_eps_fn(sched), sched, SHAPE, jax.random.PRNGKey(34), timesteps=ts,
                      variance=variance)
    mean, std = _per_channel(x)
    for c in range(2):
      m, var = 0.0, 1.0
      for i, t in enumerate(ts):
        ab, ab_next = abar_all[t], (abar_all[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        b = 1 - ab / ab_next
        k = np.sqrt(1 - ab) / (ab * S[c]**2 + 1 - ab)
        a_step = (1 - b / np.sqrt(1 - ab) * k) / np.sqrt(1 - b)
        b_step = b / np.sqrt(1 - ab) * k * np.sqrt(ab) * MU[c] / np.sqrt(1 - b)
        noise = 0.0 if i == len(ts) - 1 else (b if variance == "beta" else b * (1 - ab_next) / (1 - ab))
        m, var = a_step * m + b_step, a_step**2 * var + noise
      assert abs(mean[c] - m) < 5 * np.sqrt(var / N), (variance, c, mean[c], m)
      assert abs(std[c] - np.sqrt(var)) < 5 * np.sqrt(var / (2 * N)), (variance, c, std[c], np.sqrt(var))


SOLVER_ORDERS = {
    # name: (kwargs, lowest ratio of errors when the steps double from 20 to 40 and 40 to 80).
    "dpm_solver_pp": ({}, 3.3),                 # second order: 4x
    "dpm_solver_pp_3m": ({}, 3.8),              # see the docstring of dpm_solver_pp_3m
    "unipc": ({"order": 2}, 6.5),               # UniP-2 + UniC: third order, 8x
    "unipc_3": ({"order": 3}, 5.0),             # the warm-up bounds it to third order too; at 80 steps its
                                                # error (5e-5) nears float32 round-off
}


@pytest.mark.parametrize("name", sorted(SOLVER_ORDERS))
def test_solver_orders_on_the_exact_flow(name, sched):
  kw, lowest = SOLVER_ORDERS[name]
  sampler = samplers.unipc if name.startswith("unipc") else ALL[name]
  err = _ode_errors(sampler, sched, (20, 40, 80), spacing="logsnr", **kw).max(axis=1)
  ratios = err[:-1] / err[1:]
  assert np.all(ratios > lowest), (name, err, ratios)
  ddim = _ode_errors(samplers.ddim, sched, (20, 40, 80)).max(axis=1)
  assert np.all(err * 4 < ddim), (name, err, ddim)


def test_sde_dpm_solver_pp_samples_the_data_law(sched):
  """The SDE solver's output law approaches N(mu, s^2) as steps grow (its weak error), and its last step adds
  no noise."""
  eps_fn = _gaussian_eps_fn(sched)
  errs = []
  for n in (10, 40):
    x = samplers.sde_dpm_solver_pp(eps_fn, sched, SHAPE, jax.random.PRNGKey(35), num_steps=n)
    mean, std = _per_channel(x)
    errs.append(np.max(np.abs(std - S) / S))
  _check_target_moments(x, rel_tol=0.02)
  assert errs[1] < errs[0], errs


def test_readme_sampler_example_runs():
  """The README's "Using the library from JAX" block is run as it stands, and its claims hold there."""
  import pathlib
  text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
  section = text[text.index("## Using the library from JAX"):]
  code = section[section.index("```python") + len("```python"):section.index("```\n")]
  scope = {}
  exec(compile(code, "README.md", "exec"), scope)
  assert scope["x0"].shape == scope["shape"] and scope["states"].shape == (10,) + scope["shape"]
  assert np.all(np.isfinite(np.asarray(scope["edited"])))
