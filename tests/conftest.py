"""Shared fixtures: real data from ../shared/data, tiny configs, one trained tiny cascade per session."""
import os
import pathlib
import shutil
import tempfile

# One persistent XLA compilation cache for the whole run, set before JAX is imported: the tests compile
# the same tiny models again and again (new closures, CLI runs, subprocesses, notebook kernels and xdist
# workers inherit it through the environment), and on XLA:CPU compilation is most of the suite's time.
# A cache the user set is used as it is; the run's own is deleted at the end. For the same reason the
# tests compile with XLA's lowest backend (LLVM) optimisation level, which roughly halves XLA:CPU compile
# time of these tiny models; the programs, and so what the tests check, are the same. An optimisation
# level already in XLA_FLAGS is kept (XLA_FLAGS=--xla_backend_optimization_level=2 tests at the default).
_OWN_JAX_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_JAX_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="spectral_diffusion_jax_cache_")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import numpy as np
import pytest
import scipy.io

from configs import anyband_demo_indian_pines, demo_indian_pines
from spectral_diffusion.data import INDIAN_PINES_WAVELENGTHS_NM
from spectral_diffusion.errors import UserInputError

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
INDIAN_PINES = SHARED_DATA / "scenes" / "Indian_pines_corrected.npy"


def shared_file(rel):
  """A file under ../shared/data (skips the test when it is not there)."""
  path = SHARED_DATA / rel
  if not path.is_file():
    pytest.skip(f"shared data file missing: {path}")
  return path


def raises_one_line(fn, *args, match=None, **kwargs):
  """Calls fn expecting a UserInputError with a one-line message; returns the message."""
  with pytest.raises(UserInputError, match=match) as info:
    fn(*args, **kwargs)
  msg = str(info.value)
  assert "\n" not in msg and msg
  return msg


def indian_pines():
  if not INDIAN_PINES.exists():
    pytest.skip(f"real data not found at {INDIAN_PINES}")
  return np.load(INDIAN_PINES).astype(np.float32)


@pytest.fixture(scope="session")
def crop_file(tmp_path_factory):
  """A real 40 x 60 x 200 Indian Pines crop with its wavelengths, as a .mat file."""
  path = tmp_path_factory.mktemp("data") / "indian_pines_crop.mat"
  scipy.io.savemat(path, {"cube": indian_pines()[20:60, 30:90],
                          "wavelengths": np.asarray(INDIAN_PINES_WAVELENGTHS_NM)})
  return path


def shrink(c, data_path):
  """A demo config shrunk to seconds on the real crop: tiny U-Net, 2 steps, 2-step DDIM, 16 x 16 tiles."""
  c.data.name = "file"
  c.data.path = str(data_path)
  c.data.train_cols = (0, 36)
  c.data.test_cols = (40, 60)
  c.data.crop_size = 16
  c.model.base_channels = 8
  c.model.channel_mults = (1, 2)
  c.model.num_groups = 4
  c.model.time_embed_dim = 32
  c.model.attn_levels = (1,)
  c.train.batch_size = 2
  c.train.num_steps = 2
  c.train.warmup_steps = 0
  c.train.ema_start = 0
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.sample.num_steps = 2
  c.sample.tile_size = 16
  c.sample.tile_overlap = 4
  return c


def tiny_config(data_path):
  """The SCDM demo config, shrunk."""
  c = shrink(demo_indian_pines.get_config(), data_path)
  c.sample.batch_size = 4
  c.sample.num_samples = 2
  c.sample.icmg_scale = (0.0, 1.5)
  c.sample.pdt_p_start = (0.96, 0.88)
  return c


@pytest.fixture(scope="session")
def trained(tmp_path_factory, crop_file):
  """(config, workdir) of a tiny cascade trained and evaluated end to end on the real crop."""
  from spectral_diffusion.scdm import train
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config(crop_file)
  train.train_and_evaluate(config, str(workdir))
  return config, workdir


def tiny_anyband_config(path):
  """The AnyBand demo config, shrunk; one ablation and one protocol of each kind."""
  c = shrink(anyband_demo_indian_pines.get_config(), path)
  c.model.context_dim = 16
  c.sample.batch_size = 8
  c.sample.num_samples = 1
  c.eval.missing_fractions = (0.5,)
  c.eval.input_band_counts = (5,)
  c.eval.sensors = ("sentinel2a_msi",)
  c.eval.ablations = ("no_dsm",)
  return c


def config_flags(config):
  """The config as command-line overrides (what a user would type)."""
  out = []
  for section in ("data", "model", "train", "sample", "eval"):
    for key, value in getattr(config, section).items():
      if isinstance(value, (list, tuple)):
        value = tuple(value)
      out.append(f"--config.{section}.{key}={value}")
  return out


@pytest.fixture(scope="session")
def anyband_model(tmp_path_factory, crop_file):
  """(config, workdir) of the tiny AnyBand model, trained only (no ablations, no evaluation)."""
  from spectral_diffusion.anyband import model, train
  config = tiny_anyband_config(crop_file)
  workdir = tmp_path_factory.mktemp("anyband_model")
  train.train_variant(config, str(workdir), model.load_data(config), "anyband")
  return config, workdir


# Under pytest-xdist every worker builds its own session (and module) fixtures: these trained models are
# used by tests in many modules, so those tests go to one worker (--dist loadgroup), which builds each once.
# A test that asks for one through request.getfixturevalue carries this mark itself.
TRAINED_MODEL_FIXTURES = {"trained", "anyband_model", "anyband_run"}
USES_TRAINED_MODELS = pytest.mark.xdist_group("trained_models")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
  for item in items:
    if TRAINED_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
      item.add_marker(USES_TRAINED_MODELS)
  result = yield  # xdist's hook now adds the group to each marked test's node id
  # xdist 3.8 sets that id in the old `_nodeid` field, which pytest 9.2 no longer reads (pytest-xdist
  # issue 1386; PR 1388 sets it as below), and the tests would be spread over the workers again.
  if getattr(config.option, "loadgroup", False):
    for item in items:
      mark = item.get_closest_marker("xdist_group")
      if mark and "@" not in item.nodeid and hasattr(item, "_id"):
        from _pytest.nodeid import coerce_node_id  # pytest >= 9.2 only, where the suffix got lost
        item._id = coerce_node_id(f"{item.nodeid}@{mark.args[0]}")
  return result


def pytest_unconfigure(config):
  if _OWN_JAX_CACHE:
    shutil.rmtree(_OWN_JAX_CACHE, ignore_errors=True)
