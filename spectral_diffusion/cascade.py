"""The stable public name of SCDM's band plan (`spectral_diffusion.cascade.first_stage_bands`, ...); the
cascade itself lives in `spectral_diffusion.scdm.cascade`."""
from spectral_diffusion.scdm.cascade import Stage, equal_interval_bands, first_stage_bands, plan_stages
from spectral_diffusion.scdm.cascade import stage_band_counts

__all__ = ["Stage", "equal_interval_bands", "first_stage_bands", "plan_stages", "stage_band_counts"]
