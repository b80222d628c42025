"""SCDM (spectral-cascaded diffusion): RGB -> every band through a cascade of conditional diffusion U-Nets."""
