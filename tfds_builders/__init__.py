"""TFDS dataset builders for the papers' scenes, one package per dataset (array_record, no TensorFlow).

Read them through the library (spectral_diffusion.data.datasets, or data.source = "tfds" in a config)
or directly:

  from spectral_diffusion.data import datasets
  splits = datasets.load_builder("pavia_center")   # builds once into ~/tensorflow_datasets
"""
