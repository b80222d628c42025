"""ENVI raster files (.hdr text header + raw binary): a small header parser and a numpy memmap reader.

Checked against GDAL's ENVI driver (tests/test_io.py): same pixel values, transform and CRS.
"""
import pathlib
import warnings

import numpy as np

from spectral_diffusion.errors import UserInputError

# ENVI 'data type' codes -> numpy (complex types 6 and 9 are not spectra).
_DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}
# Where the binary file lives beside its header: ENVI itself writes .img/.dat or no extension.
DATA_SUFFIXES = (".img", ".dat", ".raw", ".bsq", ".bil", ".bip", "")
REQUIRED_KEYS = ("samples", "lines", "bands", "data type")
# 'map info' datum names -> EPSG of the UTM zones (north) and of the geographic CRS.
_UTM_NORTH = {"wgs-84": 32600, "nad-83": 26900, "nad-27": 26700}
_GEOGRAPHIC = {"wgs-84": 4326, "nad-83": 4269, "nad-27": 4267}


def parse_header(text: str, where="the header") -> dict[str, str]:
  """`key = value` fields of an ENVI header (keys lower-case); {...} values may span lines."""
  lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
  if not lines or lines[0].strip() != "ENVI":
    raise UserInputError(f"{where} is not an ENVI header (its first line is not 'ENVI'); "
                         "pass the .hdr written with the image")
  fields, key, parts = {}, None, []
  for line in lines[1:]:
    if key is not None:  # inside a {...} value
      parts.append(line.strip())
      if "}" in line:
        fields[key] = " ".join(parts)
        key = None
      continue
    if "=" not in line or line.lstrip().startswith(";"):
      continue
    name, value = (s.strip() for s in line.split("=", 1))
    name = " ".join(name.lower().split())
    if value.startswith("{") and "}" not in value:
      key, parts = name, [value]
    else:
      fields[name] = value
  if key is not None:
    raise UserInputError(f"{where}: the value of '{key}' opens '{{' and never closes it; fix the header")
  return fields


def split_list(value: str) -> list[str]:
  """'{ a , b , c }' -> ['a', 'b', 'c']."""
  value = value.strip()
  if value.startswith("{"):
    value = value[1:].rsplit("}", 1)[0]
  return [s.strip() for s in value.split(",") if s.strip()]


def find_files(path) -> tuple[pathlib.Path, pathlib.Path]:
  """(header, data file) from either of the two; the header is X.hdr or X.img.hdr."""
  path = pathlib.Path(path)
  if path.suffix.lower() == ".hdr":
    header = path
    stem = path.with_suffix("")
    candidates = [stem] if stem.suffix else [stem.with_suffix(s) for s in DATA_SUFFIXES]
    candidates += [stem.with_suffix(s.upper()) for s in DATA_SUFFIXES if s]
    data = next((c for c in candidates if c.is_file()), None)
    if data is None:
      raise UserInputError(f"{path}: no data file beside the header (looked for "
                           f"{', '.join(c.name for c in candidates[:len(DATA_SUFFIXES)])}); "
                           "keep the image next to its .hdr")
    return header, data
  header = find_header(path)
  if header is None:
    raise UserInputError(f"{path}: no ENVI header ({path.with_suffix('.hdr').name} or {path.name}.hdr) "
                         "beside it; keep the .hdr next to the image")
  return header, path


def find_header(path) -> pathlib.Path | None:
  path = pathlib.Path(path)
  for header in (path.with_suffix(".hdr"), path.with_name(path.name + ".hdr")):
    if header.is_file() and header != path:
      return header
  return None


def _int(fields, key, where, default=None):
  if key not in fields:
    if default is None:
      raise UserInputError(f"{where}: the header has no '{key}'; add it")
    return default
  try:
    return int(float(fields[key]))
  except ValueError:
    raise UserInputError(f"{where}: '{key} = {fields[key]}' is not a number; fix the header") from None


def read_envi(path):
  """Reads an ENVI image: (raw (lines, samples, bands) array in the stored dtype, metadata dict).

  metadata: wavelengths/fwhm (as listed, with 'wavelength units'), band_names, nodata ('data ignore
  value'), crs/transform (from 'map info' and 'coordinate system string').
  """
  header, data_path = find_files(path)
  try:
    text = header.read_text(encoding="latin-1")
  except OSError as e:
    raise UserInputError(f"{header}: cannot read the header ({e.strerror}); check the file") from None
  fields = parse_header(text, str(header))
  missing = [k for k in REQUIRED_KEYS if k not in fields]
  if missing:
    raise UserInputError(f"{header}: the header has no {', '.join(repr(k) for k in missing)}; add "
                         f"{' and '.join(repr(k + ' = ...') for k in missing)} as ENVI writes them")
  samples, lines, bands = (_int(fields, k, header) for k in ("samples", "lines", "bands"))
  code = _int(fields, "data type", header)
  if min(samples, lines, bands) < 1:
    raise UserInputError(f"{header}: samples/lines/bands = {samples}/{lines}/{bands}; all must be >= 1")
  if code not in _DTYPES:
    raise UserInputError(f"{header}: 'data type = {code}' is not supported (use 1, 2, 3, 4, 5, 12, 13, "
                         "14 or 15: integers or real floats)")
  order = _int(fields, "byte order", header, default=0)
  dtype = np.dtype(("<" if order == 0 else ">") + _DTYPES[code])
  offset = _int(fields, "header offset", header, default=0)
  interleave = fields.get("interleave", "bsq").strip().lower()  # GDAL also defaults to bsq
  shapes = {"bsq": (bands, lines, samples), "bil": (lines, bands, samples), "bip": (lines, samples, bands)}
  if interleave not in shapes:
    raise UserInputError(f"{header}: 'interleave = {interleave}' is not bsq, bil or bip; fix the header")
  need = offset + lines * samples * bands * dtype.itemsize
  size = data_path.stat().st_size
  if size < need:
    raise UserInputError(
        f"{data_path}: truncated: the header gives {lines} lines x {samples} samples x {bands} bands of "
        f"{dtype.name} ({need} bytes with offset {offset}), the file has {size}; copy the whole file again")
  raw = np.memmap(data_path, dtype=dtype, mode="r", offset=offset, shape=shapes[interleave])
  # To (lines, samples, bands) in native byte order; np.array copies, so the memmap (and file) closes.
  axes = {"bsq": (1, 2, 0), "bil": (0, 2, 1), "bip": (0, 1, 2)}[interleave]
  cube = np.array(raw.transpose(axes), dtype=dtype.newbyteorder("="))
  del raw
  meta = {"wavelengths": None, "fwhm": None, "units": fields.get("wavelength units"),
          "band_names": None, "nodata": None, "crs": None, "transform": None}
  for key, name in (("wavelength", "wavelengths"), ("fwhm", "fwhm")):
    if key in fields:
      meta[name] = _numbers(fields[key], key, bands, header)
  if "band names" in fields:
    names = split_list(fields["band names"])
    meta["band_names"] = tuple(names) if len(names) == bands else None
  if "data ignore value" in fields:
    try:
      meta["nodata"] = float(fields["data ignore value"])
    except ValueError:
      warnings.warn(f"{header}: ignoring 'data ignore value = {fields['data ignore value']}' (not a number)")
  if "map info" in fields:
    meta["crs"], meta["transform"] = _georeference(fields, header)
  return cube, meta


def _numbers(value, key, bands, where):
  try:
    values = np.asarray([float(s) for s in split_list(value)], np.float64)
  except ValueError:
    raise UserInputError(f"{where}: '{key}' holds values that are not numbers; fix the header") from None
  if values.shape[0] != bands:
    warnings.warn(f"{where}: ignoring '{key}': {values.shape[0]} values for {bands} bands")
    return None
  return values


def _georeference(fields, where):
  """(CRS or None, Affine) from 'map info' = {projection, ref x, ref y, easting, northing, dx, dy, ...}.

  Reference pixels are 1-based with (1, 1) the top-left corner of the first pixel, and 'rotation='
  turns the grid counter-clockwise in degrees, as GDAL's ENVI driver reads them.
  """
  from affine import Affine  # pylint: disable=g-import-not-at-top

  info = split_list(fields["map info"])
  try:
    ref_x, ref_y, east, north, dx, dy = (float(v) for v in info[1:7])
  except (ValueError, IndexError):
    warnings.warn(f"{where}: ignoring 'map info' (fewer than 7 numbers)")
    return None, None
  named = dict(v.split("=", 1) for v in info if "=" in v)
  rotation = -np.deg2rad(float(named.get("rotation", 0.0)))
  a, b = np.cos(rotation) * dx, -np.sin(rotation) * dx
  d, e = -np.sin(rotation) * dy, -np.cos(rotation) * dy
  # The reference pixel (ref_x, ref_y) sits at (east, north).
  c = east - a * (ref_x - 1) - b * (ref_y - 1)
  f = north - d * (ref_x - 1) - e * (ref_y - 1)
  return _crs(info, fields, where), Affine(a, b, c, d, e, f)


def _crs(info, fields, where):
  from rasterio.crs import CRS  # pylint: disable=g-import-not-at-top

  if "coordinate system string" in fields:
    wkt = fields["coordinate system string"].strip().removeprefix("{").removesuffix("}").strip()
    try:
      return CRS.from_wkt(wkt)
    except Exception:  # pylint: disable=broad-except
      warnings.warn(f"{where}: 'coordinate system string' is not WKT GDAL reads; trying 'map info'")
  projection = info[0].strip().lower()
  datum = next((v.lower() for v in info[7:] if "=" not in v and v.lower() in _GEOGRAPHIC), None)
  if projection == "utm" and len(info) >= 9 and datum:
    zone, south = int(float(info[7])), info[8].strip().lower() == "south"
    if datum == "wgs-84":
      return CRS.from_epsg((32700 if south else 32600) + zone)
    if not south:
      return CRS.from_epsg(_UTM_NORTH[datum] + zone)
  if projection.startswith("geographic lat") and datum:
    return CRS.from_epsg(_GEOGRAPHIC[datum])
  warnings.warn(f"{where}: map projection '{info[0]}' is not understood here; the output keeps the "
                "pixel grid (transform) without a CRS; add a 'coordinate system string' (WKT)")
  return None
