"""A library of real sensor spectral response functions (SRFs) on a hyperspectral grid.

Measured SRF curves come from the ``pyrsr`` package (ESA, NASA/USGS and
BlackBridge tables; pyrsr names no source for its SPOT curves). Sensors that
publish only band centres and widths are modelled as Gaussians
(``gaussian_sensor``). Panchromatic bands are left out (a broad pan band is
not a narrow band at its centre), and so are thermal bands (they lie outside
any reflective grid).

A sensor on a grid (``sensor_on_grid``) turns a cube (..., B) into its band
values (..., K) with ``simulate`` and puts them back on the grid as a sparse
observation with ``place_on_grid`` (data.masking turns both into one matrix per
sensor for jitted training steps).
"""

import contextlib
import dataclasses
import functools
import io
import warnings
from typing import Sequence

import numpy as np
import scipy.interpolate

from spectral_diffusion.data import nearest_bands
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.physics.indices import check_wavelengths

# A band is used only if this share of its response area is covered by the grid (see _covered).
MIN_COVERED = 0.95

# name -> (pyrsr satellite, pyrsr instrument, bands). Pan and thermal bands are left out, and so is
# ASTER 3B (the backward-looking twin of 3N). Each SPOT carries two instruments of the same design
# with slightly different curves; the first one stands for the satellite.
_PYRSR_SENSORS = {
    "sentinel2a_msi": ("Sentinel-2A", "MSI",
                       ("1", "2", "3", "4", "5", "6", "7", "8", "8A", "9", "10", "11", "12")),
    "sentinel2b_msi": ("Sentinel-2B", "MSI",
                       ("1", "2", "3", "4", "5", "6", "7", "8", "8A", "9", "10", "11", "12")),
    "landsat4_tm": ("Landsat-4", "TM", ("1", "2", "3", "4", "5", "7")),
    "landsat5_tm": ("Landsat-5", "TM", ("1", "2", "3", "4", "5", "7")),
    "landsat7_etm": ("Landsat-7", "ETM+", ("1", "2", "3", "4", "5", "7")),
    "landsat8_oli": ("Landsat-8", "OLI_TIRS", ("1", "2", "3", "4", "5", "6", "7", "9")),
    "landsat9_oli2": ("Landsat-9", "OLI_TIRS", ("1", "2", "3", "4", "5", "6", "7", "9")),
    "terra_modis": ("Terra", "MODIS", tuple(str(i) for i in range(1, 17))),
    "aqua_modis": ("Aqua", "MODIS", tuple(str(i) for i in range(1, 17))),
    "terra_aster": ("Terra", "ASTER", ("1", "2", "3N", "4", "5", "6", "7", "8", "9")),
    "rapideye_msi": ("RapidEye-5", "MSI", ("1", "2", "3", "4", "5")),
    "spot1_hrv1": ("SPOT-1", "HRV1", ("1", "2", "3")),
    "spot2_hrv1": ("SPOT-2", "HRV1", ("1", "2", "3")),
    "spot3_hrv1": ("SPOT-3", "HRV1", ("1", "2", "3")),
    "spot4_hrvir1": ("SPOT-4", "HRVIR1", ("1", "2", "3", "4")),
    "spot5_hrg1": ("SPOT-5", "HRG1", ("1", "2", "3", "4")),
}

# name -> (band names, centres nm, FWHM nm), filled by gaussian_sensor.
_GAUSSIAN_SENSORS: dict[str, tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...]]] = {}


@dataclasses.dataclass(frozen=True, eq=False)
class _Curves:
  """A sensor's SRFs on one wavelength axis: response (K, N), peak 1, zero off-band."""
  band_names: tuple[str, ...]
  wavelengths_nm: np.ndarray
  response: np.ndarray

  def __post_init__(self):
    # Cached and shared between callers, so read-only.
    self.wavelengths_nm.setflags(write=False)
    self.response.setflags(write=False)


def sensor_names() -> list[str]:
  """Names of all sensors in the library (pyrsr curves, then Gaussian ones)."""
  return list(_PYRSR_SENSORS) + list(_GAUSSIAN_SENSORS)


def _check_name(name) -> str:
  if name not in _PYRSR_SENSORS and name not in _GAUSSIAN_SENSORS:
    raise UserInputError(f"unknown sensor '{name}'; valid names: {', '.join(sensor_names())}")
  return name


@functools.lru_cache(maxsize=None)
def _read_pyrsr(name: str) -> _Curves:
  """Reads one sensor's curves from pyrsr (1 nm steps), silently."""
  satellite, instrument, bands = _PYRSR_SENSORS[name]
  try:
    import pyrsr  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserInputError("pyrsr is not installed; run `pip install pyrsr` for the sensor library") from e
  # pyrsr prints in verbose mode and warns on missing files; keep the caller's output clean.
  with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
    warnings.simplefilter("ignore")
    rsr = pyrsr.RSR(satellite, instrument, LayerBandsAssignment=list(bands))
    wl = np.asarray(rsr.rsrs_wvl, dtype=np.float64)
    response = np.stack([np.asarray(rsr.rsrs_norm01[b], dtype=np.float64) for b in rsr.bands])
  return _Curves(tuple(f"B{b}" for b in bands), wl, np.clip(response, 0.0, None))


@functools.lru_cache(maxsize=None)
def _gaussian_curves(band_names, centres, fwhm) -> _Curves:
  c, f = np.asarray(centres), np.asarray(fwhm)
  # +-2 FWHM holds all but 1e-5 of each Gaussian's peak height.
  wl = np.arange(np.floor((c - 2 * f).min()), np.ceil((c + 2 * f).max()) + 1.0)
  sigma = f / (2.0 * np.sqrt(2.0 * np.log(2.0)))
  response = np.exp(-0.5 * ((wl[None, :] - c[:, None]) / sigma[:, None]) ** 2)
  return _Curves(band_names, wl, response)


def _curves(name: str) -> _Curves:
  if name in _PYRSR_SENSORS:
    return _read_pyrsr(name)
  return _gaussian_curves(*_GAUSSIAN_SENSORS[name])


def gaussian_sensor(name: str, band_names: Sequence[str], centres_nm: Sequence[float],
                    fwhm_nm: Sequence[float]) -> str:
  """Registers a sensor with Gaussian SRFs from published band centres and FWHM.

  For sensors that publish only band edges, pass centre = middle and FWHM =
  width: a Gaussian then stands in for a flatter-topped real response.
  Registering the same definition again is a no-op.

  Args:
    name: the new sensor's name (lowercase, not a library name).
    band_names: one name per band.
    centres_nm: band centres in nm.
    fwhm_nm: full widths at half maximum in nm.

  Returns:
    The name, ready for sensor_on_grid.
  """
  if not isinstance(name, str) or not name or name != name.lower():
    raise UserInputError(f"sensor name {name!r} must be a non-empty lowercase string; rename it")
  bands = tuple(str(b) for b in band_names)
  try:
    c = tuple(float(v) for v in centres_nm)
    f = tuple(float(v) for v in fwhm_nm)
  except (TypeError, ValueError) as e:
    raise UserInputError(f"sensor '{name}': centres and FWHM must be numbers in nm; fix them") from e
  if not bands or not len(bands) == len(c) == len(f):
    raise UserInputError(
        f"sensor '{name}': {len(bands)} band names, {len(c)} centres and {len(f)} FWHM; "
        "give one of each per band (at least one band)")
  if len(set(bands)) != len(bands):
    raise UserInputError(f"sensor '{name}': band names repeat; give each band its own name")
  if not all(np.isfinite(v) and v > 0 for v in c + f):
    raise UserInputError(f"sensor '{name}': centres and FWHM must be positive finite nm; fix them")
  definition = (bands, c, f)
  if name in _PYRSR_SENSORS or _GAUSSIAN_SENSORS.get(name, definition) != definition:
    raise UserInputError(f"sensor '{name}' already exists with other bands; choose another name")
  _GAUSSIAN_SENSORS[name] = definition
  return name


def _edges(bands: dict[str, tuple[float, float]]):
  """(names, centres, widths) from {band: (lower edge, upper edge)} in nm."""
  return (tuple(bands), tuple((lo + hi) / 2 for lo, hi in bands.values()),
          tuple(hi - lo for lo, hi in bands.values()))


# EO-1 Advanced Land Imager multispectral bands: nominal band edges of the commonly cited USGS EO-1
# ALI specification (no ALI SRF curve ships in a package; Py6S only points to 6S's internal table).
gaussian_sensor("eo1_ali", *_edges({
    "MS-1p": (433, 453), "MS-1": (450, 515), "MS-2": (525, 605), "MS-3": (630, 690),
    "MS-4": (775, 805), "MS-4p": (845, 890), "MS-5p": (1200, 1300), "MS-5": (1550, 1750),
    "MS-7": (2080, 2350)}))
# WorldView-2 multispectral band edges, DigitalGlobe WorldView-2 data sheet (the spyndex 0.12.0
# bands.json lists the same values for the bands it carries).
gaussian_sensor("worldview2", *_edges({
    "Coastal": (400, 450), "Blue": (450, 510), "Green": (510, 580), "Yellow": (585, 625),
    "Red": (630, 690), "RedEdge": (705, 745), "NIR1": (770, 895), "NIR2": (860, 1040)}))
# PlanetScope SuperDove (PSB.SD) band edges, Planet "PlanetScope Product Specifications" (same
# values in spyndex 0.12.0 bands.json).
gaussian_sensor("planetscope_superdove", *_edges({
    "CoastalBlue": (431, 452), "Blue": (465, 515), "GreenI": (513, 549), "Green": (547, 583),
    "Yellow": (600, 620), "Red": (650, 680), "RedEdge": (697, 713), "NIR": (845, 885)}))


@dataclasses.dataclass(frozen=True, eq=False)
class SensorOnGrid:
  """A sensor's usable bands resampled onto a hyperspectral grid of B bands.

  Attributes:
    name: library name of the sensor.
    band_names: the K usable bands.
    centres_nm: (K,) response-weighted band centres.
    response: (K, B) float32, each row the SRF sampled at the grid's band
      centres by cubic spline, clipped at 0 and summing to 1.
    grid_index: (K,) the grid band nearest each band centre.
    skipped: bands dropped because less than MIN_COVERED (95 %) of their
      response area lies within one band spacing of a grid band.
  """
  name: str
  band_names: tuple[str, ...]
  centres_nm: np.ndarray
  response: np.ndarray
  grid_index: np.ndarray
  skipped: tuple[str, ...]

  @property
  def num_bands(self) -> int:
    return len(self.band_names)


def _covered(wl_axis: np.ndarray, grid_nm: np.ndarray) -> np.ndarray:
  """True where a grid band centre lies within one median band spacing (10 nm for one band).

  So the grid's span, widened by one spacing at each end, less the inside of
  gaps wider than two spacings (such as removed water-vapour bands).
  """
  grid = np.unique(grid_nm)
  spacing = float(np.median(np.diff(grid))) if grid.size > 1 else 10.0
  return np.abs(wl_axis[:, None] - grid[None, :]).min(axis=1) <= spacing


def _grid(wavelengths_nm) -> np.ndarray:
  """Checked band centres; their own count stands in for the cube's."""
  return check_wavelengths(wavelengths_nm, 0 if wavelengths_nm is None else np.size(wavelengths_nm))


def _resample(name: str, wl: np.ndarray) -> SensorOnGrid:
  """The sensor on the checked grid wl; may hold zero bands."""
  curves = _curves(name)
  axis = curves.wavelengths_nm
  covered = _covered(axis, wl)
  names, centres, rows, index, skipped = [], [], [], [], []
  for band, r in zip(curves.band_names, curves.response):
    area = np.trapezoid(r, axis)
    if area <= 0 or np.trapezoid(r * covered, axis) < MIN_COVERED * area:
      skipped.append(band)
      continue
    centre = float(np.trapezoid(axis * r, axis) / area)
    nearest = nearest_bands(wl, [centre], max_gap_nm=np.inf)[0]
    # Spline over the band's support plus one zero on each side; zero beyond it.
    on = np.flatnonzero(r > 0)
    lo, hi = max(on[0] - 1, 0), min(on[-1] + 2, axis.size)
    spline = scipy.interpolate.CubicSpline(axis[lo:hi], r[lo:hi])
    inside = (wl >= axis[lo]) & (wl <= axis[hi - 1])
    row = np.where(inside, np.clip(spline(wl), 0.0, None), 0.0)
    if row.sum() <= 0:
      row[nearest] = 1.0  # a band narrower than the grid spacing, between two centres
    names.append(band)
    centres.append(centre)
    rows.append(row / row.sum())
    index.append(nearest)
  num_bands = wl.shape[0]
  return SensorOnGrid(
      name=name,
      band_names=tuple(names),
      centres_nm=np.asarray(centres, dtype=np.float64),
      response=np.asarray(rows, dtype=np.float32).reshape(len(rows), num_bands),
      grid_index=np.asarray(index, dtype=np.int32),
      skipped=tuple(skipped))


def sensor_on_grid(name: str, wavelengths_nm) -> SensorOnGrid:
  """The named sensor's SRFs resampled onto a grid of band centres (nm)."""
  _check_name(name)
  wl = _grid(wavelengths_nm)
  sensor = _resample(name, wl)
  if sensor.num_bands == 0:
    curves = _curves(name)
    on = curves.wavelengths_nm[np.any(curves.response > 0, axis=0)]
    raise UserInputError(
        f"sensor '{name}' has no band inside the grid (its bands span {on.min():.0f}-{on.max():.0f} nm, "
        f"the grid {wl.min():.0f}-{wl.max():.0f} nm); pick a sensor whose bands lie in the data's range")
  return sensor


class SensorLibrary(list):
  """A list of SensorOnGrid; ``left_out`` maps sensors not in it to the reason."""

  def __init__(self, sensors=(), left_out=None):
    super().__init__(sensors)
    self.left_out = dict(left_out or {})


def sensor_library(wavelengths_nm, names: Sequence[str] | None = None,
                   min_bands: int = 2) -> SensorLibrary:
  """Every (or each named) sensor on the grid, if it keeps at least min_bands bands.

  Args:
    wavelengths_nm: the grid's band centres in nm.
    names: sensor names; None for all of sensor_names().
    min_bands: sensors with fewer usable bands are left out.

  Returns:
    A SensorLibrary (a list of SensorOnGrid) whose ``left_out`` records the
    sensors dropped and why; see describe_library. Raises UserInputError if
    no sensor qualifies.
  """
  wl = _grid(wavelengths_nm)
  names = sensor_names() if names is None else [_check_name(n) for n in names]
  library = SensorLibrary()
  for name in names:
    sensor = _resample(name, wl)
    if sensor.num_bands < min_bands:
      library.left_out[name] = (
          f"{sensor.num_bands} usable band(s), fewer than {min_bands} "
          f"(skipped: {', '.join(sensor.skipped) or 'none'})")
    else:
      library.append(sensor)
  if not library:
    raise UserInputError(
        f"no sensor keeps {min_bands} or more bands on the grid ({wl.min():.0f}-{wl.max():.0f} nm); "
        "lower min_bands or use data with a wider range")
  return library


def describe_library(library: Sequence[SensorOnGrid]) -> list[str]:
  """Readable lines: each sensor's bands used and skipped, then sensors left out."""
  lines = []
  for s in library:
    skipped = f"; skipped {len(s.skipped)}: {', '.join(s.skipped)}" if s.skipped else ""
    lines.append(f"{s.name}: {s.num_bands} bands ({', '.join(s.band_names)}){skipped}")
  for name, why in getattr(library, "left_out", {}).items():
    lines.append(f"{name}: left out, {why}")
  return lines


def _check_last_axis(array, size: int, what: str):
  """The array (lists become numpy), checked to have size values on its last axis."""
  if not hasattr(array, "shape"):
    array = np.asarray(array, dtype=np.float32)
  if array.ndim == 0 or array.shape[-1] != size:
    shape = array.shape[-1] if array.ndim else "no"
    raise UserInputError(
        f"{what} has {shape} values on its last axis, expected {size}; "
        "resample the sensor onto this data's grid")
  return array


def simulate(cube, sensor: SensorOnGrid):
  """The sensor's band values (..., K) from a cube (..., B): cube @ response.T."""
  cube = _check_last_axis(cube, sensor.response.shape[1], "the cube")
  return cube @ sensor.response.T


def placement_matrix(grid_index: np.ndarray, num_bands: int) -> np.ndarray:
  """(K, B): row k is 1 / (number of sensor bands on that grid band) at grid_index[k]."""
  place = np.zeros((grid_index.size, num_bands), np.float32)
  place[np.arange(grid_index.size), grid_index] = 1.0
  counts = place.sum(axis=0)
  return place / np.maximum(counts, 1.0)


def place_on_grid(values, sensor: SensorOnGrid, num_bands: int):
  """Sensor values (..., K) on the grid: x_obs (..., B) and mask (B,) float32.

  Each value goes to its band's grid_index and the mask is 1 there. Where two
  sensor bands share a grid band their values are averaged.
  """
  values = _check_last_axis(values, sensor.num_bands, f"the {sensor.name} values")
  if sensor.grid_index.size and sensor.grid_index.max() >= num_bands:
    raise UserInputError(
        f"sensor '{sensor.name}' was resampled onto a longer grid than {num_bands} bands; "
        "resample it onto this data's grid")
  place = placement_matrix(sensor.grid_index, num_bands)
  mask = (place.sum(axis=0) > 0).astype(np.float32)
  return values @ place, mask
