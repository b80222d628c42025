"""Diffusion models on the spectral axis of remote-sensing images: SCDM and AnyBand-Diff in JAX."""
