"""Training and sampling sharded over several CPU devices match one device with the same global batch."""
import os
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import sys, jax, numpy as np
sys.path.insert(0, "tests")
from conftest import tiny_config
from spectral_diffusion import training
from spectral_diffusion.scdm import experiment, train
config = tiny_config(sys.argv[1])
config.train.batch_size = 4
config.train.num_steps = 3
config.train.stages = (0,)
exp = experiment.load_experiment(config)
state = train.train_stage(config, sys.argv[2], exp, exp.stages[0])
leaves = jax.tree.leaves(state.params)
# Sampling: the same (1-device run's) weights on every run, 4 tiles in one batch, DDIM with ICMG.
from spectral_diffusion import sampling
from spectral_diffusion.scdm import cascade
bundle, _ = cascade.load_stage(config, sys.argv[4], 0)
tiles = np.stack([exp.test[y:y + 16, x:x + 16][..., list(exp.stages[0].in_bands)]
                  for y in (0, 20) for x in (0, 4)])
run_sampler, devices_used = sampling.run_sampler, []
def recording(*args, **kwargs):
  x0 = run_sampler(*args, **kwargs)
  devices_used.append(len(x0.sharding.device_set))
  return x0
sampling.run_sampler = recording
config.sample.icmg_scale = (2.0,)
sample = cascade.sample_stage(bundle, training.make_schedule(config.diffusion), tiles, jax.random.key(3),
                              sampling.SampleSettings.from_config(config.sample))
np.savez(sys.argv[3], *[np.asarray(x) for x in leaves], devices=len(jax.devices()), sample=sample,
         sample_devices=devices_used[0])
"""


def _train(tmp_path, crop_file, devices):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  out = tmp_path / f"params_{devices}.npz"
  subprocess.run([sys.executable, "-c", SCRIPT, str(crop_file), str(tmp_path / f"run_{devices}"), str(out),
                  str(tmp_path / "run_1")],
                 check=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return np.load(out)


def test_four_devices_match_one(tmp_path, crop_file):
  one, four = _train(tmp_path, crop_file, 1), _train(tmp_path, crop_file, 4)
  assert int(one["devices"]) == 1 and int(four["devices"]) == 4
  assert int(one["sample_devices"]) == 1 and int(four["sample_devices"]) == 4  # sampled data-parallel
  np.testing.assert_allclose(one["sample"], four["sample"], rtol=1e-4, atol=1e-4)
  names = [k for k in one.files if k.startswith("arr_")]
  assert names
  # Sums over a sharded batch reduce in another order; Adam divides by sqrt(v), so a parameter whose
  # gradient is nearly zero can move by a visible fraction of lr either way. atol is 5 % of the
  # largest possible move (3 steps x lr 2e-4); a wrong split of the batch moves parameters by ~lr.
  for k in names:
    np.testing.assert_allclose(one[k], four[k], rtol=1e-3, atol=3e-5)
