"""RTM emulator for AnyBand-Diff's physics: a small autoencoder trained on PROSAIL spectra.

The paper trains an autoencoder on 100,000 PROSAIL spectra before the diffusion
model; its decoder follows PROSAIL and Phi(x) = dec(enc(x)) projects a spectrum
onto the PROSAIL manifold. Here the latent is the 12 PROSAIL inputs scaled to
[-1, 1]: the decoder is trained as a forward PROSAIL emulator on the true inputs
and, with the encoder, as an autoencoder (manifold loss ||x - dec(enc(x))||^2).
Everything at use time is pure JAX, so jax.grad flows through it.

This module is what using an emulator needs: the model, its .npz file and the
shipped weights. spectral_diffusion.tools.train_rtm trains one for a new grid:
  python -m spectral_diffusion.tools.train_rtm --wavelengths=GRID.npy --out=rtm.npz
"""

import json
import os
import pathlib
import zipfile
import zlib

from flax import linen as nn
from flax import struct
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from spectral_diffusion.errors import UserInputError

# PROSAIL input ranges, sampled uniformly and independently. Bounds follow the
# Sentinel-2 L2B biophysical processor (Weiss & Baret, S2ToolBox ATBD
# S2PAD-VEGA-ATBD-0003 v2.1, 2016), the usual LUT/hybrid-inversion set (also used
# by PROSAIL-VAE, Zerah et al. 2024), with two changes: LAI stops at 10 (not 15;
# reflectance saturates well before) and rsoil is 0.5-1.5 because it scales
# prosail's own dry soil, which already peaks at 0.52 (x3.5 would exceed 1).
# View is nadir (tto = 0), so the relative azimuth has no effect; anthocyanins 0.
PROSAIL_RANGES = {
    "n": (1.2, 2.2),          # leaf structure parameter
    "cab": (20.0, 90.0),      # chlorophyll a+b, ug/cm2
    "car": (5.0, 23.0),       # carotenoids, ug/cm2
    "cbrown": (0.0, 2.0),     # brown pigments, arbitrary units
    "cw": (0.0075, 0.075),    # equivalent water thickness, cm
    "cm": (0.003, 0.011),     # dry matter, g/cm2
    "lai": (0.0, 10.0),       # leaf area index
    "lidfa": (30.0, 80.0),    # average leaf angle, degrees (typelidf=2, ellipsoidal)
    "hspot": (0.1, 0.5),      # hotspot parameter
    "psoil": (0.0, 1.0),      # soil moisture: 1 = prosail's dry soil, 0 = its wet soil
    "rsoil": (0.5, 1.5),      # soil brightness scale
    "tts": (0.0, 60.0),       # sun zenith, degrees
}
PARAM_NAMES = tuple(PROSAIL_RANGES)
PROSPECT_VERSION = "D"

GRIDS = ("indian_pines", "pavia_university")
WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "weights"
GRID_TOLERANCE_NM = 0.5
_FORMAT_VERSION = 1
_TRAIN_COMMAND = "python -m spectral_diffusion.tools.train_rtm --wavelengths=GRID.npy --out=rtm.npz"


def grid_wavelengths(name: str) -> np.ndarray:
  """Band centres (nm) of a named grid: indian_pines (200 AVIRIS bands) or pavia_university."""
  if name == "indian_pines":
    from spectral_diffusion.data import INDIAN_PINES_WAVELENGTHS_NM  # pylint: disable=g-import-not-at-top
    return np.asarray(INDIAN_PINES_WAVELENGTHS_NM, np.float64)
  if name == "pavia_university":
    return np.linspace(430.0, 860.0, 103)  # nominal ROSIS grid; exact centres are not published
  raise UserInputError(f"unknown grid {name!r}; use one of {', '.join(GRIDS)} or pass --wavelengths=FILE")


def describe_grid(wavelengths_nm) -> str:
  """How messages and training reports name a grid: "200-band grid (400-2500 nm)"."""
  wl = np.asarray(wavelengths_nm, np.float64).reshape(-1)
  return f"{wl.size}-band grid ({wl.min():.0f}-{wl.max():.0f} nm)" if wl.size else "empty grid"


# ----------------------------------------------------------------------------- model


class _MLP(nn.Module):
  features: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    for f in self.features[:-1]:
      x = nn.silu(nn.Dense(f)(x))  # smooth: guidance differentiates through it
    return nn.Dense(self.features[-1])(x)


class RTMAutoencoder(nn.Module):
  """Standardised spectrum (..., B) -> latent (..., 12) in [-1, 1] -> standardised spectrum."""
  num_bands: int
  latent_dim: int = len(PARAM_NAMES)
  width: int = 256
  depth: int = 2

  def setup(self):
    self.encoder = _MLP((self.width,) * self.depth + (self.latent_dim,))
    self.decoder = _MLP((self.width,) * self.depth + (self.num_bands,))

  def encode(self, x):
    # Bounded to the sampled PROSAIL box, so dec(enc(x)) stays where the decoder was trained.
    return jnp.tanh(self.encoder(x))

  def decode(self, z):
    return self.decoder(z)

  def __call__(self, x):
    return self.decode(self.encode(x))


class RTMEmulator(struct.PyTreeNode):
  """A trained, frozen emulator; a pytree, so it can be a jit argument or a closure.

  x is reflectance (physical units, about 0..1) with shape (..., bands).
  """
  wavelengths_nm: jax.Array
  params: dict
  mean: jax.Array
  std: jax.Array
  param_lo: jax.Array  # PROSAIL inputs at latent -1 and +1
  param_hi: jax.Array
  width: int = struct.field(pytree_node=False, default=256)
  depth: int = struct.field(pytree_node=False, default=2)

  @property
  def num_bands(self) -> int:
    return self.mean.shape[-1]

  @property
  def model(self) -> RTMAutoencoder:
    return RTMAutoencoder(self.num_bands, self.param_lo.shape[-1], self.width, self.depth)

  def _check(self, x):
    if x.shape[-1] != self.num_bands:
      raise UserInputError(
          f"the RTM emulator expects {self.num_bands} bands on its last axis, got shape {x.shape}; "
          "load the emulator for this grid")

  def encode(self, x: jax.Array) -> jax.Array:
    """Reflectance (..., B) -> latent (..., 12) in [-1, 1] (scaled PROSAIL inputs)."""
    x = jnp.asarray(x)
    self._check(x)
    return self.model.apply(self.params, (x - self.mean) / self.std, method=RTMAutoencoder.encode)

  def decode(self, z: jax.Array) -> jax.Array:
    """Latent (..., 12) -> reflectance (..., B)."""
    return self.model.apply(self.params, z, method=RTMAutoencoder.decode) * self.std + self.mean

  def project(self, x: jax.Array) -> jax.Array:
    """Phi(x) = dec(enc(x)): the nearest spectrum on the learned PROSAIL manifold."""
    return self.decode(self.encode(x))

  def manifold_loss(self, x: jax.Array) -> jax.Array:
    """Per-pixel mean over bands of (x - Phi(x))^2, shape x.shape[:-1]."""
    return jnp.mean(jnp.square(x - self.project(x)), axis=-1)

  def latent_to_prosail(self, z: jax.Array) -> jax.Array:
    """Latent (..., 12) -> PROSAIL inputs in physical units, PARAM_NAMES order."""
    return self.param_lo + (z + 1.0) * 0.5 * (self.param_hi - self.param_lo)

  def prosail_to_latent(self, p: jax.Array) -> jax.Array:
    """PROSAIL inputs (..., 12), PARAM_NAMES order -> latent in [-1, 1]."""
    return 2.0 * (p - self.param_lo) / (self.param_hi - self.param_lo) - 1.0


# ----------------------------------------------------------------------------- files


def save_emulator(emulator: RTMEmulator, path, report: dict | None = None, fwhm_nm=None) -> None:
  """Writes weights (flattened tree), grid, norm stats, PROSAIL ranges and report to one .npz."""
  flat = traverse_util.flatten_dict(jax.device_get(emulator.params), sep="/")
  arrays = {f"param/{k}": np.asarray(v, np.float32) for k, v in flat.items()}
  arrays.update(
      format_version=np.asarray(_FORMAT_VERSION),
      wavelengths_nm=np.asarray(emulator.wavelengths_nm, np.float64),
      mean=np.asarray(emulator.mean, np.float32),
      std=np.asarray(emulator.std, np.float32),
      param_names=np.asarray(PARAM_NAMES),
      param_ranges=np.stack([np.asarray(emulator.param_lo), np.asarray(emulator.param_hi)], axis=1),
      config=np.asarray(json.dumps({"width": emulator.width, "depth": emulator.depth,
                                    "prospect_version": PROSPECT_VERSION})),
      report=np.asarray(json.dumps(report or {})))
  if fwhm_nm is not None:
    arrays["fwhm_nm"] = np.asarray(fwhm_nm, np.float64)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)  # a killed run never leaves a half-written file under the real name


def _grid_matches(a, b) -> bool:
  a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
  return a.shape == b.shape and bool(np.all(np.abs(a - b) <= GRID_TOLERANCE_NM))


def _read_npz(path: pathlib.Path) -> dict:
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except FileNotFoundError as e:
    raise UserInputError(f"RTM emulator file not found: {path}; check the path") from e
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
    raise UserInputError(f"{path} is not a readable RTM emulator .npz ({type(e).__name__}); "
                         f"retrain it with `{_TRAIN_COMMAND}`") from e


def _emulator_from_arrays(path: pathlib.Path, d: dict) -> RTMEmulator:
  bad = (f"{path} is not a valid RTM emulator file (%s); retrain it with `{_TRAIN_COMMAND}`")
  try:
    if int(d["format_version"]) != _FORMAT_VERSION:
      raise UserInputError(bad % f"format version {int(d['format_version'])}, expected {_FORMAT_VERSION}")
    config = json.loads(str(d["config"]))
    wl, mean, std, ranges = d["wavelengths_nm"], d["mean"], d["std"], d["param_ranges"]
    params = traverse_util.unflatten_dict(
        {k[len("param/"):]: jnp.asarray(v) for k, v in d.items() if k.startswith("param/")}, sep="/")
    width, depth = int(config["width"]), int(config["depth"])
  except UserInputError:
    raise
  except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
    raise UserInputError(bad % f"{type(e).__name__}: {e}") from e
  num_bands = wl.size
  if mean.shape != (num_bands,) or std.shape != (num_bands,) or ranges.shape != (len(PARAM_NAMES), 2) \
      or not np.all(std > 0):
    raise UserInputError(bad % "grid, norm stats and PROSAIL ranges disagree")
  model = RTMAutoencoder(num_bands, len(PARAM_NAMES), width, depth)
  want = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, num_bands), jnp.float32))
  want_shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), want)
  got_shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), params)
  if want_shapes != got_shapes:
    raise UserInputError(bad % "weight shapes do not match the architecture")
  if not all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(params)):
    raise UserInputError(bad % "NaN/Inf weights")
  return RTMEmulator(
      wavelengths_nm=jnp.asarray(wl, jnp.float32), params=params, mean=jnp.asarray(mean, jnp.float32),
      std=jnp.asarray(std, jnp.float32), param_lo=jnp.asarray(ranges[:, 0], jnp.float32),
      param_hi=jnp.asarray(ranges[:, 1], jnp.float32), width=width, depth=depth)


def shipped_weights() -> list[pathlib.Path]:
  """The .npz emulators shipped in spectral_diffusion/physics/weights/."""
  return sorted(WEIGHTS_DIR.glob("*.npz"))


def load_report(path) -> dict:
  """The training report stored in a weights file."""
  return json.loads(str(_read_npz(pathlib.Path(path))["report"]))


def load_emulator(wavelengths_nm, weights_path=None) -> RTMEmulator:
  """The emulator for a band grid: from weights_path, or the shipped file whose grid matches.

  A grid matches when it has the same number of bands and every centre lies
  within 0.5 nm.
  """
  wl = np.asarray(wavelengths_nm, np.float64).reshape(-1)
  if weights_path is not None:
    path = pathlib.Path(weights_path)
    emulator = _emulator_from_arrays(path, _read_npz(path))
    if not _grid_matches(emulator.wavelengths_nm, wl):
      raise UserInputError(
          f"{path} was trained for a {describe_grid(emulator.wavelengths_nm)}, not this {describe_grid(wl)}; "
          f"train one with `{_TRAIN_COMMAND}`")
    return emulator
  for path in shipped_weights():
    try:
      with np.load(path, allow_pickle=False) as z:
        shipped_wl = z["wavelengths_nm"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError):
      continue  # a broken shipped file must not hide a good one
    if _grid_matches(shipped_wl, wl):
      return _emulator_from_arrays(path, _read_npz(path))
  raise UserInputError(
      f"no RTM emulator for this {describe_grid(wl)}: train one with `{_TRAIN_COMMAND}` "
      "and pass its path (--config.physics.rtm_weights=rtm.npz, or weights_path= in Python), or switch "
      "the RTM terms off (physics.mspl_terms and physics.guidance_terms, third weight 0)")

