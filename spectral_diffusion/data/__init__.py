"""Data: readers (.npy, .npz, .mat v5/v7.3, ENVI, GeoTIFF), writers (outputs: checked, staged), input value
checks (values), normalisers and patching."""

from spectral_diffusion.data._indian_pines_wavelengths import INDIAN_PINES_WAVELENGTHS_NM
from spectral_diffusion.data.geo import write_cube
from spectral_diffusion.data.geo import write_geotiff
from spectral_diffusion.data.normalise import DFC2018
from spectral_diffusion.data.normalise import Affine
from spectral_diffusion.data.normalise import fit_minmax
from spectral_diffusion.data.normalise import MinMax
from spectral_diffusion.data.normalise import Normaliser
from spectral_diffusion.data.normalise import normaliser_from_dict
from spectral_diffusion.data.patches import predict_tiled
from spectral_diffusion.data.patches import random_crops
from spectral_diffusion.data.patches import spatial_split
from spectral_diffusion.data.patches import tile_positions
from spectral_diffusion.data.readers import check_finite
from spectral_diffusion.data.readers import fill_nodata
from spectral_diffusion.data.readers import HyperspectralScene
from spectral_diffusion.data.readers import is_raster
from spectral_diffusion.data.readers import load_array
from spectral_diffusion.data.readers import load_indian_pines
from spectral_diffusion.data.readers import load_scene
from spectral_diffusion.data.readers import nearest_bands
from spectral_diffusion.data.readers import nodata_pixels
from spectral_diffusion.data.readers import RGB_NM
from spectral_diffusion.data.readers import SUPPORTED_EXTENSIONS
from spectral_diffusion.data.readers import with_wavelengths

__all__ = [
    "Affine", "DFC2018", "HyperspectralScene", "INDIAN_PINES_WAVELENGTHS_NM", "MinMax", "Normaliser",
    "RGB_NM", "SUPPORTED_EXTENSIONS", "check_finite", "fill_nodata", "fit_minmax", "is_raster",
    "load_array", "load_indian_pines", "load_scene", "nearest_bands", "nodata_pixels",
    "normaliser_from_dict", "predict_tiled", "random_crops", "spatial_split", "tile_positions",
    "with_wavelengths", "write_cube", "write_geotiff",
]
