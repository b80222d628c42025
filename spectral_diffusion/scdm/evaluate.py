"""The evaluator: the cascade beside three baselines on the same held-out split, as JSON, a table and figures.

Rows: scdm (one sample of the cascade) and, with sample.num_samples > 1, scdm_mean (the mean of those
samples: the posterior-mean estimate), scdm_one_step (the cascade at one sampler step per stage: each
stage's one-step estimate of E[x0 | its input] fed to the next, averaged over sample.num_samples noise
draws; the mean estimator with sample.num_steps=1), one row per cascade stage, and the baselines ridge,
ridge_poly2 and interp. Every method returns the RGB input bands exactly as given (as pipelines.SCDM does).
Metrics are computed in normalised units with data_range 1 (min-max over the training split), and RMSE
also in the data's own units; beside the error metrics, the distribution scores W1 (metrics.wasserstein1)
and the local-variance ratio (metrics.local_variance_ratio). Every method is scored over all bands and
over the bands it had to infer (all but the RGB input bands); per-band PSNR is capped at metrics' max_db
so that a band reproduced exactly does not make MPSNR infinite. A test split that is a stack of patches
(data.source=tfds) is sampled patch by patch and every metric is the mean over patches (the papers'
protocol).
"""
import dataclasses
import json
import os
import time

import jax
import numpy as np

from spectral_diffusion import baselines, metrics, sampling, training
from spectral_diffusion.evaluation import image_shape, mean_scores, num_images, per_image, pixelwise
from spectral_diffusion.evaluation import split_description
from spectral_diffusion.data import outputs, patches
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.progress import Progress
from spectral_diffusion.scdm import cascade, experiment

METRIC_KEYS = ("rmse", "sam", "mpsnr", "mssim", "ergas", "w1", "local_var_ratio")


def score(pred, truth, bands, normaliser_span):
  """Metrics of an image (H, W, B), or their means over the patches of a stack (P, h, w, B)."""
  if np.ndim(truth) == 4:
    return mean_scores([score(p, t, bands, normaliser_span) for p, t in zip(pred, truth)])
  m = metrics.all_metrics(pred, truth, data_range=1.0, bands=bands)
  out = {k: float(m[k]) for k in METRIC_KEYS}
  out["sam_deg"] = float(np.degrees(out["sam"]))
  out["rmse_data_units"] = out["rmse"] * normaliser_span
  return out


def load_cascade(config, workdir, exp):
  bundles = []
  for stage in exp.stages:
    bundle, _ = cascade.load_stage(config, workdir, stage.index)
    if bundle.stage != stage:
      raise UserInputError(f"stage {stage.index + 1} in {workdir} maps bands {bundle.stage.in_bands} -> "
                       f"{bundle.stage.out_bands}, the config plans {stage.in_bands} -> {stage.out_bands}")
    bundles.append(bundle)
  return bundles


def predictions(config, workdir, exp):
  """{method: (H, W, N) prediction on the test split}, plus per-stage outputs of the cascade."""
  test, train_cube, rgb = exp.test, exp.train, list(exp.rgb_bands)
  bundles = load_cascade(config, workdir, exp)
  schedule = training.make_schedule(config.diffusion)
  settings = sampling.SampleSettings.from_config(config.sample)
  n = config.sample.num_samples
  shape = image_shape(test)
  one_step = dataclasses.replace(settings, num_steps=1)
  progress = Progress(num_images(test) * (
      2 * n * cascade.num_tile_batches(bundles, settings, *shape) +
      sum(cascade.num_tile_batches(bundles[k:k + 1], settings, *shape) for k in range(1, len(bundles)))),
      "sampling test split")

  def chain(stages, bands, how=settings):
    return lambda image, rng: cascade.run_cascade(stages, schedule, image[..., bands], rng, how, progress)

  # One row per estimator from the same n draws: the first draw (scdm) and their mean (scdm_mean).
  first, mean = sampling.sample_and_mean(lambda key: per_image(chain(bundles, rgb), test, key),
                                         [jax.random.key(config.seed + 100 + i) for i in range(n)])
  preds, stage_preds = {"scdm": np.array(first[-1])}, {}  # a copy: the stage rows stay as sampled
  if n > 1:
    preds["scdm_mean"] = mean[-1]
  preds["scdm_one_step"] = sampling.sample_and_mean(
      lambda key: per_image(chain(bundles, rgb, one_step), test, key),
      [jax.random.key(config.seed + 300 + i) for i in range(n)])[1][-1]
  for k, bundle in enumerate(bundles):
    stage_preds[f"scdm_stage{k + 1}"] = (first[k], list(bundle.stage.out_bands))
    if k > 0:  # the stage alone, from ground-truth input bands: separates its error from the chain's
      alone = per_image(chain([bundle], list(bundle.stage.in_bands)), test,
                        jax.random.key(config.seed + 200 + k))[0]
      stage_preds[f"scdm_stage{k + 1}_from_truth"] = (alone, list(bundle.stage.out_bands))
  progress.close()
  wl = exp.wavelengths_nm  # without wavelengths there is no interpolation baseline
  preds.update(pixelwise(lambda tr, te: baselines.run_baselines(
      tr[..., rgb], tr, te[..., rgb], None if wl is None else wl[rgb], wl, alpha=config.eval.ridge_alpha),
      train_cube, test))
  for pred in preds.values():  # every method returns the observed RGB bands as given, as the pipeline does
    sampling.keep_observed(pred, test[..., rgb], rgb)
  return preds, stage_preds


def evaluate(config, workdir, exp=None):
  """Writes workdir/eval/{metrics.json, metrics_inferred_bands.json, metrics.md, *.png}; returns metrics."""
  t0 = time.perf_counter()
  out_dir = outputs.check_directory(os.path.join(workdir, "eval"), "eval output")  # before any work
  exp = exp or experiment.load_experiment(config)
  preds, stage_preds = predictions(config, workdir, exp)
  span = float(exp.normaliser.span)
  inferred = [b for b in range(exp.num_bands) if b not in exp.rgb_bands]
  all_bands = {m: score(p, exp.test, None, span) for m, p in preds.items()}
  inferred_bands = {m: score(p, exp.test, inferred, span) for m, p in preds.items()}
  for name, (pred, bands) in stage_preds.items():
    truth = exp.test[..., bands]
    all_bands[name] = score(pred, truth, None, span)
  seconds = time.perf_counter() - t0
  with outputs.staged_directory(out_dir) as staging:  # files replace earlier ones only when all are written
    with open(os.path.join(staging, "metrics.json"), "w", encoding="utf-8") as f:
      json.dump(all_bands, f, indent=1)
    with open(os.path.join(staging, "metrics_inferred_bands.json"), "w", encoding="utf-8") as f:
      json.dump(inferred_bands, f, indent=1)
    table = markdown_table(all_bands, inferred_bands, exp, config, seconds)
    with open(os.path.join(staging, "metrics.md"), "w", encoding="utf-8") as f:
      f.write(table)
    from spectral_diffusion import plots  # matplotlib only when figures are drawn
    # A stack of test patches is drawn side by side.
    plots.evaluation_figures(staging, dataclasses.replace(exp, test=patches.mosaic(exp.test)),
                             {m: patches.mosaic(p) for m, p in preds.items()})
  print(table)
  return all_bands


def markdown_table(all_bands, inferred_bands, exp, config, seconds):
  n = config.sample.num_samples
  lines = [f"# Evaluation: {exp.name}, {split_description(exp.test, config)}, {exp.num_bands} bands",
           "",
           f"Sampler: {config.sample.sampler} ({config.sample.num_steps} steps), "
           f"ICMG {tuple(config.sample.icmg_scale)}, PDT p_start {tuple(config.sample.pdt_p_start)} "
           f"on {config.sample.pdt_target}, {n} sample(s). "
           f"Evaluation took {seconds:.0f} s.",
           "Units: normalised (data_range 1); SAM in degrees; per-band PSNR capped at 100 dB. Every method "
           "returns the RGB input bands as given. W1: per-band Wasserstein-1 distance of the pixel-value "
           "distributions (lower is better); LV ratio: local variance around a 3x3 mean, predicted / true "
           "(1 = texture kept, < 1 = over-smoothed).", ""]
  for title, table, note in (("All bands", all_bands, ""),
                             ("Inferred bands only (RGB inputs excluded)", inferred_bands, "")):
    lines += [f"## {title}{note}", "",
              "| method | MPSNR (dB) | MSSIM | SAM (deg) | RMSE | RMSE (data units) | ERGAS | W1 | LV ratio |",
              "|---|---|---|---|---|---|---|---|---|"]
    for m, v in table.items():
      lines.append(f"| {m} | {v['mpsnr']:.2f} | {v['mssim']:.4f} | {v['sam_deg']:.2f} | {v['rmse']:.4f} | "
                   f"{v['rmse_data_units']:.1f} | {v['ergas']:.2f} | {v['w1']:.4f} | "
                   f"{v['local_var_ratio']:.3f} |")
    lines.append("")
  lines.append("Estimators: scdm is one sample of the cascade"
               + (f"; scdm_mean the mean of {n} samples (the posterior-mean estimate, the one error metrics "
                  f"should judge; single samples are for the distribution scores)" if n > 1 else "")
               + f"; scdm_one_step the cascade at one sampler step per stage, mean of {n} noise draw(s) (each "
               "stage's one-step estimate of E[x0 | input], chained).")
  lines.append("scdm_stageK rows score stage K's own output bands: chained from RGB, or (_from_truth) "
               "from ground-truth input bands.")
  return "\n".join(lines) + "\n"


