"""How far physics-guided sampling (PGS) reaches a trained AnyBand model's samples.

  python -m spectral_diffusion.tools.guidance_reach --config=configs/anyband_demo_indian_pines.py \
      --workdir=runs/anyband --scales=100,1e4,1e6

For each evaluation protocol of the config (random masking, K bands, sensors) and each guidance scale,
on the test split's first tiles: along the guided DDIM trajectory, the guidance term against the
network's eps at every step (||eps_guided - eps|| / ||eps||: median and largest over the steps); the
physics loss that PGS descends (physics.guidance_terms) at the final x0, unguided and guided, from the
same noise; and NDVI / NDWI correlation with the truth, unguided and guided. A term far below 1e-3 of
eps cannot move a sample measurably; the loss and index columns say whether it moved where intended.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np
from spectral_diffusion import metrics, physics, samplers, sampling, training
from spectral_diffusion.anyband import evaluate, model
from spectral_diffusion.errors import UserInputError

def test_tiles(cube, size, count):
  """Up to `count` non-overlapping size x size tiles of the test image, row-major from the top left."""
  rows, cols = cube.shape[0] // size, cube.shape[1] // size
  if rows * cols == 0:
    raise UserInputError(f"the test split ({cube.shape[0]}x{cube.shape[1]}) is smaller than one "
                         f"{size}x{size} tile; lower --config.sample.tile_size")
  tiles = [cube[r * size:(r + 1) * size, c * size:(c + 1) * size] for r in range(rows) for c in range(cols)]
  return np.stack(tiles[:count])


# eps functions are tree_util.Partials (arrays as leaves), so one compiled call serves every step
_call = jax.jit(lambda fn, x_t, t: fn(x_t, t))


def reach(bundle, schedule, config, phys, x_obs, mask, scale, rng):
  """{step ratios, loss and sample} for one protocol and guidance scale, from one noise draw."""
  m = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), (x_obs.shape[0], mask.shape[-1]))
  x_obs = jnp.asarray(x_obs, jnp.float32)
  steps = config.sample.num_steps
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.physics.guidance_scale = float(scale)
  plain, frame = model._guided_eps(bundle, bundle.params, schedule, x_obs, m, config, phys, False)
  guided, _ = model._guided_eps(bundle, bundle.params, schedule, x_obs, m, config, phys, True)
  loss = model.GuidanceLoss(tuple(float(w) for w in config.physics.guidance_terms),
                            tuple(float(v) for v in config.physics.valid_range),
                            tuple(physics.band_index(np.asarray(phys.wavelengths_nm), nm)
                                  for nm in (physics.RED_NM, physics.GREEN_NM, physics.NIR_NM)))
  y_plain = samplers.ddim(plain, schedule, x_obs.shape, rng, num_steps=steps)
  y_guided, states = samplers.ddim(guided, schedule, x_obs.shape, rng, num_steps=steps,
                                   return_trajectory=True)
  ratios = []
  for x_t, t in zip(states, samplers.timesteps(schedule, steps, "linspace")):
    t_vec = jnp.full((x_obs.shape[0],), t, jnp.int32)
    e = _call(plain, x_t, t_vec)
    ratios.append(float(jnp.linalg.norm(_call(guided, x_t, t_vec) - e) / jnp.linalg.norm(e)))
  to_cube = lambda y: np.asarray(jnp.where(m[:, None, None, :] > 0, x_obs, bundle.space.from_model(y, frame)))
  return {"ratios": ratios,
          "loss": [float(jnp.mean(loss(phys, bundle.space, frame, x_obs, m, y))) for y in (y_plain, y_guided)],
          "cubes": [to_cube(y) for y in (y_plain, y_guided)]}


def index_cc(phys, pred, truth):
  """(NDVI CC, NDWI CC) of pred against truth, over all pixels of the tiles."""
  (p_ndvi, p_ndwi), (t_ndvi, t_ndwi) = phys.indices(phys.reflectance(pred)), phys.indices(phys.reflectance(truth))
  return tuple(float(metrics.index_agreement(np.asarray(p), np.asarray(t))["cc"])
               for p, t in ((p_ndvi, t_ndvi), (p_ndwi, t_ndwi)))


def measure(config, workdir, scales, num_tiles):
  """Prints the table (module docstring) and returns its rows."""
  if config.method != "anyband":
    raise UserInputError("guidance_reach measures an AnyBand model's physics guidance (method=anyband)")
  sampling.SampleSettings.from_config(config.sample)
  d = model.load_data(config)
  bundle = model.load_model(config, workdir)
  schedule = training.make_schedule(config.diffusion)
  phys = model.make_physics(config, d.wavelengths_nm, d.normaliser, bool(config.physics.guidance_terms[2]))
  truth = test_tiles(d.test, config.sample.tile_size, num_tiles)
  print(f"DDIM {config.sample.num_steps} steps, guidance terms {tuple(config.physics.guidance_terms)}, "
        f"gradient {config.physics.guidance_gradient}, {len(truth)} test tiles of {truth.shape[1]}x"
        f"{truth.shape[2]}\n\n| protocol | scale | guidance / eps (median, max over steps) | physics loss "
        f"unguided -> guided | NDVI CC | NDWI CC |\n|---|---|---|---|---|---|", flush=True)
  rows = []
  for p_index, (protocol, transform, mask) in enumerate(evaluate.protocols(config, d)):
    x_obs = truth if transform is None else truth @ transform
    for scale in scales:
      r = reach(bundle, schedule, config, phys, x_obs, mask, scale, jax.random.key(config.seed + p_index))
      (ndvi0, ndwi0), (ndvi1, ndwi1) = (index_cc(phys, c, truth) for c in r["cubes"])
      rows.append({"protocol": protocol, "scale": scale, "ratios": r["ratios"], "loss": r["loss"],
                   "ndvi_cc": [ndvi0, ndvi1], "ndwi_cc": [ndwi0, ndwi1]})
      print(f"| {protocol} | {scale:g} | {np.median(r['ratios']):.2e}, {max(r['ratios']):.2e} | "
            f"{r['loss'][0]:.3e} -> {r['loss'][1]:.3e} | {ndvi0:.4f} -> {ndvi1:.4f} | "
            f"{ndwi0:.4f} -> {ndwi1:.4f} |", flush=True)
  return rows


def main(argv=None):
  from absl import flags
  from ml_collections import config_flags

  from spectral_diffusion.main import _one_line, parse
  argv = sys.argv if argv is None else argv
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "AnyBand config file (configs/*.py)", flag_values=fv,
                                  sys_argv=argv)
  flags.DEFINE_string("workdir", None, "the trained model's workdir", flag_values=fv)
  flags.DEFINE_list("scales", ["100", "1e4", "1e6"], "physics.guidance_scale values to measure", flag_values=fv)
  flags.DEFINE_integer("tiles", 4, "test tiles (sample.tile_size squares from the top left)", flag_values=fv)
  problem = parse(fv, argv)  # missing or broken config file, unknown override key, bad flag value
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  try:
    if fv.config is None or fv.workdir is None:
      raise flags.Error("give --config=configs/X.py and --workdir=DIR (a trained AnyBand model)")
    scales = [float(s) for s in fv.scales]
    if fv.tiles < 1:
      raise ValueError(f"--tiles={fv.tiles}: use 1 or more")
  except (flags.Error, ValueError) as e:
    print(f"error: {_one_line(e)} (see --helpfull)", file=sys.stderr)
    return 2
  try:
    measure(fv.config, fv.workdir, scales, fv.tiles)
  except UserInputError as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
