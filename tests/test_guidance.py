"""Tests for spectral_diffusion.guidance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import indian_pines
from spectral_diffusion import guidance
from spectral_diffusion import samplers
from spectral_diffusion import schedules


def _normal(seed, shape):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def test_icmg_formula():
  c, u = _normal(0, (2, 3, 3, 4)), _normal(1, (2, 3, 3, 4))
  np.testing.assert_allclose(guidance.icmg(c, u, 2.5), 3.5 * c - 2.5 * u, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(guidance.icmg(c, u, 0.0), c)


def _model_fn(calls):
  def model_fn(x, t, cond):
    calls.append((x.shape, t.shape, cond.shape))
    # Depends on all three inputs, differently per sample.
    tt = t[:, None, None, None].astype(jnp.float32)
    return jnp.sin(x) * (1 + tt / 10) + jnp.mean(cond, axis=-1, keepdims=True) ** 2
  return model_fn


def test_icmg_eps_fn_is_one_batched_call():
  x, cond = _normal(2, (3, 4, 4, 2)), _normal(3, (3, 4, 4, 5))
  t = jnp.array([0, 5, 9], jnp.int32)
  calls = []
  eps = guidance.icmg_eps_fn(_model_fn(calls), cond, 2.5)(x, t)
  assert calls == [((6, 4, 4, 2), (6,), (6, 4, 4, 5))]
  ref_fn = _model_fn([])
  want = guidance.icmg(ref_fn(x, t, cond), ref_fn(x, t, jnp.zeros_like(cond)), 2.5)
  np.testing.assert_allclose(eps, want, rtol=1e-5, atol=1e-6)
  # Traceable, and a traced scale still takes the batched path.
  jitted = jax.jit(lambda s: guidance.icmg_eps_fn(_model_fn([]), cond, s)(x, t))
  np.testing.assert_allclose(jitted(2.5), want, rtol=1e-5, atol=1e-6)


def test_icmg_eps_fn_scale_zero_skips_uncond():
  x, cond = _normal(2, (3, 4, 4, 2)), _normal(3, (3, 4, 4, 5))
  t = jnp.array([0, 5, 9], jnp.int32)
  calls = []
  eps = guidance.icmg_eps_fn(_model_fn(calls), cond, 0.0)(x, t)
  assert calls == [((3, 4, 4, 2), (3,), (3, 4, 4, 5))]
  np.testing.assert_allclose(eps, _model_fn([])(x, t, cond), rtol=1e-6)


def test_pdt_percentile_end_points():
  t = jnp.array([999, 0, 499], jnp.int32)
  p = guidance.pdt_percentile(t, 1000, 0.96)
  np.testing.assert_allclose(p, [0.96, 1.0, 1.0 - 0.04 * 499 / 999], rtol=1e-6)
  np.testing.assert_allclose(guidance.pdt_percentile(t, 1000, 0.9, p_end=0.99),
                             [0.9, 0.99, 0.99 - 0.09 * 499 / 999], rtol=1e-6)


def _np_pdt_clip(v, p):
  v = np.asarray(v, np.float64)
  p = np.broadcast_to(np.asarray(p, np.float64), (v.shape[0],))
  out = np.empty_like(v)
  for i in range(v.shape[0]):
    tau = max(np.quantile(np.abs(v[i]), p[i]), 1.0)
    out[i] = np.clip(v[i], -tau, tau)
  return out


def test_pdt_clip_matches_numpy():
  v = 3.0 * _normal(4, (5, 6, 7, 3))
  v = v.at[3].multiply(0.2)  # Quantile below 1: the tau >= 1 floor applies.
  for p in (0.9, 1.0, jnp.array([0.5, 0.88, 0.96, 0.99, 1.0])):
    got = guidance.pdt_clip(v, p)
    np.testing.assert_allclose(got, _np_pdt_clip(v, p), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(guidance.pdt_clip(v, 1.0), v)
  small = 0.1 * v  # Every |v| < 1, so tau = 1 and nothing is clipped.
  np.testing.assert_array_equal(guidance.pdt_clip(small, 0.5), small)


def test_pdt_wrappers():
  s = 100
  x = 4.0 * _normal(5, (3, 4, 4, 2))
  t = jnp.array([99, 50, 0], jnp.int32)
  p = guidance.pdt_percentile(t, s, 0.9)
  eps_fn = lambda x_t, t: 2.0 * x_t
  np.testing.assert_allclose(guidance.pdt_eps_fn(eps_fn, s, 0.9)(x, t),
                             _np_pdt_clip(2.0 * x, p), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(guidance.pdt_x_transform(s, 0.9)(x, t),
                             _np_pdt_clip(x, p), rtol=1e-5, atol=1e-5)
  # Plugs into a sampler.
  out = samplers.ddim(eps_fn, schedules.linear(s), (2, 3, 3, 2), jax.random.PRNGKey(0),
                      num_steps=5, x_transform=guidance.pdt_x_transform(s, 0.9))
  assert np.all(np.isfinite(out))


def test_paper_configs_clamp_the_state_by_default():
  """PDT as the official code (clamp x_t), which produced the published numbers; eps (the paper's text)
  stays available. Measured on an exact Gaussian denoiser, 1000-step DDPM, p_start 0.88-0.96: clipping
  eps leaves noise in and the samples' spread grows to 5-38x the data's; clamping x_t keeps it at
  0.6-1.0x (README)."""
  from configs import default, scdm_dfc2018, scdm_pavia_center
  for get_config in (scdm_dfc2018.get_config, scdm_pavia_center.get_config, default.get_config):
    assert get_config().sample.pdt_target == "state"


@pytest.mark.parametrize("per_sample_loss", [True, False])
def test_physics_guidance_matches_hand_gradient(per_sample_loss):
  sched = schedules.linear(100)
  a, scale = 0.7, 1.3
  x = _normal(6, (3, 4, 4, 2))
  c = _normal(7, (3, 4, 4, 2))
  t = jnp.array([0, 40, 99], jnp.int32)
  calls = []

  def eps_fn(x_t, t):
    calls.append(1)
    return a * x_t

  def loss_fn(x0):
    per = 0.5 * jnp.sum((x0 - c) ** 2, axis=(1, 2, 3))
    return per if per_sample_loss else jnp.sum(per)

  got = guidance.physics_guidance(eps_fn, loss_fn, sched, scale)(x, t)
  assert len(calls) == 1  # One forward (and its backward), eps reused.
  abar = np.asarray(sched.alphas_cumprod, np.float64)[np.asarray(t)][:, None, None, None]
  xn, cn = np.asarray(x, np.float64), np.asarray(c, np.float64)
  k = (1 - np.sqrt(1 - abar) * a) / np.sqrt(abar)
  want = a * xn + scale * np.sqrt(1 - abar) * k * (k * xn - cn)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  jitted = jax.jit(guidance.physics_guidance(eps_fn, loss_fn, sched, scale))
  np.testing.assert_allclose(jitted(x, t), want, rtol=1e-4, atol=1e-4)
  paper = guidance.physics_guidance(eps_fn, loss_fn, sched, scale, sign="paper")(x, t)
  np.testing.assert_allclose(paper, a * xn - scale * np.sqrt(1 - abar) * k * (k * xn - cn), rtol=1e-4, atol=1e-4)


def test_physics_guidance_zero_scale_and_sampler():
  sched = schedules.linear(50)
  eps_fn = lambda x_t, t: jnp.tanh(x_t)
  loss_fn = lambda x0: jnp.sum(x0 ** 2, axis=(1, 2, 3))
  x, t = _normal(8, (2, 3, 3, 2)), jnp.array([10, 49], jnp.int32)
  np.testing.assert_allclose(
      guidance.physics_guidance(eps_fn, loss_fn, sched, 0.0)(x, t), eps_fn(x, t), rtol=1e-6)
  guided = guidance.physics_guidance(eps_fn, loss_fn, sched, 0.5)
  a = samplers.ddim(guided, sched, (2, 3, 3, 2), jax.random.PRNGKey(1), num_steps=5, loop="scan")
  b = samplers.ddim(guided, sched, (2, 3, 3, 2), jax.random.PRNGKey(1), num_steps=5,
                    loop="python")
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_sample_loss", [True, False])
def test_physics_guidance_identity_jacobian_matches_closed_form(per_sample_loss):
  # d x0_hat / d x_t taken as I / sqrt(abar_t): only the loss is differentiated, at x0_hat.
  sched = schedules.linear(100)
  a, scale = 0.7, 1.3
  x = _normal(9, (3, 4, 4, 2))
  c = _normal(10, (3, 4, 4, 2))
  t = jnp.array([0, 40, 99], jnp.int32)

  @jax.custom_vjp
  def net(x_t):  # a network whose backward pass must not run in identity mode
    return a * jnp.tanh(x_t)

  def no_backward(res, g):
    raise AssertionError("identity mode differentiated the network")

  net.defvjp(lambda x_t: (net(x_t), None), no_backward)
  calls = []

  def eps_fn(x_t, t):
    calls.append(1)
    return net(x_t)

  def loss_fn(x0):
    per = 0.5 * jnp.sum((x0 - c) ** 2, axis=(1, 2, 3))
    return per if per_sample_loss else jnp.sum(per)

  got = guidance.physics_guidance(eps_fn, loss_fn, sched, scale, jacobian="identity")(x, t)
  assert len(calls) == 1
  abar = np.asarray(sched.alphas_cumprod, np.float64)[np.asarray(t)][:, None, None, None]
  xn, cn = np.asarray(x, np.float64), np.asarray(c, np.float64)
  eps = a * np.tanh(xn)
  x0_hat = (xn - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
  want = eps + scale * np.sqrt(1 - abar) * (x0_hat - cn) / np.sqrt(abar)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  jitted = jax.jit(guidance.physics_guidance(eps_fn, loss_fn, sched, scale, jacobian="identity"))
  np.testing.assert_allclose(jitted(x, t), want, rtol=1e-4, atol=1e-4)
  with pytest.raises(AssertionError, match="differentiated the network"):
    guidance.physics_guidance(eps_fn, loss_fn, sched, scale)(x, t)


def test_physics_guidance_rejects_unknown_jacobian_and_sign():
  with pytest.raises(ValueError, match="jacobian"):
    guidance.physics_guidance(lambda x, t: x, lambda x0: x0.sum(), schedules.linear(10), 1.0,
                              jacobian="none")
  with pytest.raises(ValueError, match="sign"):
    guidance.physics_guidance(lambda x, t: x, lambda x0: x0.sum(), schedules.linear(10), 1.0, sign="up")


def test_positive_physics_scale_lowers_the_loss_of_samples():
  """On the exact denoiser of Gaussian data, a positive scale moves every DDIM sample's x0 towards the
  loss's minimum (a target spectrum), a negative one away; sign="paper" swaps them."""
  sched = schedules.linear(1000)
  mu, s = 0.3, 0.5
  eps_fn = lambda x, t: (jnp.sqrt(1 - sched.alphas_cumprod[t])[:, None, None, None]
                         * (x - jnp.sqrt(sched.alphas_cumprod[t])[:, None, None, None] * mu)
                         / (sched.alphas_cumprod[t][:, None, None, None] * s**2
                            + 1 - sched.alphas_cumprod[t][:, None, None, None]))
  target = 1.0
  loss_fn = lambda x0: jnp.mean((x0 - target) ** 2, axis=(1, 2, 3))
  shape, rng = (64, 2, 2, 3), jax.random.PRNGKey(3)
  loss = lambda scale, **kw: float(jnp.mean(loss_fn(samplers.ddim(
      guidance.physics_guidance(eps_fn, loss_fn, sched, scale, **kw), sched, shape, rng, num_steps=20))))
  plain, down, up = loss(0.0), loss(0.5), loss(-0.5)
  assert down < plain < up, (down, plain, up)
  assert loss(0.5, sign="paper") == pytest.approx(up, rel=1e-5)


def test_abs_quantile_equals_jnp_quantile_on_real_spectra():
  """The sort-free quantile against jnp.quantile (and numpy) on normalised real spectra, with ties and an
  all-zero sample."""
  cube = indian_pines()[:24, :24, :48]
  v = (cube - cube.mean()) / cube.std()
  v = jnp.asarray(np.stack([v, np.round(v, 1), -v[::-1], np.zeros_like(v)]))
  for p in (0.0, 0.5, 0.9, 0.96, 0.995, 1.0, jnp.array([0.1, 0.88, 0.999, 0.7])):
    got = np.asarray(guidance.abs_quantile(v, p))
    want = np.asarray(jax.vmap(lambda a, q: jnp.quantile(jnp.abs(a).ravel(), q, method="linear"))(
        v, jnp.broadcast_to(jnp.asarray(p, jnp.float32), (4,))))
    np.testing.assert_array_max_ulp(got, want, maxulp=1)  # the same order statistics; interpolation rounding
    np.testing.assert_allclose(got, [np.quantile(np.abs(np.asarray(a, np.float64)), q) for a, q in
                                     zip(v, np.broadcast_to(np.asarray(p), (4,)))], rtol=1e-5, atol=1e-6)


def test_x0_transforms():
  x0 = 3.0 * _normal(11, (4, 5, 5, 3))
  clip = guidance.clip_x0(-1.0, 2.0)
  np.testing.assert_array_equal(clip(x0, None), np.clip(np.asarray(x0), -1.0, 2.0))
  with pytest.raises(ValueError, match="lo < hi"):
    guidance.clip_x0(1.0, 1.0)
  # Imagen: s = max(quantile(|x0|, p), 1) per sample, then clip to [-s, s] and divide by s.
  got = np.asarray(guidance.dynamic_threshold(x0, 0.9))
  for i in range(4):
    s = max(np.quantile(np.abs(np.asarray(x0[i], np.float64)), 0.9), 1.0)
    np.testing.assert_allclose(got[i], np.clip(np.asarray(x0[i]), -s, s) / s, rtol=1e-5, atol=1e-6)
  small = 0.1 * x0
  np.testing.assert_allclose(guidance.dynamic_threshold(small, 0.9), small, rtol=1e-6)


def test_guidance_loss_rtm_term_is_a_squared_distance_to_the_projection():
  # Value: the emulator's manifold loss; gradient: that of 0.5 w |x - Phi(x)|^2 / n with Phi(x) held
  # fixed (the squared-distance gradient), so the emulator itself is never differentiated.
  from spectral_diffusion.anyband import model as anyband
  from spectral_diffusion.physics import rtm
  wl = rtm.grid_wavelengths("indian_pines")
  em = rtm.load_emulator(wl)
  phys = anyband.Physics(0.0, 1.0, 1.0, em, tuple(float(w) for w in wl))
  space = anyband.ModelSpace(None, 2.0, False)
  n = len(wl)
  ref = 0.2 + 0.05 * jax.random.uniform(jax.random.key(0), (2, 3, 3, n))
  y = 0.1 * _normal(11, (2, 3, 3, n))
  loss = anyband.GuidanceLoss((0.0, 0.0, 0.5), (0.0, 1.0), (0, 0, 0))
  frame = anyband.Frame(ref, jnp.full((2, 1, 1, n), 2.0))   # the model space of target_scale 2
  value = lambda y: loss(phys, space, frame, ref, jnp.ones((2, n)), y)
  refl = np.asarray(y / 2.0 + ref, np.float64)
  proj = np.asarray(em.project(jnp.asarray(refl, jnp.float32)), np.float64)
  np.testing.assert_allclose(value(y), 0.5 * np.mean((refl - proj) ** 2, axis=(1, 2, 3)), rtol=1e-4)
  grad = jax.grad(lambda y: jnp.sum(value(y)))(y)
  want = 0.5 * 2.0 * (refl - proj) / (3 * 3 * n) / 2.0  # d refl / d y = 1 / target_scale
  np.testing.assert_allclose(grad, want, rtol=1e-3, atol=1e-9)
