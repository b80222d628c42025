"""TFDS dataset builders for the papers' scenes, one package per dataset (array_record, no TensorFlow).

  dfc2018           SCDM: 27 patches of 512 x 512 (24 train, 3 test), (DN - 3693) / 7410
  pavia_center      SCDM: 48 patches of 128 x 128 over 1024 x 715 (40 train, 8 test), min-max
  pavia_university  AnyBand-Diff: 64 x 64 patches, stride 32 (train) / 64 (test), min-max
  washington_dc     AnyBand-Diff: as pavia_university
  indian_pines      the demo's column split (the scene ships in the tensorly package)

Each builder's docstring states its protocol and the assumptions where a paper is silent. Read them
through the library (data.source = "tfds" in a config, or spectral_diffusion.data.datasets):

  from spectral_diffusion.data import datasets
  splits = datasets.load_builder("pavia_center")   # builds once into ~/tensorflow_datasets
  splits.train.shape                               # (40, 128, 128, 102), normalised float32

or with TFDS itself once the builder module is imported:

  import tensorflow_datasets as tfds
  import tfds_builders.pavia_center.pavia_center_dataset_builder
  test = tfds.data_source("pavia_center", split="test")   # examples: cube, wavelengths_nm, position
"""
