"""AnyBand-Diff's evaluation protocols on the held-out split, beside two baselines.

Protocols (each one band mask for the whole test image, drawn with a fixed seed):
  missing_P%   random band masking: P % of the bands missing (PSNR, SSIM, RMSE, SAM)
  bands_K      K observed bands chosen at random
  sensor_S     the bands of a real sensor, simulated from the truth with its SRFs (every band inferred)
Methods, one row per estimator: one sample of the model with DDIM and physics guidance (anyband), the
mean of sample.num_samples such samples when it is > 1 (anyband_mean: the posterior-mean estimate),
one sample without guidance (anyband_no_pgs), its one-step estimate of E[x0 | C, M] (anyband_one_step:
one DDIM step from pure noise, the mean estimator at one step, over sample.num_samples noise draws), the
training ablations (anyband_no_dsm, anyband_no_mspl, one sample like anyband), the model's own
regression prior (anyband_prior: the reference the network's residual is added to), per-pixel ridge
regression from the observed bands (fit on the training split) and linear interpolation along
wavelength. Every method returns the observed bands as given.

PSNR, SSIM, RMSE and the distribution scores (W1: metrics.wasserstein1; the local-variance ratio:
metrics.local_variance_ratio) are over the bands each method had to infer (normalised units, data
range 1; the missing bands, or all bands for a sensor); SAM and the NDVI / NDWI agreement (CC and RMSE
of the index maps against the truth's) are over the whole returned cube. A test split that is a stack of patches
(data.source=tfds) is repaired patch by patch and every metric is the mean over patches.
"""
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from spectral_diffusion import baselines, metrics, physics, sampling
from spectral_diffusion.anyband import masking, model
from spectral_diffusion.data import outputs, patches
from spectral_diffusion.evaluation import image_shape, mean_scores, num_images, per_image, split_description
from spectral_diffusion.progress import Progress

BASELINES = ("ridge", "interp")


def protocols(config, d):
  """[(name, transform (N, N) or None, mask (N,))]: what is observed is cube @ transform (a simulated
  sensor) or the cube itself, at the bands where mask is 1."""
  rng = np.random.default_rng([config.seed, 11])
  n = d.num_bands
  out = []
  for f in config.eval.missing_fractions:
    out.append((f"missing_{round(100 * f)}%", None, masking.random_band_mask(rng, n, f)))
  for k in config.eval.input_band_counts:
    out.append((f"bands_{k}", None, masking.k_band_mask(rng, n, k)))
  by_name = {s.name: s for s in d.library}
  for name in config.eval.sensors:
    sensor = by_name.get(name)
    if sensor is None:
      sensor = physics.sensor_on_grid(name, d.wavelengths_nm)  # a clear error if unusable
    out.append((f"sensor_{name}",) + masking.sensor_transform(sensor, n))
  return out


def baseline_predictions(d, x_obs, mask, train_obs, alpha):
  """Ridge from the observed bands (fit on the training split seen through the same mask or sensor)
  and interpolation along wavelength; observed bands kept as given."""
  obs = np.flatnonzero(mask)
  # Per-pixel methods: a stack of patches is fit and predicted as one image, then reshaped back.
  x = patches.pixels(x_obs)
  ridge = baselines.predict_ridge(baselines.fit_ridge(patches.pixels(train_obs)[..., obs],
                                                      patches.pixels(d.train), alpha=alpha), x[..., obs])
  interp = baselines.interp_bands(x[..., obs], d.wavelengths_nm[obs], d.wavelengths_nm)
  out = {}
  for name, pred in (("ridge", ridge), ("interp", interp)):
    pred = pred.astype(np.float32).reshape(np.shape(x_obs)[:-1] + (-1,))
    pred[..., obs] = x_obs[..., obs]
    out[name] = pred
  return out


def prior_prediction(space, x_obs, mask):
  """The model's own regression prior from the observed bands (the reference its residual is added to;
  observed bands as given): what training starts from, so the bar a posterior-mean row must clear."""
  images = np.asarray(x_obs if np.ndim(x_obs) == 4 else x_obs[None], np.float32)
  m = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), (len(images), len(mask)))
  out = np.asarray(space.reference(jnp.asarray(images), m).mean)
  return out if np.ndim(x_obs) == 4 else out[0]


def score(pred, truth, truth_indices, inferred, phys):
  """Metrics of one method; truth_indices = phys.indices of the truth's reflectance (NDVI, NDWI).
  For a stack of patches (P, h, w, N), the mean of each metric over the patches."""
  if np.ndim(truth) == 4:
    return mean_scores([score(p, t, tuple(ti[i] for ti in truth_indices), inferred, phys)
                        for i, (p, t) in enumerate(zip(pred, truth))])
  m = metrics.all_metrics(pred, truth, data_range=1.0, bands=inferred)
  out = {"psnr": m["mpsnr"], "ssim": m["mssim"], "rmse": m["rmse"], "w1": m["w1"],
         "local_var_ratio": m["local_var_ratio"], "sam_deg": float(np.degrees(metrics.sam(pred, truth)))}
  for name, p, t in zip(("ndvi", "ndwi"), phys.indices(phys.reflectance(pred)), truth_indices):
    agree = metrics.index_agreement(p, t)
    out[f"{name}_cc"], out[f"{name}_rmse"] = agree["cc"], agree["rmse"]
  return {k: float(v) for k, v in out.items()}


def evaluate(config, workdir, d=None):
  """Writes workdir/eval/{anyband_metrics.json, anyband_metrics.md, *.png}; returns the metrics."""
  t0 = time.perf_counter()
  out_dir = outputs.check_directory(os.path.join(workdir, "eval"), "eval output")  # before any work
  d = d or model.load_data(config)
  pgs = bool(config.physics.guidance_scale)
  steps, n = config.sample.num_steps, config.sample.num_samples
  # (sample row, mean row, trained model, guided, sampler steps, draws): one row per estimator; a
  # mean row averages the draws whose first is the sample row.
  runs = [("anyband", "anyband_mean" if n > 1 else None, "anyband", pgs, steps, n)]
  if pgs:
    runs.append(("anyband_no_pgs", None, "anyband", False, steps, 1))
  if steps > 1:  # the mean estimator at one step: each draw is already the estimate of E[x0 | C, M]
    runs.append((None, "anyband_one_step", "anyband", False, 1, n))
  runs += [(f"anyband_{v}", None, v, pgs, steps, 1) for v in model.ablations(config)]
  bundles = {v: model.load_model(config, workdir, v) for v in {r[2] for r in runs}}
  phys = model.make_physics(config, d.wavelengths_nm, d.normaliser,
                              pgs and bool(config.physics.guidance_terms[2]))
  plan = protocols(config, d)
  truth_indices = phys.indices(phys.reflectance(d.test))
  per_call = num_images(d.test) * sampling.num_tile_batches(
      bundles["anyband"].model.min_size, sampling.SampleSettings.from_config(config.sample), *image_shape(d.test))
  progress = Progress(len(plan) * sum(r[-1] for r in runs) * per_call, "repairing the test split")
  results, shown = {}, {}
  seconds = {name: [] for r in runs for name in r[:2] if name}
  for p_index, (protocol, transform, mask) in enumerate(plan):
    x_obs, train_obs = (d.test, d.train) if transform is None else (d.test @ transform, d.train @ transform)
    preds = baseline_predictions(d, x_obs, mask, train_obs, config.eval.ridge_alpha)
    preds["anyband_prior"] = prior_prediction(bundles["anyband"].space, x_obs, mask)
    key = jax.random.key(config.seed + 300 + p_index)
    keys_all = [key] + [jax.random.fold_in(key, i) for i in range(1, n)]  # draw 0: the same whatever n
    for sample_row, mean_row, variant, use_pgs, num_steps, draws in runs:
      t = time.perf_counter()
      first, mean = sampling.sample_and_mean(lambda k: per_image(  # pylint: disable=cell-var-from-loop
          lambda image, rng: [model.repair(bundles[variant], image, mask, rng, config, phys, pgs=use_pgs,
                                           progress=progress, num_steps=num_steps)], x_obs, k)[0],
          keys_all[:draws])
      took = time.perf_counter() - t
      if sample_row:
        preds[sample_row] = first
        seconds[sample_row].append(took / draws)
      if mean_row:
        preds[mean_row] = mean
        seconds[mean_row].append(took)
    inferred = np.arange(d.num_bands) if transform is not None else np.flatnonzero(mask == 0)
    results[protocol] = {m: score(p, d.test, truth_indices, inferred, phys) for m, p in preds.items()}
    shown[protocol] = ({m: patches.mosaic(p) for m, p in preds.items()}, mask)
  progress.close()
  # The first protocol pays for compilation; later ones time sampling alone.
  timing = {m: float(np.median(s[1:] if len(s) > 1 else s)) for m, s in seconds.items()}
  report = {"protocols": results, "seconds_per_repair": timing,
            "test_shape": list(d.test.shape), "sampler_steps": config.sample.num_steps}
  with outputs.staged_directory(out_dir) as staging:  # files replace earlier ones only when all are written
    with open(os.path.join(staging, "anyband_metrics.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)
    table = markdown(report, d, config, time.perf_counter() - t0)
    with open(os.path.join(staging, "anyband_metrics.md"), "w", encoding="utf-8") as f:
      f.write(table)
    from spectral_diffusion import plots  # matplotlib only when figures are drawn
    # A stack of test patches is drawn side by side.
    plots.repair_figures(staging, dataclasses.replace(d, test=patches.mosaic(d.test)), phys, shown)
  print(table)
  return report


def markdown(report, d, config, seconds):
  lines = [f"# AnyBand evaluation: {d.name}, {split_description(d.test, config)}, {d.num_bands} bands", "",
           f"DDIM {config.sample.num_steps} steps, physics guidance scale {config.physics.guidance_scale}, "
           f"{config.sample.num_samples} sample(s); evaluation took {seconds:.0f} s. PSNR / SSIM / RMSE / "
           f"W1 / LV ratio over the inferred bands (normalised, data range 1); SAM, NDVI and NDWI over the "
           f"whole cube. W1: per-band Wasserstein-1 distance of the pixel-value distributions; LV ratio: "
           f"local variance around a 3x3 mean, predicted / true (1 = texture kept, < 1 = over-smoothed). "
           f"anyband is one sample, anyband_mean (with num_samples > 1) and anyband_one_step are "
           f"posterior-mean estimates; anyband_prior is the model's own regression prior (the Gaussian "
           f"band regression its residual is added to).", ""]
  for protocol, table in report["protocols"].items():
    lines += [f"## {protocol}", "",
              "| method | PSNR (dB) | SSIM | RMSE | W1 | LV ratio | SAM (deg) | NDVI CC | NDVI RMSE | NDWI CC "
              "| NDWI RMSE |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, v in table.items():
      lines.append(f"| {m} | {v['psnr']:.2f} | {v['ssim']:.4f} | {v['rmse']:.4f} | {v['w1']:.4f} | "
                   f"{v['local_var_ratio']:.3f} | {v['sam_deg']:.2f} | "
                   f"{v['ndvi_cc']:.3f} | {v['ndvi_rmse']:.4f} | {v['ndwi_cc']:.3f} | {v['ndwi_rmse']:.4f} |")
    lines.append("")
  timing = report["seconds_per_repair"]
  lines += ["## Time per repair of the test split (median over protocols after the first)", ""]
  lines += [f"- {m}: {s:.2f} s" for m, s in timing.items()]
  if "anyband_no_pgs" in timing and timing["anyband_no_pgs"] > 0:
    lines.append(f"- physics guidance costs x{timing['anyband'] / timing['anyband_no_pgs']:.2f} "
                 f"per sample (one backward pass through the network per step)")
  return "\n".join(lines) + "\n"
