"""Trains an RTM emulator (physics.rtm) for a band grid on PROSAIL spectra, saves it and prints its
held-out report. Needs PROSAIL (pip install prosail, or the spectral_diffusion[physics] extra); the
emulators for the Indian Pines and Pavia University grids ship trained.

  python -m spectral_diffusion.tools.train_rtm --grid=indian_pines --out=rtm.npz
  python -m spectral_diffusion.tools.train_rtm --wavelengths=GRID.npy --out=rtm.npz
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
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectral_diffusion.errors import UserInputError
from spectral_diffusion.physics import rtm
from spectral_diffusion.progress import Progress

PROSAIL_WAVELENGTHS_NM = np.arange(400.0, 2501.0)  # PROSAIL's native 1 nm grid, 2101 samples
_CHUNK = 250  # spectra per pool task: small enough for a smooth progress bar


# ----------------------------------------------------------------------------- PROSAIL data


def sample_prosail_params(num_spectra: int, seed: int) -> np.ndarray:
  """(num_spectra, 12) PROSAIL inputs in rtm.PARAM_NAMES order, uniform in rtm.PROSAIL_RANGES."""
  rng = np.random.default_rng(seed)
  lo, hi = np.asarray(list(rtm.PROSAIL_RANGES.values()), np.float64).T
  return lo + (hi - lo) * rng.random((num_spectra, len(rtm.PARAM_NAMES)))


def _run_prosail(params: np.ndarray) -> np.ndarray:
  """PROSAIL SDR at nadir for rows of sample_prosail_params; runs in pool workers."""
  import prosail  # pylint: disable=g-import-not-at-top

  out = np.empty((params.shape[0], PROSAIL_WAVELENGTHS_NM.size), np.float32)
  for i, row in enumerate(params):
    p = dict(zip(rtm.PARAM_NAMES, (float(v) for v in row)))
    out[i] = prosail.run_prosail(
        p["n"], p["cab"], p["car"], p["cbrown"], p["cw"], p["cm"], p["lai"], p["lidfa"], p["hspot"],
        p["tts"], 0.0, 0.0, ant=0.0, prospect_version=rtm.PROSPECT_VERSION, typelidf=2, factor="SDR",
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
    (params (n, 12) float32 in rtm.PARAM_NAMES order, spectra (n, 2101) float32 at 400..2500 nm).
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


# ----------------------------------------------------------------------------- band grid


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


# ----------------------------------------------------------------------------- training


def _param_bounds() -> tuple[np.ndarray, np.ndarray]:
  lo, hi = np.asarray(list(rtm.PROSAIL_RANGES.values()), np.float32).T
  return lo, hi


def _split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  perm = np.random.default_rng(seed + 1).permutation(n)
  n_hold = int(round(n * holdout))
  return perm[n_hold:], perm[:n_hold]


def _heldout_report(emulator: rtm.RTMEmulator, x: np.ndarray, p: np.ndarray) -> dict:
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
                   depth: int = 2, learning_rate: float = 2e-3) -> tuple[rtm.RTMEmulator, dict]:
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

  model = rtm.RTMAutoencoder(len(wl), len(rtm.PARAM_NAMES), width, depth)
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
    z = model.apply(v, x, method=rtm.RTMAutoencoder.encode)
    rec = model.apply(v, z, method=rtm.RTMAutoencoder.decode)
    fwd = model.apply(v, p, method=rtm.RTMAutoencoder.decode)
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

  emulator = rtm.RTMEmulator(
      wavelengths_nm=jnp.asarray(wl, jnp.float32), params=variables, mean=jnp.asarray(mean),
      std=jnp.asarray(std), param_lo=jnp.asarray(lo), param_hi=jnp.asarray(hi), width=width, depth=depth)
  report = {
      "grid": rtm.describe_grid(wl),
      "num_spectra": int(len(x_all)),
      "num_train": int(len(train_idx)),
      "num_heldout": int(len(hold_idx)),
      "num_steps": int(num_steps),
      "batch_size": int(bs),
      "seed": int(seed),
      "width": int(width),
      "depth": int(depth),
      "latent_dim": len(rtm.PARAM_NAMES),
      "num_weights": int(sum(a.size for a in jax.tree_util.tree_leaves(variables))),
      "final_train_loss": final_loss,
      "prosail_spectra": source,
      "train_seconds": round(t_train, 1),
      "prosail": f"prosail.run_prosail, PROSPECT-{rtm.PROSPECT_VERSION}, typelidf=2, SDR, nadir view",
  }
  report.update(_heldout_report(emulator, x_all[hold_idx], np.asarray(params_phys, np.float32)[hold_idx]))
  return emulator, report


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
  flags.DEFINE_enum("grid", None, list(rtm.GRIDS), "a named band grid", flag_values=fv)
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
    wl, fwhm = rtm.grid_wavelengths(fv.grid), None
  else:
    wl, fwhm = read_wavelengths(fv.wavelengths)
  if fv.fwhm_nm is not None:
    fwhm = fv.fwhm_nm
  wl, fwhm = _check_grid(wl, fwhm)
  data = _load_or_generate(fv.num_spectra, fv.seed, fv.workers, fv.spectra_cache, fv.progress)
  emulator, report = train_emulator(
      wl, num_steps=fv.num_steps, batch_size=fv.batch_size, seed=fv.seed, progress=fv.progress,
      fwhm_nm=fwhm, prosail_data=data, width=fv.width, depth=fv.depth, learning_rate=fv.learning_rate)
  rtm.save_emulator(emulator, fv.out, report, fwhm_nm=fwhm)
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

