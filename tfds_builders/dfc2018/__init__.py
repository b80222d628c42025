"""The 2018 IEEE GRSS Data Fusion Contest Houston hyperspectral scene, SCDM's protocol."""
