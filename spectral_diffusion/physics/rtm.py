"""RTM emulator for AnyBand-Diff's physics: a small autoencoder trained on PROSAIL spectra.

The paper trains an autoencoder on 100,000 PROSAIL spectra before the diffusion
model; its decoder follows PROSAIL and Phi(x) = dec(enc(x)) projects a spectrum
onto the PROSAIL manifold. Here the latent is the 12 PROSAIL inputs scaled to
[-1, 1]: the decoder is trained as a forward PROSAIL emulator on the true inputs
and, with the encoder, as an autoencoder (manifold loss ||x - dec(enc(x))||^2).
Everything at use time is pure JAX, so jax.grad flows through it.

Command line (trains, saves and prints the held-out report):
  python -m spectral_diffusion.physics.rtm --grid=indian_pines --out=rtm.npz
  python -m spectral_diffusion.physics.rtm --wavelengths=GRID.npy --out=rtm.npz
"""

import importlib.util
import json
import math
import multiprocessing
import os
import pathlib
import sys
import time
import zipfile
import zlib

from absl import flags
from flax import linen as nn
from flax import struct
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectral_diffusion.errors import UserInputError
from spectral_diffusion.progress import Progress

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
PROSAIL_WAVELENGTHS_NM = np.arange(400.0, 2501.0)  # PROSAIL's native 1 nm grid, 2101 samples

GRIDS = ("indian_pines", "pavia_university")
WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "weights"
GRID_TOLERANCE_NM = 0.5
_FORMAT_VERSION = 1
_CHUNK = 250  # spectra per pool task: small enough for a smooth progress bar
_TRAIN_COMMAND = "python -m spectral_diffusion.physics.rtm --wavelengths=GRID.npy --out=rtm.npz"


def grid_wavelengths(name: str) -> np.ndarray:
  """Band centres (nm) of a named grid: indian_pines (200 AVIRIS bands) or pavia_university."""
  if name == "indian_pines":
    from spectral_diffusion.data import INDIAN_PINES_WAVELENGTHS_NM  # pylint: disable=g-import-not-at-top
    return np.asarray(INDIAN_PINES_WAVELENGTHS_NM, np.float64)
  if name == "pavia_university":
    return np.linspace(430.0, 860.0, 103)  # nominal ROSIS grid; exact centres are not published
  raise UserInputError(f"unknown grid {name!r}; use one of {', '.join(GRIDS)} or pass --wavelengths=FILE")


def _describe_grid(wavelengths_nm) -> str:
  wl = np.asarray(wavelengths_nm, np.float64).reshape(-1)
  return f"{wl.size}-band grid ({wl.min():.0f}-{wl.max():.0f} nm)" if wl.size else "empty grid"


# ----------------------------------------------------------------------------- PROSAIL data


def sample_prosail_params(num_spectra: int, seed: int) -> np.ndarray:
  """(num_spectra, 12) PROSAIL inputs in PARAM_NAMES order, uniform in PROSAIL_RANGES."""
  rng = np.random.default_rng(seed)
  lo, hi = np.asarray(list(PROSAIL_RANGES.values()), np.float64).T
  return lo + (hi - lo) * rng.random((num_spectra, len(PARAM_NAMES)))


def _run_prosail(params: np.ndarray) -> np.ndarray:
  """PROSAIL SDR at nadir for rows of sample_prosail_params; runs in pool workers."""
  import prosail  # pylint: disable=g-import-not-at-top

  out = np.empty((params.shape[0], PROSAIL_WAVELENGTHS_NM.size), np.float32)
  for i, row in enumerate(params):
    p = dict(zip(PARAM_NAMES, (float(v) for v in row)))
    out[i] = prosail.run_prosail(
        p["n"], p["cab"], p["car"], p["cbrown"], p["cw"], p["cm"], p["lai"], p["lidfa"], p["hspot"],
        p["tts"], 0.0, 0.0, ant=0.0, prospect_version=PROSPECT_VERSION, typelidf=2, factor="SDR",
        rsoil=p["rsoil"], psoil=p["psoil"])
  return out


def generate_prosail_spectra(num_spectra: int, seed: int, workers: int | None = None,
                             progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Runs PROSAIL on uniformly sampled inputs, across processes.

  Args:
    num_spectra: how many spectra.
    seed: numpy Generator seed for the inputs (same seed, same spectra).
    workers: processes (default: all cores, one in-process for small runs).
    progress: show a progress bar on stderr.

  Returns:
    (params (n, 12) float32 in PARAM_NAMES order, spectra (n, 2101) float32 at 400..2500 nm).
  """
  if num_spectra < 1:
    raise UserInputError(f"num_spectra must be at least 1, got {num_spectra}")
  if importlib.util.find_spec("prosail") is None:
    raise UserInputError("PROSAIL is not installed: run `pip install prosail` (or the "
                         "spectral_diffusion[physics] extra) to generate spectra")
  params = sample_prosail_params(num_spectra, seed)
  chunks = [params[i:i + _CHUNK] for i in range(0, num_spectra, _CHUNK)]
  workers = min(workers or os.cpu_count() or 1, len(chunks))
  bar = Progress(num_spectra, "PROSAIL") if progress else None
  out = []
  if workers <= 1:
    for r in map(_run_prosail, chunks):
      out.append(r)
      if bar:
        bar.update(len(r))
  else:
    # spawn, not fork: forking a process that has started JAX's threads can deadlock.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      for r in pool.imap(_run_prosail, chunks):
        out.append(r)
        if bar:
          bar.update(len(r))
  if bar:
    bar.close()
  return params.astype(np.float32), np.concatenate(out, axis=0)


def _default_fwhm(wl: np.ndarray) -> np.ndarray:
  """The local band spacing: the smaller gap to the previous/next band in the given order.

  Taking the smaller gap ignores holes where bands were removed, and |gap| keeps
  detector seams, where AVIRIS centres step back, at about one spacing.
  """
  gaps = np.abs(np.diff(wl))
  gaps = np.where(gaps > 0.1, gaps, np.inf)  # coincident centres at seams say nothing about width
  left = np.concatenate([[np.inf], gaps])
  right = np.concatenate([gaps, [np.inf]])
  return np.minimum(left, right)


def _check_grid(wavelengths_nm, fwhm_nm=None) -> tuple[np.ndarray, np.ndarray]:
  """(centres, FWHM) as float64 arrays, or a UserInputError naming what is wrong."""
  wl = np.asarray(wavelengths_nm, np.float64).reshape(-1)
  if wl.size == 0 or not np.all(np.isfinite(wl)):
    raise UserInputError("the wavelength grid is empty or has NaN/Inf; give one finite centre (nm) per band")
  lo, hi = PROSAIL_WAVELENGTHS_NM[0], PROSAIL_WAVELENGTHS_NM[-1]
  if wl.min() < lo or wl.max() > hi:
    raise UserInputError(
        f"band centres must lie in PROSAIL's {lo:.0f}-{hi:.0f} nm, got {wl.min():.1f}-{wl.max():.1f} nm; "
        "drop the bands outside it (or check the grid is in nm, not um)")
  if fwhm_nm is None:
    if wl.size < 2:
      raise UserInputError("a one-band grid has no band spacing; pass fwhm_nm explicitly")
    fwhm = _default_fwhm(wl)
    if not np.all(np.isfinite(fwhm)):
      raise UserInputError("all band centres coincide, so there is no band spacing; pass fwhm_nm explicitly")
  else:
    fwhm = np.broadcast_to(np.asarray(fwhm_nm, np.float64), wl.shape).copy() if np.ndim(fwhm_nm) == 0 \
        else np.asarray(fwhm_nm, np.float64).reshape(-1)
    if fwhm.shape != wl.shape or not np.all(np.isfinite(fwhm) & (fwhm > 0)):
      raise UserInputError(f"fwhm_nm must be one positive number or one per band ({wl.size}); got {fwhm.shape}")
  return wl, fwhm


def response_matrix(wavelengths_nm, fwhm_nm=None) -> np.ndarray:
  """(bands, 2101) Gaussian responses on PROSAIL's 1 nm grid, each row summing to 1."""
  wl, fwhm = _check_grid(wavelengths_nm, fwhm_nm)
  sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
  # A response narrower than the 1 nm grid still needs a sample: floor sigma at 0.3 nm.
  sigma = np.maximum(sigma, 0.3)
  w = np.exp(-0.5 * ((PROSAIL_WAVELENGTHS_NM[None, :] - wl[:, None]) / sigma[:, None]) ** 2)
  return w / w.sum(axis=1, keepdims=True)  # renormalised: responses cut at 400/2500 nm stay unbiased


def resample_to_grid(spectra_1nm, wavelengths_nm, fwhm_nm=None) -> np.ndarray:
  """Band-averages PROSAIL spectra (..., 2101) at 400..2500 nm onto a band grid.

  Args:
    spectra_1nm: reflectance at PROSAIL's 1 nm grid, last axis 2101.
    wavelengths_nm: band centres (B,) in nm, all inside 400-2500 nm; need not be
      increasing (AVIRIS centres step back at detector seams).
    fwhm_nm: Gaussian FWHM per band (scalar or (B,)); default: the local band spacing.

  Returns:
    (..., B) float32.
  """
  s = np.asarray(spectra_1nm, np.float32)
  if s.shape[-1] != PROSAIL_WAVELENGTHS_NM.size:
    raise UserInputError(f"expected spectra at 400..2500 nm in 1 nm steps (last axis 2101), got shape {s.shape}")
  w = response_matrix(wavelengths_nm, fwhm_nm).astype(np.float32)
  return s @ w.T


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


# ----------------------------------------------------------------------------- training


def _param_bounds() -> tuple[np.ndarray, np.ndarray]:
  lo, hi = np.asarray(list(PROSAIL_RANGES.values()), np.float32).T
  return lo, hi


def _split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  perm = np.random.default_rng(seed + 1).permutation(n)
  n_hold = int(round(n * holdout))
  return perm[n_hold:], perm[:n_hold]


def _heldout_report(emulator: RTMEmulator, x: np.ndarray, p: np.ndarray) -> dict:
  """Reflectance-unit errors of dec(enc(x)) and of dec(true inputs) on held-out spectra."""
  project = jax.jit(emulator.project)
  forward = jax.jit(lambda q: emulator.decode(emulator.prosail_to_latent(q)))
  rec = np.concatenate([np.asarray(project(x[i:i + 4096])) for i in range(0, len(x), 4096)])
  fwd = np.concatenate([np.asarray(forward(p[i:i + 4096])) for i in range(0, len(x), 4096)])
  per_px = np.sqrt(np.mean((rec - x) ** 2, axis=-1))
  rel = np.linalg.norm(rec - x, axis=-1) / np.maximum(np.linalg.norm(x, axis=-1), 1e-6)
  return {
      "heldout_rmse": float(np.sqrt(np.mean((rec - x) ** 2))),
      "heldout_rmse_per_spectrum_median": float(np.median(per_px)),
      "heldout_rmse_per_spectrum_p99": float(np.percentile(per_px, 99)),
      "heldout_rmse_per_spectrum_max": float(per_px.max()),
      "heldout_relative_error": float(np.mean(rel)),
      "heldout_forward_rmse": float(np.sqrt(np.mean((fwd - x) ** 2))),
      "heldout_mean_reflectance": float(np.mean(x)),
  }


def train_emulator(wavelengths_nm, num_spectra: int = 100_000, num_steps: int = 8000,
                   batch_size: int = 512, seed: int = 0, holdout: float = 0.05, progress: bool = True,
                   *, fwhm_nm=None, prosail_data=None, workers: int | None = None, width: int = 256,
                   depth: int = 2, learning_rate: float = 2e-3) -> tuple[RTMEmulator, dict]:
  """Trains an emulator for a band grid on PROSAIL spectra.

  Loss (on per-band standardised spectra): ||x - dec(enc(x))||^2 (manifold) +
  ||x - dec(p)||^2 (the decoder follows PROSAIL from its true inputs p) +
  0.1 ||enc(x) - p||^2, with p scaled to [-1, 1].

  Args:
    wavelengths_nm: band centres (B,) in 400-2500 nm.
    num_spectra: PROSAIL spectra to generate (ignored when prosail_data is given).
    num_steps: Adam steps (cosine-decayed learning rate).
    batch_size: spectra per step.
    seed: seed for PROSAIL inputs, the split and the initialisation.
    holdout: fraction of spectra held out for the report.
    progress: progress bars on stderr.
    fwhm_nm: band FWHM (scalar or (B,)); default: local band spacing.
    prosail_data: (params (n, 12), spectra (n, 2101)) from generate_prosail_spectra, to reuse.
    workers: PROSAIL processes.
    width: hidden width of both MLPs.
    depth: hidden layers of each MLP.
    learning_rate: peak learning rate.

  Returns:
    (emulator, report): the report holds held-out errors in reflectance units.
  """
  wl, fwhm = _check_grid(wavelengths_nm, fwhm_nm)
  if not 0.0 < holdout < 1.0:
    raise UserInputError(f"holdout must be a fraction in (0, 1), got {holdout}")
  if num_steps < 1 or batch_size < 1:
    raise UserInputError(f"num_steps and batch_size must be positive, got {num_steps} and {batch_size}")
  t0 = time.perf_counter()
  source = "given (prosail_data)"
  if prosail_data is None:
    prosail_data = generate_prosail_spectra(num_spectra, seed, workers=workers, progress=progress)
    source = f"generated in {time.perf_counter() - t0:.0f} s"
  params_phys, spectra_1nm = prosail_data
  if len(params_phys) != len(spectra_1nm):
    raise UserInputError(f"prosail_data has {len(params_phys)} parameter rows for {len(spectra_1nm)} spectra; "
                         "pass the pair returned by generate_prosail_spectra")
  x_all = resample_to_grid(spectra_1nm, wl, fwhm)
  lo, hi = _param_bounds()
  p_all = (2.0 * (np.asarray(params_phys, np.float32) - lo) / (hi - lo) - 1.0).astype(np.float32)
  train_idx, hold_idx = _split(len(x_all), holdout, seed)
  if len(hold_idx) < 1 or len(train_idx) < 2:
    raise UserInputError(f"{len(x_all)} spectra leave no held-out or training set at holdout={holdout}; "
                         "generate more spectra")
  x_train, p_train = x_all[train_idx], p_all[train_idx]
  mean = x_train.mean(axis=0)
  std = np.maximum(x_train.std(axis=0), 1e-4)

  model = RTMAutoencoder(len(wl), len(PARAM_NAMES), width, depth)
  key = jax.random.PRNGKey(seed)
  variables = model.init(key, jnp.zeros((1, len(wl)), jnp.float32))
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(200, num_steps // 10 + 1),
                                                num_steps, end_value=learning_rate * 1e-3)
  tx = optax.adam(schedule)
  opt_state = tx.init(variables)
  xs = jnp.asarray((x_train - mean) / std)
  ps = jnp.asarray(p_train)
  bs = min(batch_size, len(x_train))

  def loss_fn(v, x, p):
    z = model.apply(v, x, method=RTMAutoencoder.encode)
    rec = model.apply(v, z, method=RTMAutoencoder.decode)
    fwd = model.apply(v, p, method=RTMAutoencoder.decode)
    manifold = jnp.mean(jnp.square(rec - x))
    loss = manifold + jnp.mean(jnp.square(fwd - x)) + 0.1 * jnp.mean(jnp.square(z - p))
    return loss, manifold

  @jax.jit
  def step(v, opt_state, key):
    idx = jax.random.randint(key, (bs,), 0, xs.shape[0])
    (loss, manifold), g = jax.value_and_grad(loss_fn, has_aux=True)(v, xs[idx], ps[idx])
    updates, opt_state = tx.update(g, opt_state, v)
    return optax.apply_updates(v, updates), opt_state, loss, manifold

  bar = Progress(num_steps, "RTM emulator") if progress else None
  t1 = time.perf_counter()
  for i in range(num_steps):
    variables, opt_state, loss, manifold = step(variables, opt_state, jax.random.fold_in(key, i))
    if bar and (i % 50 == 0 or i == num_steps - 1):  # float() syncs, so only now and then
      bar.update(i + 1 - bar.n, postfix=f"loss {float(loss):.4f} manifold {float(manifold):.5f} (standardised)")
  final_loss = float(loss)
  if not math.isfinite(final_loss):
    raise RuntimeError(f"RTM emulator training diverged (loss {final_loss}); lower learning_rate")
  if bar:
    bar.close()
  t_train = time.perf_counter() - t1

  emulator = RTMEmulator(
      wavelengths_nm=jnp.asarray(wl, jnp.float32), params=variables, mean=jnp.asarray(mean),
      std=jnp.asarray(std), param_lo=jnp.asarray(lo), param_hi=jnp.asarray(hi), width=width, depth=depth)
  report = {
      "grid": _describe_grid(wl),
      "num_spectra": int(len(x_all)),
      "num_train": int(len(train_idx)),
      "num_heldout": int(len(hold_idx)),
      "num_steps": int(num_steps),
      "batch_size": int(bs),
      "seed": int(seed),
      "width": int(width),
      "depth": int(depth),
      "latent_dim": len(PARAM_NAMES),
      "num_weights": int(sum(a.size for a in jax.tree_util.tree_leaves(variables))),
      "final_train_loss": final_loss,
      "prosail_spectra": source,
      "train_seconds": round(t_train, 1),
      "prosail": f"prosail.run_prosail, PROSPECT-{PROSPECT_VERSION}, typelidf=2, SDR, nadir view",
  }
  report.update(_heldout_report(emulator, x_all[hold_idx], np.asarray(params_phys, np.float32)[hold_idx]))
  return emulator, report


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
          f"{path} was trained for a {_describe_grid(emulator.wavelengths_nm)}, not this {_describe_grid(wl)}; "
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
      f"no RTM emulator for this {_describe_grid(wl)}: train one with `{_TRAIN_COMMAND}` "
      "and pass its path (--config.physics.rtm_weights=rtm.npz, or weights_path= in Python), or switch "
      "the RTM terms off (physics.mspl_terms and physics.guidance_terms, third weight 0)")


# ----------------------------------------------------------------------------- command line


def read_wavelengths(path) -> tuple[np.ndarray, np.ndarray | None]:
  """(centres, FWHM or None) from .npy (1-D) or .csv/.txt (one column, or a header naming a centre column)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserInputError(f"wavelength file not found: {path}; check the path")
  try:
    if path.suffix == ".npy":
      return np.asarray(np.load(path, allow_pickle=False), np.float64).reshape(-1), None
    if path.suffix not in (".csv", ".txt"):
      raise UserInputError(f"{path}: wavelengths must be .npy, .csv or .txt")
    text = path.read_text(encoding="utf-8").strip().splitlines()
    delim = "," if "," in text[0] else None
    first = text[0].split(delim)
    if any(c.isalpha() for c in text[0]):
      names = [c.strip().lower() for c in first]
      table = np.loadtxt(text[1:], delimiter=delim, ndmin=2)
      centre = [i for i, n in enumerate(names) if "center" in n or "centre" in n or "wavelength" in n]
      if not centre:
        raise UserInputError(f"{path}: no column named like 'center_nm' or 'wavelength'; name the centre column")
      fwhm = [i for i, n in enumerate(names) if "fwhm" in n]
      return table[:, centre[0]], (table[:, fwhm[0]] if fwhm else None)
    table = np.loadtxt(text, delimiter=delim, ndmin=2)
    return table[:, 0], None
  except UserInputError:
    raise
  except (ValueError, OSError, IndexError) as e:
    raise UserInputError(f"{path}: cannot read wavelengths ({type(e).__name__}); "
                         "give one centre (nm) per line or a .npy array") from e


def _load_or_generate(num_spectra, seed, workers, cache, progress):
  """PROSAIL spectra, reused from an .npz cache when it holds the same seed and at least as many."""
  if cache and os.path.isfile(cache):
    try:
      with np.load(cache, allow_pickle=False) as z:
        if int(z["seed"]) == seed and len(z["spectra"]) >= num_spectra:
          print(f"PROSAIL spectra from {cache}", file=sys.stderr)
          # Generator.random fills row by row, so the first n rows are what seed gives for n.
          return z["params"][:num_spectra], z["spectra"][:num_spectra]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
      raise UserInputError(f"--spectra_cache={cache} is not a readable PROSAIL cache ({type(e).__name__}); "
                           "delete it to regenerate") from e
  data = generate_prosail_spectra(num_spectra, seed, workers=workers, progress=progress)
  if cache:
    np.savez(cache, seed=seed, params=data[0], spectra=data[1])
  return data


def define_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_enum("grid", None, list(GRIDS), "a named band grid", flag_values=fv)
  flags.DEFINE_string("wavelengths", None, "band centres in nm: .npy, or .csv/.txt (a header may name "
                      "center_nm and fwhm_nm columns)", flag_values=fv)
  flags.DEFINE_float("fwhm_nm", None, "one FWHM for all bands (default: the file's fwhm column, else "
                     "the band spacing)", flag_values=fv)
  flags.DEFINE_string("out", None, "output .npz", flag_values=fv)
  flags.DEFINE_integer("num_spectra", 100_000, "PROSAIL spectra to train on", flag_values=fv)
  flags.DEFINE_integer("num_steps", 8000, "Adam steps", flag_values=fv)
  flags.DEFINE_integer("batch_size", 512, "spectra per step", flag_values=fv)
  flags.DEFINE_integer("width", 256, "hidden width", flag_values=fv)
  flags.DEFINE_integer("depth", 2, "hidden layers per MLP", flag_values=fv)
  flags.DEFINE_float("learning_rate", 2e-3, "peak learning rate", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "seed for PROSAIL inputs, split and init", flag_values=fv)
  flags.DEFINE_integer("workers", None, "PROSAIL processes (default: all cores)", flag_values=fv)
  flags.DEFINE_string("spectra_cache", None, "an .npz of 1 nm PROSAIL spectra to reuse, written if absent "
                      "(keep it outside the repository)", flag_values=fv)
  flags.DEFINE_bool("progress", True, "progress bars on stderr", flag_values=fv)
  return fv


def run(fv: flags.FlagValues) -> dict:
  if (fv.grid is None) == (fv.wavelengths is None):
    raise UserInputError("give exactly one of --grid=indian_pines|pavia_university or --wavelengths=FILE")
  if not fv.out:
    raise UserInputError("no --out given; e.g. --out=rtm.npz")
  if fv.grid:
    wl, fwhm = grid_wavelengths(fv.grid), None
  else:
    wl, fwhm = read_wavelengths(fv.wavelengths)
  if fv.fwhm_nm is not None:
    fwhm = fv.fwhm_nm
  wl, fwhm = _check_grid(wl, fwhm)
  data = _load_or_generate(fv.num_spectra, fv.seed, fv.workers, fv.spectra_cache, fv.progress)
  emulator, report = train_emulator(
      wl, num_steps=fv.num_steps, batch_size=fv.batch_size, seed=fv.seed, progress=fv.progress,
      fwhm_nm=fwhm, prosail_data=data, width=fv.width, depth=fv.depth, learning_rate=fv.learning_rate)
  save_emulator(emulator, fv.out, report, fwhm_nm=fwhm)
  report["out"] = str(fv.out)
  print(json.dumps(report, indent=1))
  return report


def main(argv=None) -> int:
  argv = sys.argv if argv is None else argv
  fv = define_flags()
  try:
    fv(argv)
    run(fv)
  except flags.Error as e:
    print(f"error: {' '.join(str(e).split())} (see --help)", file=sys.stderr)
    return 2
  except UserInputError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
