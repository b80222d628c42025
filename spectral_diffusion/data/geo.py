"""GeoTIFF (and any raster GDAL reads) through rasterio: band wavelengths from metadata, and writers
that keep the input's georeferencing and write per-band wavelengths that GDAL and our reader read back.
"""
import os
import re
import warnings

import numpy as np

from spectral_diffusion.data.outputs import atomic_write
from spectral_diffusion.errors import UserInputError

GEOTIFF_EXTENSIONS = (".tif", ".tiff")
OUTPUT_EXTENSIONS = GEOTIFF_EXTENSIONS + (".npy",)
# '346.2995778 Nanometers' (GDAL's ENVI band names), 'Band 12 (550.0 nm)', '0.55 um'.
_IN_DESCRIPTION = re.compile(
    r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*(nm|nanometers?|nanometres?|um|µm|micrometers?|"
    r"micrometres?|microns?)\b", re.IGNORECASE)


def _rasterio():
  import rasterio  # pylint: disable=g-import-not-at-top
  return rasterio


def _floats(values):
  try:
    return np.asarray([float(v) for v in values], np.float64)
  except (TypeError, ValueError):
    return None


def _list_tag(value, bands):
  """An ENVI-style '{ a, b, c }' dataset tag with one number per band, or None."""
  if value is None:
    return None
  values = _floats(v for v in value.strip().strip("{}").split(",") if v.strip())
  return values if values is not None and values.shape[0] == bands else None


def band_metadata(ds):
  """(centres, fwhm, units) from a rasterio dataset's metadata; centres None when it has none.

  Looked for, in order: per-band 'wavelength' tags (as GDAL writes when it converts ENVI to GTiff)
  with 'wavelength_units'; dataset 'wavelength = {...}' (ENVI style, default or ENVI domain); per-band
  IMAGERY CENTRAL_WAVELENGTH_UM (GDAL >= 3.10); numbers with units in the band descriptions.
  """
  n = ds.count
  tags = ds.tags()
  envi = ds.tags(ns="ENVI") if "ENVI" in (ds.tag_namespaces() or []) else {}
  per_band = [ds.tags(i) for i in range(1, n + 1)]
  units = tags.get("wavelength_units") or envi.get("wavelength_units")
  band_units = {b.get("wavelength_units") for b in per_band} - {None}
  if len(band_units) == 1:
    units = band_units.pop()
  centres = _floats(b.get("wavelength") for b in per_band)
  fwhm = _floats(b.get("fwhm") for b in per_band)
  if centres is None:
    for source in (tags, envi):
      centres = _list_tag(source.get("wavelength"), n)
      if centres is not None:
        fwhm = _list_tag(source.get("fwhm"), n)
        break
  if centres is None:
    imagery = [ds.tags(i, ns="IMAGERY") if "IMAGERY" in (ds.tag_namespaces(i) or []) else {}
               for i in range(1, n + 1)]
    centres = _floats(b.get("CENTRAL_WAVELENGTH_UM") for b in imagery)
    if centres is not None:
      fwhm, units = _floats(b.get("FWHM_UM") for b in imagery), "Micrometers"
  if centres is None:
    found = [_IN_DESCRIPTION.search(d or "") for d in ds.descriptions]
    if all(found) and found:
      centres = np.asarray([float(m.group(1)) for m in found])
      kinds = {m.group(2).lower()[0] for m in found}  # 'n' or 'u'/'µ'/'m'
      units = "Nanometers" if kinds == {"n"} else "Micrometers" if "n" not in kinds else None
      if units is None:
        centres = None
  return centres, fwhm, units


def read_raster(path):
  """Reads a GeoTIFF (or any raster GDAL opens): (raw (H, W, B) in the stored dtype, metadata dict)."""
  rasterio = _rasterio()
  from rasterio.errors import NotGeoreferencedWarning  # pylint: disable=g-import-not-at-top

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", NotGeoreferencedWarning)
      with rasterio.open(path) as ds:
        raw = np.moveaxis(ds.read(), 0, -1)
        centres, fwhm, units = band_metadata(ds)
        georeferenced = ds.crs is not None or not ds.transform.is_identity
        nodatas = {v for v in ds.nodatavals if v is not None}
        names = tuple(ds.descriptions)
        meta = {"wavelengths": centres, "fwhm": fwhm, "units": units,
                "band_names": names if all(names) else None,
                "nodata": ds.nodata if len(nodatas) <= 1 else None,
                "nodata_per_band": ds.nodatavals if len(nodatas) > 1 else None,
                "crs": ds.crs, "transform": ds.transform if georeferenced else None}
  except rasterio.errors.RasterioError as e:
    text = " ".join(str(e).split())
    raise UserInputError(f"{path}: could not read the raster ({text}); check it is a complete, valid "
                         "GeoTIFF and re-export it") from None
  return raw, meta


def _nan_to(cube, nodata):
  if nodata is None or np.isnan(nodata):
    return cube
  return np.where(np.isnan(cube), np.float32(nodata), cube)


def write_geotiff(path, cube, like=None, wavelengths_nm=None, nodata=None, fwhm_nm=None, crs=None,
                  transform=None):
  """Writes (H, W, B) float32 as a GeoTIFF with `like`'s CRS and transform (a HyperspectralScene or
  anything with .crs/.transform), replacing any file at `path` only once the new one is complete.

  NaN pixels are written as `nodata` (default: like.nodata, else NaN when the cube has NaN) and the
  nodata tag is set. Each band gets tags wavelength/wavelength_units/fwhm, the IMAGERY domain's
  CENTRAL_WAVELENGTH_UM/FWHM_UM (GDAL >= 3.10) and a description 'band i (X nm)'.
  """
  rasterio = _rasterio()
  cube = np.asarray(cube, np.float32)
  if cube.ndim != 3:
    raise UserInputError(f"write_geotiff: expected an (H, W, B) cube, got shape {cube.shape}")
  h, w, b = cube.shape
  crs = crs if crs is not None else getattr(like, "crs", None)
  transform = transform if transform is not None else getattr(like, "transform", None)
  like_cube = getattr(like, "cube", None)
  if transform is not None and like_cube is not None and like_cube.shape[:2] != (h, w):
    raise UserInputError(f"write_geotiff: the cube is {h}x{w} pixels but the georeferenced input is "
                         f"{like_cube.shape[0]}x{like_cube.shape[1]}; write the full scene")
  if nodata is None:
    nodata = getattr(like, "nodata", None)
  if nodata is None and np.isnan(cube).any():
    nodata = float("nan")
  for name, values in (("wavelengths_nm", wavelengths_nm), ("fwhm_nm", fwhm_nm)):
    if values is not None and len(values) != b:
      raise UserInputError(f"write_geotiff: {len(values)} {name} for {b} bands; give one per band")
  profile = {"driver": "GTiff", "height": h, "width": w, "count": b, "dtype": "float32",
             "crs": crs, "transform": transform, "nodata": nodata, "interleave": "band",
             "compress": "deflate", "predictor": 3, "BIGTIFF": "IF_SAFER"}
  if h >= 256 and w >= 256:
    profile.update(tiled=True, blockxsize=256, blockysize=256)
  from rasterio.errors import NotGeoreferencedWarning  # pylint: disable=g-import-not-at-top

  def write(tmp):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", NotGeoreferencedWarning)
      with rasterio.open(tmp, "w", **profile) as ds:
        for i in range(b):  # band by band: no second full-size copy of the cube
          ds.write(_nan_to(cube[..., i], nodata), i + 1)
        if wavelengths_nm is not None:
          ds.update_tags(wavelength_units="Nanometers")
          for i, nm in enumerate(np.asarray(wavelengths_nm, np.float64)):
            tags = {"wavelength": repr(float(nm)), "wavelength_units": "Nanometers"}
            imagery = {"CENTRAL_WAVELENGTH_UM": f"{float(nm) / 1000.0:.12g}"}
            if fwhm_nm is not None:
              tags["fwhm"] = repr(float(fwhm_nm[i]))
              imagery["FWHM_UM"] = f"{float(fwhm_nm[i]) / 1000.0:.12g}"
            ds.update_tags(i + 1, **tags)
            ds.update_tags(i + 1, ns="IMAGERY", **imagery)
            ds.set_band_description(i + 1, f"band {i + 1} ({float(nm):.6g} nm)")

  atomic_write(path, write)


def check_output_path(path):
  """Refuses an output name whose format we cannot write, before any work is done (outputs.check_output
  checks the location)."""
  ext = os.path.splitext(os.fspath(path))[1].lower()
  if ext not in OUTPUT_EXTENSIONS:
    raise UserInputError(f"--output={path}: unknown output type '{ext}'; end the name in .tif or .tiff "
                         "(GeoTIFF with the input's georeferencing) or .npy")
  return ext


def write_cube(path, cube, like=None, wavelengths_nm=None, nodata=None, fwhm_nm=None):
  """Writes a result by its extension: .tif/.tiff -> write_geotiff; .npy -> float32 with NaN nodata."""
  if check_output_path(path) == ".npy":
    def save(tmp):
      with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the name
        np.save(f, np.asarray(cube, np.float32))
    atomic_write(path, save)
  else:
    write_geotiff(path, cube, like=like, wavelengths_nm=wavelengths_nm, nodata=nodata, fwhm_nm=fwhm_nm)


def default_output(input_path, directory, like=None):
  """WORKDIR/<dir>/<input stem>.tif for georeferenced inputs (GeoTIFF or ENVI with map info), else .npy."""
  stem = os.path.splitext(os.path.basename(os.fspath(input_path)))[0]
  georeferenced = like is not None and (like.crs is not None or like.transform is not None)
  geotiff_in = os.path.splitext(os.fspath(input_path))[1].lower() in GEOTIFF_EXTENSIONS
  return os.path.join(directory, stem + (".tif" if georeferenced or geotiff_in else ".npy"))
