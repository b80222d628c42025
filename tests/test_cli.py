"""The command line: each bad input gives a one-line error and exit code 2, and destroys nothing."""
import os
import shutil

import numpy as np
import pytest
import scipy.io

from spectral_diffusion import main as cli

DEMO = "configs/demo_indian_pines.py"


def run(capsys, *args):
  code = cli.main(["main", *args])
  err = capsys.readouterr().err.strip().splitlines()
  return code, err


def overrides(config):
  """The tiny config as --config.* flags, so the CLI runs the same cascade the fixture trained."""
  flat = {
      "data.name": config.data.name, "data.path": config.data.path,
      "data.train_cols": config.data.train_cols, "data.test_cols": config.data.test_cols,
      "data.crop_size": config.data.crop_size, "model.base_channels": config.model.base_channels,
      "model.channel_mults": config.model.channel_mults, "model.num_groups": config.model.num_groups,
      "model.time_embed_dim": config.model.time_embed_dim, "model.attn_levels": config.model.attn_levels,
      "sample.num_steps": config.sample.num_steps, "sample.tile_size": config.sample.tile_size,
      "sample.tile_overlap": config.sample.tile_overlap, "sample.batch_size": config.sample.batch_size,
      "sample.icmg_scale": config.sample.icmg_scale, "train.num_steps": config.train.num_steps,
      "train.batch_size": config.train.batch_size,
  }
  return [f"--config.{k}={v}" for k, v in flat.items()]


def test_unknown_config_key(capsys):
  code, err = run(capsys, f"--config={DEMO}", "--config.train.learning_rat=1", "--mode=describe")
  assert code == 2 and len(err) == 1 and "learning_rat" in err[0]


def test_missing_config_file(capsys):
  code, err = run(capsys, "--config=configs/no_such.py", "--mode=describe")
  assert code == 2 and len(err) == 1 and "no_such.py" in err[0]


def test_missing_data_file(capsys, tmp_path):
  code, err = run(capsys, f"--config={DEMO}", "--config.data.name=file",
                  f"--config.data.path={tmp_path}/absent.npy", f"--workdir={tmp_path}/w")
  assert code == 2 and len(err) == 1 and "absent.npy" in err[0]


def test_paper_config_without_data_says_where_to_get_it(capsys, tmp_path):
  code, err = run(capsys, "--config=configs/scdm_dfc2018.py", f"--workdir={tmp_path}/w")
  assert code == 2 and len(err) == 1 and "Data Fusion Contest" in err[0]


def test_nan_pixels_in_training_data(capsys, tmp_path, crop_file):
  cube = scipy.io.loadmat(crop_file)["cube"].astype(np.float32)
  cube[3, 7, 0] = np.nan
  np.save(tmp_path / "nan.npy", cube)
  code, err = run(capsys, f"--config={DEMO}", "--config.data.name=file", f"--config.data.path={tmp_path}/nan.npy",
                  "--config.data.rgb_bands=(24,15,6)", f"--workdir={tmp_path}/w")
  assert code == 2 and len(err) == 1 and "NaN" in err[0] and "row 3, col 7" in err[0]


def test_describe_paper_config(capsys):
  assert cli.main(["main", "--config=configs/scdm_dfc2018.py", "--mode=describe"]) == 0
  out = capsys.readouterr().out
  assert "12 -> 48 bands" in out and "77,557,168 parameters" in out


def test_sample_writes_full_cube(capsys, trained, tmp_path):
  config, workdir = trained
  cube = scipy.io.loadmat(config.data.path)["cube"].astype(np.float32)
  np.save(tmp_path / "rgb.npy", cube[:20, :24][..., [24, 15, 6]])
  out = tmp_path / "out" / "cube.npy"
  code, err = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample",
                  f"--input={tmp_path}/rgb.npy", f"--output={out}")
  assert code == 0, err
  result = np.load(out)
  assert result.shape == (20, 24, 200) and np.isfinite(result).all()
  assert (tmp_path / "out" / "cube.png").stat().st_size > 5_000
  # A full cube as input takes the trained RGB bands itself.
  np.save(tmp_path / "full.npy", cube[:20, :24])
  code, _ = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample",
                f"--input={tmp_path}/full.npy", f"--output={tmp_path}/full_out.npy")
  assert code == 0 and np.load(tmp_path / "full_out.npy").shape == (20, 24, 200)
  # The official code's PDT on the state x_t, with DDIM eta 1.
  code, _ = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample",
                "--config.sample.pdt_target=state", "--config.sample.eta=1.0",
                f"--input={tmp_path}/rgb.npy", f"--output={tmp_path}/state_out.npy")
  assert code == 0 and np.isfinite(np.load(tmp_path / "state_out.npy")).all()


@pytest.mark.parametrize("case", ["wrong_bands", "nan", "too_small", "missing"])
def test_sample_bad_input_keeps_existing_output(capsys, trained, tmp_path, case):
  config, workdir = trained
  out = tmp_path / "result.npy"
  np.save(out, np.arange(3.0))  # an earlier result that must survive a failed run
  image = np.random.default_rng(0).uniform(2000, 6000, (20, 24, 3)).astype(np.float32)
  if case == "wrong_bands":
    image = np.concatenate([image, image[..., :2]], axis=-1)   # 5 bands
  elif case == "nan":
    image[0, 0, 1] = np.nan
  elif case == "too_small":
    image = image[:1, :1]
  if case != "missing":
    np.save(tmp_path / "in.npy", image)
  code, err = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={workdir}", "--mode=sample",
                  f"--input={tmp_path}/in.npy", f"--output={out}")
  assert code == 2 and len(err) == 1, err
  expected = {"wrong_bands": "5 bands", "nan": "NaN", "too_small": "minimum size", "missing": "in.npy"}
  assert expected[case] in err[0]
  np.testing.assert_array_equal(np.load(out), np.arange(3.0))


def test_mismatched_checkpoint(capsys, trained):
  config, workdir = trained
  args = [a for a in overrides(config) if "base_channels" not in a]
  code, err = run(capsys, f"--config={DEMO}", *args, "--config.model.base_channels=16",
                  f"--workdir={workdir}", "--mode=eval")
  assert code == 2 and len(err) == 1 and "base_channels" in err[0]


def test_corrupt_checkpoint_is_reported_and_left_in_place(capsys, trained, tmp_path):
  config, workdir = trained
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  ckpt = copy / "stage_0" / "checkpoints"
  step_dir = ckpt / sorted(os.listdir(ckpt))[-1] / "state"
  corrupted = 0
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 100:
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
        corrupted += 1
  assert corrupted
  before = sorted(p for p, _, _ in os.walk(copy))
  code, err = run(capsys, f"--config={DEMO}", *overrides(config), f"--workdir={copy}", "--mode=eval")
  assert code == 2 and len(err) == 1 and "corrupt" in err[0]
  assert sorted(p for p, _, _ in os.walk(copy)) == before
