from setuptools import find_packages, setup

setup(
    name="spectral_diffusion",
    version="0.1.0",
    description="JAX/Flax diffusion models on the spectral axis of remote-sensing images (SCDM, AnyBand-Diff).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # configs/ installs too, so `from configs import demo_indian_pines` works anywhere (notebooks, scripts).
    packages=find_packages(include=["spectral_diffusion", "spectral_diffusion.*", "tfds_builders",
                                    "tfds_builders.*", "configs"]),
    package_data={"spectral_diffusion.physics": ["weights/*.npz"],
                  "spectral_diffusion.pretrained": ["*/*/params.npz", "*/*/meta.json"]},
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "chex>=0.1.92",
        "ml-collections>=1.1.0",
        "absl-py>=2.1",
        "numpy>=2.0",
        "scipy>=1.13",
        "h5py>=3.10",
        "matplotlib>=3.8",
        "tensorly>=0.9",  # ships the embedded default scene, AVIRIS Indian Pines
        "pyrsr>=0.8",     # real sensor spectral response functions (AnyBand-Diff's sensor library)
        # The papers' datasets as TFDS builders, stored as array_record and read without TensorFlow.
        "tensorflow-datasets>=4.9.10",
        "array-record>=0.8",
        "importlib_resources>=6",  # tensorflow-datasets imports it but does not declare it
        "rasterio>=1.4",  # GeoTIFF input and output with georeferencing
    ],
    extras_require={
        "test": ["pytest>=8", "scikit-image>=0.24", "prosail>=2.0.5", "nbclient>=0.10", "ipykernel>=6", "pytest-xdist>=3.6"],
        "notebooks": ["ipykernel>=6"],
        # Only to retrain the RTM emulator for a new wavelength grid; trained weights ship.
        "physics": ["prosail>=2.0.5"],
    },
)
