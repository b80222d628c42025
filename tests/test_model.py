"""The SCDM U-Net: the official parameter count, shapes, and the layer details that differ from Flax."""
import re

import jax
import jax.numpy as jnp
import numpy as np

from configs import scdm_dfc2018
from spectral_diffusion import models
from spectral_diffusion.scdm import experiment
from spectral_diffusion.scdm.method import stage_parameter_count
from spectral_diffusion.models import layers


def test_dfc2018_parameter_counts_match_official_code():
  config = scdm_dfc2018.get_config()
  stages = experiment.plan_from_config(config)
  assert [len(s.out_bands) for s in stages] == [12, 48]
  assert stages[1].in_bands == tuple(range(0, 48, 4))
  # The official count without its one unused output layer (REFERENCE.md); eval_shape allocates nothing.
  assert stage_parameter_count(config, stages[1], 12) == 77_557_168
  assert stage_parameter_count(config, stages[0], 3) == 77_463_820


def test_downsample_pads_one_on_both_sides():
  # PyTorch Conv2d(k=3, s=2, p=1): output pixel 0 is centred on input pixel 0. With a kernel that
  # picks the centre tap, the output is x[::2]; Flax 'SAME' would give x[1::2].
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  down = layers.Downsample(1)
  params = down.init(jax.random.key(0), x)["params"]
  kernel = np.zeros((3, 3, 1, 1), np.float32)
  kernel[1, 1] = 1.0
  params = {"Conv_0": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros((1,))}}
  out = down.apply({"params": params}, x)
  np.testing.assert_array_equal(out[0, :, :, 0], np.asarray(x)[0, ::2, ::2, 0])


def test_groupnorm_epsilon_is_pytorch_default():
  assert layers.group_norm(4, jnp.float32).epsilon == 1e-5


def test_bfloat16_compute_keeps_float32_parameters():
  config = scdm_dfc2018.get_config()
  config.model.base_channels = 16
  config.model.channel_mults = (1, 2)
  config.model.num_groups = 8
  config.model.attn_levels = (1,)
  config.model.dtype = "bfloat16"
  model = models.build_model(config.model, 6)
  x, c = jnp.ones((2, 8, 8, 6)), jnp.ones((2, 8, 8, 3))
  t = jnp.array([0, 999], jnp.int32)
  params = model.init(jax.random.key(0), x, t, c)["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  out = model.apply({"params": params}, x, t, c)
  config.model.dtype = "float32"
  ref = models.build_model(config.model, 6).apply({"params": params}, x, t, c)
  assert out.dtype == jnp.float32 and out.shape == (2, 8, 8, 6)
  assert float(jnp.max(jnp.abs(out - ref))) < 0.05 * float(jnp.max(jnp.abs(ref))) + 1e-3


def test_conv_gradient_matches_lax_and_is_canonical_inside_scan():
  # Same gradients as lax.conv_general_dilated (strided, 1x1, SAME), and in a lax.scan whose body takes
  # the input gradient every compiled convolution reads its kernel as HWIO (XLA:CPU runs other forms
  # inside loops as a naive loop nest).
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
  dn = ("NHWC", "HWIO", "NHWC")
  for strides, pad, size in (((2, 2), ((1, 1), (1, 1)), 3), ((1, 1), "SAME", 1)):
    k = jax.random.normal(jax.random.key(1), (size, size, 5, 7))
    loss = lambda conv, x, k: jnp.sum(jnp.sin(conv(x, k, strides, pad, dimension_numbers=dn)))
    want = jax.grad(loss, argnums=(1, 2))(jax.lax.conv_general_dilated, x, k)
    got = jax.grad(loss, argnums=(1, 2))(layers.conv_general_dilated, x, k)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  block = layers.ResBlock(16, num_groups=4)
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 8))
  params = block.init(jax.random.key(2), x, jnp.zeros((2, 8)))["params"]
  assert sorted(params) == ["conv0", "conv1", "norm0", "norm1", "shortcut", "temb_proj"]

  def step(x, _):
    g = jax.grad(lambda z: jnp.sum(block.apply({"params": params}, z, jnp.zeros((2, 8))) ** 2))(x)
    return x - 0.01 * g, None

  hlo = jax.jit(lambda x: jax.lax.scan(step, x, None, length=2)[0]).lower(x).compile().as_text()
  kernels = {label.split("_")[1].split("-")[0] for label in re.findall(r"dim_labels=(\S+?),", hlo)}
  if jax.default_backend() == "cpu":
    assert kernels == {"01io"}, kernels
