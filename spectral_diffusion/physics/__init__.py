"""Physics: spectral indices, real sensor spectral responses on a hyperspectral grid, and the RTM
(PROSAIL) emulator."""

from spectral_diffusion.physics.indices import band_index
from spectral_diffusion.physics.indices import check_wavelengths
from spectral_diffusion.physics.indices import GREEN_NM
from spectral_diffusion.physics.indices import ndvi
from spectral_diffusion.physics.indices import ndwi
from spectral_diffusion.physics.indices import NIR_NM
from spectral_diffusion.physics.indices import RED_NM
from spectral_diffusion.physics.rtm import load_emulator
from spectral_diffusion.physics.rtm import RTMEmulator
from spectral_diffusion.physics.srf import describe_library
from spectral_diffusion.physics.srf import gaussian_sensor
from spectral_diffusion.physics.srf import place_on_grid
from spectral_diffusion.physics.srf import sensor_library
from spectral_diffusion.physics.srf import sensor_names
from spectral_diffusion.physics.srf import sensor_on_grid
from spectral_diffusion.physics.srf import SensorLibrary
from spectral_diffusion.physics.srf import SensorOnGrid
from spectral_diffusion.physics.srf import simulate

__all__ = [
    # indices
    "GREEN_NM",
    "NIR_NM",
    "RED_NM",
    "band_index",
    "check_wavelengths",
    "ndvi",
    "ndwi",
    # sensor responses
    "SensorLibrary",
    "SensorOnGrid",
    "describe_library",
    "gaussian_sensor",
    "place_on_grid",
    "sensor_library",
    "sensor_names",
    "sensor_on_grid",
    "simulate",
    # RTM emulator
    "RTMEmulator",
    "load_emulator",
]
