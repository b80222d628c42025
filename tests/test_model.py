"""The SCDM U-Net: the official parameter count, shapes, and the layer details that differ from Flax."""
import re

import flax.linen as nn
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


def _random_params(model, args, seed):
  """Every leaf random (GroupNorm scales and biases too), drawn in numpy so nothing compiles."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = getattr(path[-1], "key", str(path[-1]))
    if name == "kernel":
      return rng.standard_normal(s.shape, np.float32) / np.float32(np.sqrt(np.prod(s.shape[:-1])))
    return ((name == "scale") + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def test_groupnorm_keeps_flax_parameters_and_outputs():
  # layers.GroupNorm replaced nn.GroupNorm: checkpoints load unchanged, results agree on ordinary inputs.
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 64)) * 3.0 + 1.0
  new = layers.group_norm(32, jnp.float32)
  old = nn.GroupNorm(num_groups=32, epsilon=layers.GROUPNORM_EPS, use_fast_variance=True)
  params = _random_params(new, (x,), 0)
  assert jax.tree.structure(params) == jax.tree.structure(jax.eval_shape(old.init, jax.random.key(0), x)["params"])
  np.testing.assert_allclose(new.apply({"params": params}, x), old.apply({"params": params}, x),
                             rtol=1e-5, atol=1e-5)


def test_paper_unet_float32_matches_float64_for_zero_constant_and_random_conditions():
  # The paper's stage-2 U-Net (77.6 M parameters) at the smallest size it takes. A zero or constant
  # condition makes the condition stream's groups nearly constant; Flax's one-pass GroupNorm variance
  # gave 7e-5 relative error there at batch 4 and 8 (its two-pass one 3e-5).
  model = models.build_model(scdm_dfc2018.get_config().model, 48)
  size = model.min_size
  args = (jnp.zeros((1, size, size, 48)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, size, size, 12)))
  params = jax.device_put(_random_params(model, args, 0))  # once, not on each of the nine calls
  f32 = jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c))
  model64 = model.clone(dtype=jnp.float64)
  f64 = jax.jit(lambda p, x, t, c: model64.apply({"params": p}, x, t, c))
  # Samples are independent, so one float64 program at batch 8 is the reference for batch 1 and 4 too
  # (its first 1 and 4 samples): two compiles fewer. Each float32 batch size compiles its own program,
  # which is what differs between them.
  rng = np.random.default_rng(1)
  x = rng.standard_normal((8, size, size, 48)).astype(np.float32)
  t = np.full((8,), 500, np.int32)
  conds = {"zero": np.zeros((8, size, size, 12), np.float32),
           "constant": np.full((8, size, size, 12), 0.37, np.float32),
           "random": rng.uniform(-1, 1, (8, size, size, 12)).astype(np.float32)}
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)  # converted once for all three
  for name, c in conds.items():
    with jax.enable_x64(True):
      # the model's final cast to float32 costs 6e-8 relative, far below the bound
      ref = np.asarray(f64(p64, jnp.asarray(x, jnp.float64), t, jnp.asarray(c, jnp.float64)), np.float64)
    for batch in (1, 4, 8):
      out = np.asarray(f32(params, x[:batch], t[:batch], c[:batch]), np.float64)
      rel = np.abs(out - ref[:batch]).max() / np.abs(ref[:batch]).max()
      assert rel <= 1e-5, (batch, name, rel)
