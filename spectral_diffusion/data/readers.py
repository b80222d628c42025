"""Readers for hyperspectral scenes: .npy, .npz and MATLAB .mat (v5 and v7.3)."""

import dataclasses
import importlib.util
import pathlib
import re
import warnings
from typing import Callable, Sequence

import numpy as np

from spectral_diffusion.data._indian_pines_wavelengths import INDIAN_PINES_WAVELENGTHS_NM
from spectral_diffusion.errors import UserInputError

SUPPORTED_EXTENSIONS = (".npy", ".npz", ".mat")
RGB_NM = (640.0, 550.0, 460.0)

# MATLAB classes that hold numbers (char, cell, struct, logical and objects do not).
_NUMERIC_MATLAB_CLASSES = frozenset({
    "double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"})
# wavelength, wavelengths, wavlength (a real misspelling), wavlen, AVIRIS_wavlen, wl, wavelength_nm.
_WAVELENGTH_KEY = re.compile(r"(^|_)(wave?len(gth)?s?|wls?)(_nm)?$")


@dataclasses.dataclass(frozen=True, eq=False)
class HyperspectralScene:
  """A cube (H, W, B) float32 with optional band centres (B,) in nm."""
  cube: np.ndarray
  wavelengths_nm: np.ndarray | None
  name: str

  def __post_init__(self):
    cube = np.asarray(self.cube, dtype=np.float32)
    if cube.ndim != 3:
      raise UserInputError(
          f"{self.name}: expected a 3-D (H, W, B) cube, got shape {cube.shape}; reshape it to (H, W, B)")
    object.__setattr__(self, "cube", cube)
    if self.wavelengths_nm is not None:
      wl = np.asarray(self.wavelengths_nm, dtype=np.float64).reshape(-1)
      if wl.shape[0] != cube.shape[2]:
        raise UserInputError(
            f"{self.name}: {wl.shape[0]} wavelengths for {cube.shape[2]} bands; "
            "give one wavelength per band")
      object.__setattr__(self, "wavelengths_nm", wl)


def _one_line(exc: BaseException) -> str:
  text = " ".join(str(exc).split())
  return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_indian_pines() -> HyperspectralScene:
  """The AVIRIS Indian Pines scene shipped in the tensorly wheel, as raw float32 at-sensor values."""
  # find_spec locates the package without importing tensorly (and its backends).
  spec = importlib.util.find_spec("tensorly")
  path = None
  if spec is not None and spec.submodule_search_locations:
    for root in spec.submodule_search_locations:
      candidate = pathlib.Path(root) / "datasets" / "data" / "Indian_pines_corrected.npy"
      if candidate.is_file():
        path = candidate
        break
  if path is None:
    raise UserInputError(
        "the default scene (Indian Pines) was not found: it ships in the tensorly wheel; "
        "run `pip install tensorly` or pass your own scene file")
  cube = load_array(path)
  return HyperspectralScene(
      cube=cube.astype(np.float32),
      wavelengths_nm=np.asarray(INDIAN_PINES_WAVELENGTHS_NM, dtype=np.float64),
      name="indian_pines")


# A container maps variable names to (shape, is_numeric) and reads one variable by name.
_Container = tuple[dict[str, tuple[tuple[int, ...], bool]], Callable[[str], np.ndarray]]


def _is_numeric(dtype: np.dtype) -> bool:
  return np.issubdtype(dtype, np.number) or dtype == np.bool_


def _open_mat_v73(path: pathlib.Path) -> _Container:
  import h5py  # pylint: disable=g-import-not-at-top

  entries = {}
  with h5py.File(path, "r") as f:
    for name, item in f.items():
      if name.startswith("#") or not isinstance(item, h5py.Dataset):
        continue  # '#refs#', '#subsystem#' and struct groups
      cls = item.attrs.get("MATLAB_class", b"double")
      cls = cls.decode() if isinstance(cls, bytes) else str(cls)
      numeric = cls in _NUMERIC_MATLAB_CLASSES and _is_numeric(item.dtype)
      # MATLAB is column-major: h5py sees the axes reversed.
      entries[name] = (tuple(reversed(item.shape)), numeric)

  def read(name):
    with h5py.File(path, "r") as f:
      return np.asarray(f[name][()]).T

  return entries, read


def _open_mat_v5(path: pathlib.Path) -> _Container:
  import scipy.io  # pylint: disable=g-import-not-at-top

  entries = {name: (tuple(shape), cls in _NUMERIC_MATLAB_CLASSES)
             for name, shape, cls in scipy.io.whosmat(str(path))}

  def read(name):
    return np.asarray(scipy.io.loadmat(str(path), variable_names=[name])[name])

  return entries, read


def _open_npz(path: pathlib.Path) -> _Container:
  with np.load(path, allow_pickle=False) as z:
    arrays = {name: z[name] for name in z.files}
  entries = {name: (a.shape, _is_numeric(a.dtype)) for name, a in arrays.items()}
  return entries, arrays.__getitem__


def _open(path: pathlib.Path) -> _Container:
  """Lists the variables of a .mat or .npz file."""
  if path.suffix.lower() == ".npz":
    return _open_npz(path)
  import h5py  # pylint: disable=g-import-not-at-top

  # scipy.io cannot read v7.3 files, which are HDF5.
  if h5py.is_hdf5(str(path)):
    return _open_mat_v73(path)
  return _open_mat_v5(path)


def _check_path(path) -> pathlib.Path:
  path = pathlib.Path(path)
  if not path.is_file():
    where = "" if path.is_absolute() else f" (relative to {pathlib.Path.cwd()})"
    raise UserInputError(f"file not found: {path}{where}; check the path")
  if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
    raise UserInputError(
        f"{path}: unsupported file type '{path.suffix}'; supported: {', '.join(SUPPORTED_EXTENSIONS)} "
        "(save your array with numpy.save or MATLAB save)")
  return path


def _pick_key(path: pathlib.Path, entries, key: str | None) -> str:
  """The requested key, or the single largest numeric array with ndim >= 2."""
  if key is not None:
    if key not in entries:
      raise UserInputError(
          f"{path}: no variable '{key}'; available: {', '.join(sorted(entries)) or 'none'}")
    if not entries[key][1]:
      raise UserInputError(f"{path}: variable '{key}' is not a numeric array; pass the key of the cube")
    return key
  candidates = {k: shape for k, (shape, numeric) in entries.items() if numeric and len(shape) >= 2}
  if not candidates:
    raise UserInputError(
        f"{path}: no numeric array with 2 or more dimensions; available: "
        f"{', '.join(sorted(entries)) or 'none'}; save the cube as a numeric (H, W, B) array")
  sizes = {k: int(np.prod(shape)) for k, shape in candidates.items()}
  largest = max(sizes.values())
  best = sorted(k for k, s in sizes.items() if s == largest)
  if len(best) > 1:
    listing = ", ".join(f"{k} {candidates[k]}" for k in best)
    raise UserInputError(f"{path}: several arrays could be the cube ({listing}); pass key= to choose one")
  return best[0]


def _read(path: pathlib.Path, key: str | None) -> tuple[np.ndarray, _Container | None]:
  """Reads the array and, for .mat/.npz, keeps the container for the wavelengths lookup."""
  suffix = path.suffix.lower()
  try:
    if suffix == ".npy":
      if key is not None:
        raise UserInputError(f"{path}: a .npy file holds one array, so key='{key}' does not apply; drop key")
      arr = np.load(path, allow_pickle=False)
      container = None
    else:
      container = _open(path)
      arr = container[1](_pick_key(path, container[0], key))
  except UserInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserInputError(
        f"{path}: could not read the file ({_one_line(e)}); check it is a complete, valid {suffix} file "
        "and re-export it") from e
  if not _is_numeric(arr.dtype):
    raise UserInputError(f"{path}: the array has dtype {arr.dtype}, not numbers; save a numeric array")
  return arr, container


def load_array(path, key: str | None = None) -> np.ndarray:
  """Reads one numeric array from .npy, .npz or .mat (v5 or v7.3) in its stored dtype."""
  arr, _ = _read(_check_path(path), key)
  return arr


def _wavelengths(path, container: _Container | None, num_bands: int, key: str | None):
  """Band centres in nm from the named (or a wavelength-like) variable, or None."""
  if container is None:
    if key is not None:
      raise UserInputError(
          f"{path}: wavelengths_key='{key}' needs a .mat or .npz file; a .npy file has no named variables")
    return None
  entries, read = container
  if key is not None:
    if key not in entries or not entries[key][1]:
      raise UserInputError(
          f"{path}: no numeric variable '{key}' for the wavelengths; available: {', '.join(sorted(entries))}")
    keys = [key]
  else:
    keys = [k for k, (_, numeric) in entries.items() if numeric and _WAVELENGTH_KEY.search(k.lower())]
    sized = [k for k in keys if int(np.prod(entries[k][0])) == num_bands]
    for k in sorted(set(keys) - set(sized)):
      warnings.warn(f"{path}: ignoring '{k}': {int(np.prod(entries[k][0]))} values for {num_bands} bands")
    if len(sized) > 1:
      raise UserInputError(
          f"{path}: several wavelength variables ({', '.join(sorted(sized))}); pass wavelengths_key= to choose")
    keys = sized
  if not keys:
    return None
  wl = np.asarray(read(keys[0]), dtype=np.float64).reshape(-1)
  if wl.shape[0] != num_bands:
    raise UserInputError(
        f"{path}: '{keys[0]}' has {wl.shape[0]} values for {num_bands} bands; pass the right wavelengths_key")
  if not np.all(np.isfinite(wl)) or np.any(wl <= 0):
    raise UserInputError(f"{path}: '{keys[0]}' has non-positive or NaN wavelengths; fix the file")
  if wl.max() < 100.0:
    wl = wl * 1000.0  # stored in micrometres (as USGS and ENVI often do)
  return wl


def load_scene(path, key: str | None = None, wavelengths_key: str | None = None,
               name: str | None = None) -> HyperspectralScene:
  """Loads a (H, W, B) cube and, from a .mat/.npz, its band centres in nm."""
  path = _check_path(path)
  arr, container = _read(path, key)
  if arr.ndim != 3:
    hint = (" (one band, or pixels and bands flattened); reshape it to (H, W, B) and save it as .npy"
            if arr.ndim == 2 else "; save the cube as a (H, W, B) array")
    raise UserInputError(f"{path}: expected a 3-D (H, W, B) cube, got shape {arr.shape}{hint}")
  wl = _wavelengths(path, container, arr.shape[2], wavelengths_key)
  return HyperspectralScene(cube=arr.astype(np.float32), wavelengths_nm=wl, name=name or path.stem)


def check_finite(cube, what: str) -> None:
  """Raises if the array has NaN or Inf values, with their count and the first position."""
  cube = np.asarray(cube)
  if not np.issubdtype(cube.dtype, np.inexact):
    return
  bad = ~np.isfinite(cube)
  count = int(np.count_nonzero(bad))
  if count == 0:
    return
  first = np.unravel_index(int(np.argmax(bad.reshape(-1))), cube.shape)
  labels = ("row", "col", "band") if cube.ndim <= 3 else ("batch", "row", "col", "band")
  if cube.ndim <= 4:
    where = ", ".join(f"{lab} {int(i)}" for lab, i in zip(labels, first))
  else:
    where = f"index {tuple(int(i) for i in first)}"
  raise UserInputError(
      f"{what}: {count} NaN/Inf values (first at {where}); fill or mask them before running")


def nearest_bands(wavelengths_nm, targets_nm: Sequence[float], max_gap_nm: float = 50.0) -> list[int]:
  """Index of the band nearest each target wavelength (any band order, overlaps allowed)."""
  if wavelengths_nm is None:
    raise UserInputError(
        "the scene has no band wavelengths; load a file that stores them or pass wavelengths_key")
  wl = np.asarray(wavelengths_nm, dtype=np.float64).reshape(-1)
  if wl.size == 0:
    raise UserInputError("the scene has an empty wavelength list; give one wavelength per band")
  indices = []
  for target in targets_nm:
    i = int(np.argmin(np.abs(wl - float(target))))
    gap = abs(wl[i] - float(target))
    if gap > max_gap_nm:
      raise UserInputError(
          f"no band within {max_gap_nm:g} nm of {float(target):g} nm (nearest is {wl[i]:.1f} nm; "
          f"the scene covers {wl.min():.1f}-{wl.max():.1f} nm); choose target wavelengths inside that range")
    indices.append(i)
  return indices
