"""Readers for hyperspectral scenes: .npy, .npz, MATLAB .mat (v5 and v7.3), ENVI (.hdr + binary) and
GeoTIFF (or any raster GDAL reads, through rasterio), with band centres and georeferencing."""

import dataclasses
import importlib.util
import pathlib
import re
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from spectral_diffusion.data import values
from spectral_diffusion.data._indian_pines_wavelengths import INDIAN_PINES_WAVELENGTHS_NM
from spectral_diffusion.data.geo import GEOTIFF_EXTENSIONS
from spectral_diffusion.errors import UserInputError

ARRAY_EXTENSIONS = (".npy", ".npz", ".mat")
ENVI_EXTENSIONS = (".hdr", ".img", ".dat", ".bsq", ".bil", ".bip", ".raw")
SUPPORTED_EXTENSIONS = ARRAY_EXTENSIONS + GEOTIFF_EXTENSIONS + ENVI_EXTENSIONS
RGB_NM = (640.0, 550.0, 460.0)

# MATLAB classes that hold numbers (char, cell, struct, logical and objects do not).
_NUMERIC_MATLAB_CLASSES = frozenset({
    "double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"})
# wavelength, wavelengths, wavlength (a real misspelling), wavlen, AVIRIS_wavlen, wl, wavelength_nm.
_WAVELENGTH_KEY = re.compile(r"(^|_)(wave?len(gth)?s?|wls?)(_nm)?$")
# ENVI 'wavelength units' (and GDAL's wavelength_units tags) -> factor to nm.
_UNITS_TO_NM = {"nanometers": 1.0, "nanometres": 1.0, "nm": 1.0, "micrometers": 1000.0,
                "micrometres": 1000.0, "microns": 1000.0, "um": 1000.0, "µm": 1000.0,
                "millimeters": 1e6, "mm": 1e6}


@dataclasses.dataclass(frozen=True, eq=False)
class HyperspectralScene:
  """A cube (H, W, B) float32 with optional band centres (B,) in nm.

  Files with georeferencing also fill crs (rasterio CRS), transform (affine.Affine of the pixel grid)
  and nodata (the file's nodata value; those samples are NaN in the cube); ENVI and GeoTIFF may give
  fwhm_nm (B,) and band_names. Writers copy these to outputs (data.write_geotiff(like=scene)).
  """
  cube: np.ndarray
  wavelengths_nm: np.ndarray | None
  name: str
  crs: Any = None
  transform: Any = None
  nodata: float | None = None
  fwhm_nm: np.ndarray | None = None
  band_names: tuple[str, ...] | None = None

  def __post_init__(self):
    cube = np.asarray(self.cube, dtype=np.float32)
    if cube.ndim != 3:
      raise UserInputError(
          f"{self.name}: expected a 3-D (H, W, B) cube, got shape {cube.shape}; reshape it to (H, W, B)")
    object.__setattr__(self, "cube", cube)
    for field in ("wavelengths_nm", "fwhm_nm"):
      values = getattr(self, field)
      if values is not None:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape[0] != cube.shape[2]:
          what = "wavelengths" if field == "wavelengths_nm" else "FWHM values"
          raise UserInputError(
              f"{self.name}: {values.shape[0]} {what} for {cube.shape[2]} bands; give one per band")
        object.__setattr__(self, field, values)
    if self.band_names is not None:
      names = tuple(str(n) for n in self.band_names)
      if len(names) != cube.shape[2]:
        raise UserInputError(f"{self.name}: {len(names)} band names for {cube.shape[2]} bands")
      object.__setattr__(self, "band_names", names)


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
  if path.is_dir():
    raise UserInputError(f"{path} is a directory, not a file; give the image file inside it "
                         f"({', '.join(SUPPORTED_EXTENSIONS)})")
  if not path.is_file():
    where = "" if path.is_absolute() else f" (relative to {pathlib.Path.cwd()})"
    raise UserInputError(f"file not found: {path}{where}; check the path")
  if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
    raise UserInputError(
        f"{path}: unsupported file type '{path.suffix}'; supported: {', '.join(SUPPORTED_EXTENSIONS)} "
        "(save your array with numpy.save or MATLAB save, or export a GeoTIFF or ENVI file)")
  return path


def _raster_kind(path: pathlib.Path) -> str | None:
  """'envi', 'gdal' (GeoTIFF, or e.g. an ERDAS .img without an ENVI header) or None (.npy/.npz/.mat)."""
  from spectral_diffusion.data import envi  # pylint: disable=g-import-not-at-top

  suffix = path.suffix.lower()
  if suffix in ARRAY_EXTENSIONS:
    return None
  if suffix == ".hdr" or (suffix in ENVI_EXTENSIONS and envi.find_header(path) is not None):
    return "envi"
  return "gdal"


def _read_raster(path: pathlib.Path, kind: str, key: str | None):
  """(raw (H, W, B) in the stored dtype, metadata) of an ENVI or GDAL raster."""
  from spectral_diffusion.data import envi, geo  # pylint: disable=g-import-not-at-top

  if key is not None:
    raise UserInputError(f"{path}: a raster file holds one cube, so --input_key={key} does not apply; drop it")
  try:
    return envi.read_envi(path) if kind == "envi" else geo.read_raster(path)
  except UserInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserInputError(
        f"{path}: could not read the file ({_one_line(e)}); check it is a complete, valid "
        f"{'ENVI' if kind == 'envi' else 'GeoTIFF'} file and re-export it") from e


def _units_factor(centres, units, where) -> float | None:
  """nm per unit of a wavelength list; None when the values are not wavelengths ('Index', GHz...)."""
  text = " ".join(str(units or "").lower().split())
  if text in _UNITS_TO_NM:
    return _UNITS_TO_NM[text]
  if text in ("", "unknown"):
    return 1000.0 if np.nanmax(centres) < 100.0 else 1.0  # micrometres, as ENVI files often store
  if text != "index":
    warnings.warn(f"{where}: ignoring the band wavelengths: units '{units}' are not a length")
  return None


def _raster_scene(path: pathlib.Path, raw: np.ndarray, meta: dict, name: str) -> HyperspectralScene:
  cube = raw.astype(np.float32, copy=False)  # raw is our own copy: no second float32 cube for float32 files
  nodata = meta["nodata"]
  per_band = meta.get("nodata_per_band") or (nodata,) * cube.shape[2]
  for i, value in enumerate(per_band):  # band by band: no (H, W, B) boolean mask
    if value is not None and not np.isnan(value):
      cube[..., i][raw[..., i] == value] = np.nan
  centres, fwhm = meta["wavelengths"], meta["fwhm"]
  if centres is not None:
    factor = _units_factor(centres, meta["units"], path)
    if factor is None:
      centres = fwhm = None
    else:
      centres = centres * factor
      fwhm = None if fwhm is None else fwhm * factor
      if not np.all(np.isfinite(centres)) or np.any(centres <= 0):
        raise UserInputError(f"{path}: the band wavelengths include non-positive or NaN values; fix the "
                             "file's metadata or pass the centres with --wavelengths")
  return HyperspectralScene(cube=cube, wavelengths_nm=centres, name=name, crs=meta["crs"],
                            transform=meta["transform"], nodata=nodata, fwhm_nm=fwhm,
                            band_names=meta["band_names"])


# Variables that hold something other than the image: masks, labels, targets, band centres.
_NOT_IMAGE_KEY = re.compile(r"mask|^gt|_gt|label|truth|class|valid|nodata|flag|target|tgt")


def _pick_key(path: pathlib.Path, entries, key: str | None) -> str:
  """The requested key, or the one array that is unambiguously the image: the only numeric array with
  2 or more dimensions once those named like masks, labels or wavelengths are set aside, or else the
  only 3-D one. Anything else is refused with the candidates listed (never the largest silently)."""
  if key is not None:
    if key not in entries:
      raise UserInputError(
          f"{path}: no variable '{key}'; available: {', '.join(sorted(entries)) or 'none'}")
    if not entries[key][1]:
      raise UserInputError(f"{path}: variable '{key}' is not a numeric array; pass the name of the image "
                           f"with --input_key=NAME")
    return key
  candidates = {k: shape for k, (shape, numeric) in entries.items() if numeric and len(shape) >= 2}
  if not candidates:
    raise UserInputError(
        f"{path}: no numeric array with 2 or more dimensions; available: "
        f"{', '.join(sorted(entries)) or 'none'}; save the cube as a numeric (H, W, B) array")
  named = {k: s for k, s in candidates.items()
           if not (_NOT_IMAGE_KEY.search(k.lower()) or _WAVELENGTH_KEY.search(k.lower()))}
  for pool in (named, {k: s for k, s in named.items() if len(s) == 3},
               {k: s for k, s in candidates.items() if len(s) == 3}):
    if len(pool) == 1:
      return next(iter(pool))
  if len(candidates) == 1:
    return next(iter(candidates))
  listing = ", ".join(f"{k} {tuple(candidates[k])}" for k in sorted(candidates))
  raise UserInputError(f"{path} holds several arrays that could be the image ({listing}); choose one with "
                       f"--input_key=NAME")


def _read(path: pathlib.Path, key: str | None) -> tuple[np.ndarray, _Container | None]:
  """Reads the array and, for .mat/.npz, keeps the container for the wavelengths lookup."""
  suffix = path.suffix.lower()
  _check_signature(path, suffix)
  try:
    if suffix == ".npy":
      if key is not None:
        raise UserInputError(f"{path}: a .npy file holds one array, so --input_key={key} does not apply; "
                             f"drop it")
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


# The first bytes numpy writes: a file without them gets a message about what it is instead of
# numpy's guess ('pickled data'). MATLAB files are left to scipy/h5py (v4 files have no signature).
_SIGNATURES = {".npy": (b"\x93NUMPY",), ".npz": (b"PK\x03\x04", b"PK\x05\x06")}


def _check_signature(path: pathlib.Path, suffix: str) -> None:
  """Refuses an empty file, a text file, or a .npy/.npz file numpy did not write."""
  with open(path, "rb") as f:
    head = f.read(512)
  if not head:
    raise UserInputError(f"{path} is empty (0 bytes); save the image again")
  text = all(32 <= c < 127 or c in b"\t\r\n" for c in head) and not head.startswith(b"MATLAB")
  expected = _SIGNATURES.get(suffix)
  if not text and (expected is None or head.startswith(expected)):
    return
  what = "a text file" if text else "not a file numpy wrote"
  raise UserInputError(f"{path} is {what}, not a {suffix} file (it starts {head[:16]!r}); save the image "
                       f"with numpy.save or MATLAB save, or give the right file")


def load_array(path, key: str | None = None) -> np.ndarray:
  """Reads one numeric array from .npy, .npz, .mat (v5 or v7.3), ENVI or GeoTIFF in its stored dtype
  (rasters as (H, W, B), nodata values as stored)."""
  path = _check_path(path)
  kind = _raster_kind(path)
  if kind is not None:
    return _read_raster(path, kind, key)[0]
  arr, _ = _read(path, key)
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
  return wl * _units_factor(wl, None, path)  # no units stored: micrometres when all are below 100


def load_scene(path, key: str | None = None, wavelengths_key: str | None = None,
               name: str | None = None) -> HyperspectralScene:
  """Loads a (H, W, B) float32 cube and its band centres in nm (from a .mat/.npz variable, the ENVI
  header or GeoTIFF metadata). ENVI and GeoTIFF also give FWHM, band names, nodata (as NaN in the
  cube) and georeferencing; values stay as stored (scale factors are not applied)."""
  path = _check_path(path)
  kind = _raster_kind(path)
  if kind is not None:
    if wavelengths_key is not None:
      raise UserInputError(f"{path}: wavelengths_key applies to .mat/.npz files; a raster's band "
                           "centres come from its metadata (or pass them with --wavelengths)")
    raw, meta = _read_raster(path, kind, key)
    if kind == "envi" and path.suffix.lower() == ".hdr":
      path = path.with_suffix("")  # name the scene after the image, not 'X.hdr' -> 'X'
    return _raster_scene(path, raw, meta, name or path.stem)
  arr, container = _read(path, key)
  values.check_not_mask(arr.dtype, str(path))
  if arr.ndim == 3 and 0 in arr.shape:
    raise UserInputError(f"{path}: the image is empty (shape {arr.shape}); save an image at least one "
                         f"pixel high and wide with one band or more")
  if arr.ndim != 3:
    hint = (" (one band, or pixels and bands flattened); reshape it to (H, W, B) and save it as .npy"
            if arr.ndim == 2 else "; save the cube as a (H, W, B) array")
    raise UserInputError(f"{path}: expected a 3-D (H, W, B) cube, got shape {arr.shape}{hint}")
  wl = _wavelengths(path, container, arr.shape[2], wavelengths_key)
  return HyperspectralScene(cube=arr.astype(np.float32), wavelengths_nm=wl, name=name or path.stem)


def is_raster(path) -> bool:
  """True for ENVI and GeoTIFF files: formats that carry band wavelengths and georeferencing."""
  return pathlib.Path(path).suffix.lower() in GEOTIFF_EXTENSIONS + ENVI_EXTENSIONS


def with_wavelengths(scene: HyperspectralScene, wavelengths_nm, source: str) -> HyperspectralScene:
  """The scene with its band centres replaced (e.g. by --wavelengths), checked against its bands."""
  if wavelengths_nm is None:
    return scene
  wl = np.asarray(wavelengths_nm, np.float64).reshape(-1)
  bands = scene.cube.shape[-1]
  if wl.shape[0] != bands:
    raise UserInputError(f"{source} has {wl.shape[0]} values for the {bands} bands of {scene.name}; "
                         "give one centre (nm) per band")
  return dataclasses.replace(scene, wavelengths_nm=wl)


def nodata_pixels(cube, bands: Sequence[int] | None = None) -> np.ndarray:
  """(H, W) bool: pixels that are NaN in every band (or every one of `bands`): nodata, as the readers
  mark it."""
  cube = np.asarray(cube)
  out = np.ones(cube.shape[:2], bool)
  if not np.issubdtype(cube.dtype, np.inexact):
    return ~out
  for i in range(cube.shape[2]) if bands is None else bands:  # band by band: no (H, W, B) mask
    out &= np.isnan(cube[..., i])
  return out


def fill_nodata(cube: np.ndarray, pixels: np.ndarray, what: str,
                bands: Sequence[int] | None = None) -> np.ndarray:
  """Sets `pixels` (H, W) of a float (H, W, B) array IN PLACE to each band's mean over the other
  pixels, so a network sees finite, typical values there (their outputs become nodata); returns it."""
  if pixels.all():
    raise UserInputError(f"{what}: every pixel is nodata (NaN or the nodata value); nothing to process")
  if pixels.any():
    for i in range(cube.shape[2]) if bands is None else bands:
      valid = cube[..., i][~pixels]
      valid = valid[np.isfinite(valid)]
      cube[..., i][pixels] = valid.mean() if valid.size else 0.0
  return cube


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
