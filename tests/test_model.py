"""The SCDM U-Net: the official parameter count, shapes, and the layer details that differ from Flax."""
import jax
import jax.numpy as jnp
import numpy as np

from configs import scdm_dfc2018
from spectral_diffusion import describe, experiment, models
from spectral_diffusion.models import layers


def test_dfc2018_parameter_counts_match_official_code():
  config = scdm_dfc2018.get_config()
  stages = experiment.plan_from_config(config)
  assert [len(s.out_bands) for s in stages] == [12, 48]
  assert stages[1].in_bands == tuple(range(0, 48, 4))
  # The official count without its one unused output layer (REFERENCE.md); eval_shape allocates nothing.
  assert describe.stage_parameter_count(config, stages[1], 12) == 77_557_168
  assert describe.stage_parameter_count(config, stages[0], 3) == 77_463_820


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
