"""Tests for spectral_diffusion.schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_diffusion import schedules


def test_linear_values_match_float64_reference():
  s = schedules.linear()
  betas = np.linspace(1e-4, 0.02, 1000)
  abar = np.cumprod(1.0 - betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  assert s.num_timesteps == 1000
  for name in ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev",
               "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
               "posterior_variance"):
    arr = getattr(s, name)
    assert arr.shape == (1000,) and arr.dtype == jnp.float32, name
  np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
  np.testing.assert_allclose(s.alphas, 1.0 - betas, rtol=1e-6)
  np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=1e-6)
  np.testing.assert_allclose(s.alphas_cumprod_prev, abar_prev, rtol=1e-6)
  np.testing.assert_allclose(s.sqrt_alphas_cumprod, np.sqrt(abar), rtol=1e-6)
  np.testing.assert_allclose(s.sqrt_one_minus_alphas_cumprod, np.sqrt(1 - abar), rtol=1e-6)
  np.testing.assert_allclose(
      s.posterior_variance, betas * (1 - abar_prev) / (1 - abar), rtol=1e-5)
  assert float(s.posterior_variance[0]) == 0.0


def test_alphas_cumprod_is_product_over_s_le_t():
  s = schedules.linear(100, 1e-3, 0.2)
  b = np.asarray(s.betas, np.float64)
  for t in (0, 1, 37, 99):
    np.testing.assert_allclose(s.alphas_cumprod[t], np.prod(1.0 - b[:t + 1]), rtol=1e-5)


def test_schedule_is_pytree_with_static_length():
  s = schedules.linear(10)
  assert len(jax.tree.leaves(s)) == 7
  out = jax.jit(lambda sch: jnp.zeros(sch.num_timesteps) + sch.betas)(s)
  assert out.shape == (10,)


def test_bad_betas_raise():
  with pytest.raises(ValueError):
    schedules.from_betas([1.0, 0.5])   # only the last beta may be 1 (zero terminal SNR)
  with pytest.raises(ValueError):
    schedules.from_betas([0.5, 1.5])
  with pytest.raises(ValueError):
    schedules.from_betas(np.zeros((2, 2)) + 0.1)


def test_q_sample_statistics():
  s = schedules.linear(100)
  n = 8192
  t = jnp.array([0, 30, 99, 60], jnp.int32)
  x0 = jnp.array([1.0, -2.0, 0.5, 3.0])[:, None, None, None] * jnp.ones((4, 1, n, 2))
  noise = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
  xt = schedules.q_sample(s, x0, t, noise)
  abar = np.asarray(s.alphas_cumprod)[np.asarray(t)]
  mean = np.asarray(xt).reshape(4, -1).mean(1)
  std = np.asarray(xt).reshape(4, -1).std(1)
  se = np.sqrt(1 - abar) / np.sqrt(2 * n)
  np.testing.assert_allclose(mean, np.sqrt(abar) * np.array([1.0, -2.0, 0.5, 3.0]),
                             atol=5 * se.max() + 1e-6)
  np.testing.assert_allclose(std, np.sqrt(1 - abar), rtol=0.03)


def test_eps_x0_round_trip():
  s = schedules.linear(100)
  k0, k1 = jax.random.split(jax.random.PRNGKey(1))
  x0 = jax.random.normal(k0, (5, 4, 3, 2))
  eps = jax.random.normal(k1, x0.shape)
  t = jnp.array([0, 10, 50, 98, 99], jnp.int32)
  xt = schedules.q_sample(s, x0, t, eps)
  np.testing.assert_allclose(schedules.predict_x0_from_eps(s, xt, t, eps), x0, atol=2e-3)
  np.testing.assert_allclose(schedules.predict_eps_from_x0(s, xt, t, x0), eps, atol=2e-3)
  # Per-sample coefficients: sample i uses t[i] only.
  one = schedules.q_sample(s, x0[2:3], t[2:3], eps[2:3])
  np.testing.assert_allclose(xt[2:3], one, rtol=1e-6)


def test_cosine_matches_its_closed_form():
  T, s = 1000, 0.008
  f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
  sched = schedules.cosine(T)
  abar = f(np.arange(1, T + 1)) / f(0)   # alphas_cumprod[t] is abar after step t (betas start at t = 0)
  clipped = np.argmax(np.minimum(1 - f(np.arange(1, T + 1)) / f(np.arange(T)), 0.999) >= 0.999)
  np.testing.assert_allclose(sched.alphas_cumprod[:clipped], abar[:clipped], rtol=2e-5, atol=1e-7)
  assert float(sched.betas.max()) == pytest.approx(0.999)


def test_rescale_zero_terminal_snr():
  base = schedules.linear()
  z = schedules.rescale_zero_terminal_snr(base)
  root, root0 = np.sqrt(np.asarray(z.alphas_cumprod, np.float64)), np.sqrt(np.asarray(base.alphas_cumprod))
  assert float(z.alphas_cumprod[-1]) == 0.0 and float(z.betas[-1]) == 1.0
  assert root[0] == pytest.approx(root0[0], rel=1e-6)
  # Lin et al.: sqrt(abar) is an affine map of the original, fixed at t = 0 and 0 at t = T-1.
  expected = (root0 - root0[-1]) * root0[0] / (root0[0] - root0[-1])
  np.testing.assert_allclose(root, expected, rtol=1e-4, atol=1e-6)
  # Where x0 is recovered, abar is floored: nothing divides by zero at t = T-1.
  t = jnp.array([999], jnp.int32)
  x0 = schedules.predict_x0_from_eps(z, jnp.ones((1, 2)), t, jnp.ones((1, 2)))
  assert np.all(np.isfinite(np.asarray(x0)))
