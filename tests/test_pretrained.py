"""The pretrained demo weights that ship inside the package, on the demo's own test split."""
import os

import jax
import numpy as np
import pytest

from configs import demo_indian_pines
from spectral_diffusion import checkpoints, data, pipelines, pretrained
from spectral_diffusion.scdm import evaluate

# pipelines.SCDM.load("demo", num_steps=1).posterior_mean(test RGB, key(0), num_samples=4) on the demo's
# test columns 80-144, scored in normalised units over the inferred bands (the RGB bands excluded), as
# measured when the weights were exported (README, "Pretrained weights").
DEMO_ONE_STEP = {"mpsnr": 40.54, "sam_deg": 3.82}


@pytest.fixture(scope="module")
def demo():
  return pipelines.SCDM.load("demo", num_steps=1)


def test_demo_weights_score_what_the_readme_says(demo):
  scene = data.load_indian_pines().cube
  test = scene[:, 80:145]
  pred = demo.posterior_mean(test[..., demo.rgb_bands], jax.random.key(0), num_samples=4)
  inferred = [b for b in range(demo.num_bands) if b not in demo.rgb_bands]
  norm = demo.normaliser
  scores = evaluate.score(np.asarray(norm.forward(pred)), np.asarray(norm.forward(test)), inferred, norm.span)
  for key, want in DEMO_ONE_STEP.items():
    assert scores[key] == pytest.approx(want, abs=0.1), key


def test_demo_weights_match_the_demo_config():
  # what --mode=sample --config=configs/demo_indian_pines.py --workdir=demo checks before sampling
  for k in (0, 1):
    directory = os.path.join(pretrained.resolve("demo"), f"stage_{k}")
    checkpoints.check_metadata(checkpoints.load_meta(directory),
                               checkpoints.model_settings(demo_indian_pines.get_config()), directory)


def test_command_line_samples_with_the_shipped_weights(demo, tmp_path, capsys):
  from spectral_diffusion import main
  rgb = data.load_indian_pines().cube[40:72, 90:122][..., demo.rgb_bands]
  np.save(tmp_path / "rgb.npy", rgb)
  argv = ["main", "--config=configs/demo_indian_pines.py", "--workdir=demo", "--mode=sample",
          f"--input={tmp_path / 'rgb.npy'}", "--config.sample.num_steps=1"]
  before = sorted(os.listdir(pretrained.resolve("demo")))
  assert main.main(argv) == 2 and "give --output=FILE" in capsys.readouterr().err
  assert main.main(argv + [f"--output={tmp_path / 'cube.npy'}"]) == 0
  cube = np.load(tmp_path / "cube.npy")
  assert cube.shape == (32, 32, 200) and np.isfinite(cube).all()
  np.testing.assert_array_equal(cube[..., list(demo.rgb_bands)], rgb)
  assert sorted(os.listdir(pretrained.resolve("demo"))) == before   # nothing written inside the package
