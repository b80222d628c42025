"""The AnyBand-Diff U-Net: CAM shapes and zero-init identity, conditioning paths, paper size, a tiny fit."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from spectral_diffusion import models
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.models import anyband_unet
from conftest import indian_pines

# XLA's CPU backend without LLVM optimisation halves to thirds the compile time, which is most of this
# file's run time; the compiled code is slower, but these models are tiny.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# 277.7 M / 278.3 M: Table 5's 278 M (the paper does not say which data set it counted).
PAPER_CONFIG_COUNTS = {103: 277_598_055, 191: 278_105_023}


def _group_norm(f, groups, eps=1e-5):
  b, h, w, c = f.shape
  g = f.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(f.shape)


@pytest.fixture(scope="module")
def tiny():
  """A tiny model, its inputs and params, and a jitted apply that also returns gamma and beta."""
  model = anyband_unet.AnyBandUNet(6, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                                   attn_levels=(1,), dropout=0.0, num_groups=8, time_embed_dim=32,
                                   context_dim=24)
  kx, kc, km = jax.random.split(jax.random.key(0), 3)
  mask = (jax.random.uniform(km, (2, 6)) < 0.5).astype(jnp.float32)
  cond = jax.random.normal(kc, (2, 8, 8, 6)) * mask[:, None, None, :]
  inputs = (jax.random.normal(kx, (2, 8, 8, 6)), jnp.array([3, 700], jnp.int32), cond, mask)
  params = _jit(model.init)(jax.random.key(1), *inputs)["params"]

  @_jit
  def run(params, x, t, cond, mask):
    out, state = model.apply({"params": params}, x, t, cond, mask, mutable=["intermediates"])
    return out, state["intermediates"]

  return model, inputs, params, run


def test_modulation_starts_as_identity_on_normalised_features():
  f = jax.random.normal(jax.random.key(0), (2, 4, 4, 16)) * 3.0 + 1.0
  h = jax.random.normal(jax.random.key(1), (2, 24))
  mod = anyband_unet.AdaptiveModulation(num_groups=4)
  params = _jit(mod.init)(jax.random.key(2), f, h)["params"]
  assert params["to_gamma"]["kernel"].shape == params["to_beta"]["kernel"].shape == (24, 16)
  assert "norm" not in params  # the Dense biases are GroupNorm's affine
  out, state = _jit(functools.partial(mod.apply, mutable=["intermediates"]))({"params": params}, f, h)
  gamma, beta = state["intermediates"]["gamma"][0], state["intermediates"]["beta"][0]
  np.testing.assert_array_equal(gamma, np.ones((2, 16)))
  np.testing.assert_array_equal(beta, np.zeros((2, 16)))
  np.testing.assert_allclose(out, _group_norm(np.asarray(f), 4), atol=1e-5)


def test_every_res_block_is_modulated_with_per_layer_shapes(tiny):
  _, inputs, params, run = tiny
  out, inter = run(params, *inputs)
  assert out.shape == (2, 8, 8, 6) and out.dtype == jnp.float32
  cams = {k: v for k, v in inter.items() if k.endswith("_cam")}
  # One CAM per res block: 1 per encoder level, 2 in the middle, 2 per decoder level.
  widths = {"down_0_0_cam": 16, "down_1_0_cam": 32, "mid_0_cam": 32, "mid_1_cam": 32,
            "up_1_0_cam": 32, "up_1_1_cam": 32, "up_0_0_cam": 16, "up_0_1_cam": 16}
  assert set(cams) == set(widths)
  for name, v in cams.items():
    assert v["gamma"][0].shape == v["beta"][0].shape == (2, widths[name]), name
    assert params[name]["to_gamma"]["kernel"].shape == (24 + 32, widths[name])  # h = [context, temb]
    np.testing.assert_array_equal(v["gamma"][0], 1.0)  # zero-init: identity at the start


def test_output_depends_on_condition_and_mask_through_cam(tiny):
  _, (x, t, cond, mask), params, run = tiny
  # The output conv starts at zero (DDPM's init): an untrained model predicts 0, i.e. the prior.
  assert float(jnp.max(jnp.abs(run(params, x, t, cond, mask)[0]))) == 0.0
  # Switch the modulation and the output on, as training would (numpy draws: no compile per shape).
  rng = np.random.default_rng(0)
  params = {k: jax.tree.map(lambda p: 0.1 * rng.standard_normal(p.shape, np.float32), v)
            if k.endswith("_cam") or k == "out_conv" else v for k, v in params.items()}

  def outputs(cond, mask):
    out, inter = run(params, x, t, cond, mask)
    return out, inter["down_0_0_cam"]["gamma"][0]

  out, gamma = outputs(cond, mask)
  flipped = mask.at[:, 0].set(1.0 - mask[:, 0])
  for other_out, other_gamma in (outputs(cond * flipped[:, None, None, :], flipped),
                                 outputs(cond * 2.0, mask)):
    assert float(jnp.max(jnp.abs(other_out - out))) > 1e-3
    assert float(jnp.max(jnp.abs(other_gamma - gamma))) > 1e-4
  # A band mask is the same as that mask repeated at every pixel.
  pixel_mask = jnp.broadcast_to(mask[:, None, None, :], cond.shape)
  np.testing.assert_allclose(run(params, x, t, cond, pixel_mask)[0], out, atol=1e-5)


@pytest.mark.parametrize("bands", [103, 191])
def test_paper_config_parameter_count(bands):
  model = anyband_unet.AnyBandUNet(bands)  # the defaults are the paper's configuration
  assert model.min_size == 8
  n = anyband_unet.parameter_count(model, 64, bands)
  assert n == PAPER_CONFIG_COUNTS[bands]
  assert abs(n - anyband_unet.PAPER_PARAMETERS) < 0.002 * anyband_unet.PAPER_PARAMETERS


def test_tiny_model_fits_x0_on_real_crop(tiny):
  model, _, params, _ = tiny  # parameters do not depend on the image size: train on 16 x 16
  cube = indian_pines()[:, :, np.linspace(0, 199, model.out_bands).round().astype(int)]
  cube = (cube - cube.mean()) / cube.std()
  data = jnp.asarray(np.stack([cube[i:i + 16, j:j + 16]
                               for i in range(0, 128, 16) for j in range(0, 128, 32)]))
  alpha_bar = jnp.cumprod(1.0 - jnp.linspace(1e-4, 0.02, 1000))
  opt = optax.adam(1e-3)

  def loss_fn(params, key):
    ki, kt, km, kn = jax.random.split(key, 4)
    x0 = data[jax.random.randint(ki, (8,), 0, len(data))]
    t = jax.random.randint(kt, (8,), 0, 1000)
    mask = (jax.random.uniform(km, (8, model.out_bands)) < 0.5).astype(jnp.float32)
    a = alpha_bar[t][:, None, None, None]
    x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * jax.random.normal(kn, x0.shape)
    pred = model.apply({"params": params}, x_t, t, x0 * mask[:, None, None, :], mask)
    return jnp.mean((pred - x0) ** 2)

  @_jit
  def step(params, opt_state, key):
    """The loss at `params` on the batch from `key`, and the updated state: one compile for both uses."""
    loss, grads = jax.value_and_grad(loss_fn)(params, key)
    updates, opt_state = opt.update(grads, opt_state)
    return loss, optax.apply_updates(params, updates), opt_state

  opt_state = opt.init(params)
  held_out = jax.random.key(99)  # a batch never trained on: its loss before and after
  before = float(step(params, opt_state, held_out)[0])
  for key in jax.random.split(jax.random.key(1), 40):
    _, params, opt_state = step(params, opt_state, key)
  after = float(step(params, opt_state, held_out)[0])
  assert after < 0.5 * before, (before, after)


def test_build_model_dispatches_on_name():
  config = default.get_config()
  config.model.base_channels = 16
  config.model.channel_mults = (1, 2)
  config.model.num_groups = 8
  config.model.attn_levels = (1,)
  assert isinstance(models.build_model(config.model, 6), models.SCDMUNet)
  config.model.name = "anyband_unet"
  model = models.build_model(config.model, 6)
  assert isinstance(model, models.AnyBandUNet)
  assert (model.out_bands, model.base_channels, model.channel_mults, model.context_dim) == (6, 16, (1, 2), 512)
  config.model.context_dim = 64
  assert models.build_model(config.model, 6).context_dim == 64
  config.model.name = "unet"
  with pytest.raises(UserInputError, match="scdm_unet, anyband_unet"):
    models.build_model(config.model, 6)
