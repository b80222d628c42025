"""Figures people would rather look at than read: false colour, error maps, spectra, per-band PSNR."""
import os

import matplotlib.pyplot as plt  # the backend is the user's (matplotlib picks Agg where there is no display)
import numpy as np

from spectral_diffusion import metrics

SHOWN = ("scdm", "scdm_mean", "ridge_poly2", "ridge", "interp")


def false_colour(cube, bands, lo=None, hi=None):
  """(H, W, 3) image in [0, 1] from three bands, each stretched by its own 2-98 % percentiles
  (pass the reference's lo, hi to show other cubes on the same stretch)."""
  rgb = np.asarray(cube)[..., list(bands)].astype(np.float64)
  if lo is None:
    lo, hi = np.nanpercentile(rgb, 2, axis=(0, 1)), np.nanpercentile(rgb, 98, axis=(0, 1))  # nodata: NaN
  return np.clip((rgb - lo) / np.maximum(hi - lo, 1e-12), 0, 1), lo, hi


def error_heatmaps(path, truth, preds, names):
  """Per-pixel RMSE over bands for each method, on one colour scale."""
  errs = {m: np.sqrt(np.mean((preds[m] - truth) ** 2, axis=-1)) for m in names}
  vmax = max(float(np.percentile(e, 99)) for e in errs.values())
  fig, axes = plt.subplots(1, len(names), figsize=(2.8 * len(names), 3.8), squeeze=False)
  for ax, m in zip(axes[0], names):
    im = ax.imshow(errs[m], cmap="magma", vmin=0, vmax=vmax)
    ax.set_title(f"{m}\nmean {errs[m].mean():.4f}")
    ax.set_xticks([]), ax.set_yticks([])
  fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="RMSE over bands (normalised)")
  fig.savefig(path, dpi=110)
  plt.close(fig)


def evaluation_figures(out_dir, exp, preds):
  truth = exp.test
  names = [m for m in SHOWN if m in preds]
  x = exp.wavelengths_nm if exp.wavelengths_nm is not None else np.arange(exp.num_bands)
  xlabel = "wavelength (nm)" if exp.wavelengths_nm is not None else "band"
  order = np.argsort(x)

  # False colour (R, G, B = the input bands), truth and each method, one shared stretch.
  ref, lo, hi = false_colour(truth, exp.rgb_bands)
  # A second composite from three inferred bands spread over the spectrum shows what was not given.
  nir = [int(i) for i in np.linspace(0, exp.num_bands - 1, 5)[1:4]]
  ref_nir, lo2, hi2 = false_colour(truth, nir)
  fig, axes = plt.subplots(2, len(names) + 1, figsize=(2.6 * (len(names) + 1), 6.2), squeeze=False)
  for col, (title, cube) in enumerate([("truth", truth)] + [(m, preds[m]) for m in names]):
    axes[0, col].imshow(ref if col == 0 else false_colour(cube, exp.rgb_bands, lo, hi)[0])
    axes[1, col].imshow(ref_nir if col == 0 else false_colour(cube, nir, lo2, hi2)[0])
    axes[0, col].set_title(title)
  axes[0, 0].set_ylabel("input bands (RGB)")
  axes[1, 0].set_ylabel(f"inferred bands {nir}")
  for ax in axes.ravel():
    ax.set_xticks([]), ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "false_colour.png"), dpi=110)
  plt.close(fig)

  error_heatmaps(os.path.join(out_dir, "error_heatmap.png"), truth, preds, names)

  # Spectra at a few pixels spread over the test split (deterministic positions).
  h, w = truth.shape[:2]
  pixels = [(int(h * f), int(w * g)) for f, g in ((0.2, 0.3), (0.5, 0.7), (0.8, 0.2), (0.35, 0.85))]
  fig, axes = plt.subplots(1, len(pixels), figsize=(4.2 * len(pixels), 3.4), squeeze=False)
  for ax, (r, c) in zip(axes[0], pixels):
    ax.plot(x[order], truth[r, c, order], "k-", lw=2, label="truth")
    for m in names:
      ax.plot(x[order], preds[m][r, c, order], lw=1, label=m)
    ax.plot(x[list(exp.rgb_bands)], truth[r, c, list(exp.rgb_bands)], "ko", ms=5, label="input bands")
    ax.set_title(f"pixel (row {r}, col {c})")
    ax.set_xlabel(xlabel)
  axes[0, 0].set_ylabel("normalised value")
  axes[0, -1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "spectra.png"), dpi=110)
  plt.close(fig)

  # Per-band PSNR.
  fig, ax = plt.subplots(figsize=(8, 3.6))
  for m in names:
    ax.plot(x[order], metrics.psnr_per_band(preds[m], truth, 1.0)[order], lw=1, label=m)
  for b in exp.rgb_bands:
    ax.axvline(x[b], color="grey", ls=":", lw=1)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("PSNR (dB, capped at 100)")
  ax.set_title("per-band PSNR on the test split (dotted: input bands)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "per_band_psnr.png"), dpi=110)
  plt.close(fig)


REPAIR_SHOWN = ("anyband", "anyband_one_step", "ridge", "interp")


def repair_figures(out_dir, d, phys, shown):
  """For the hardest random-masking protocol and the first sensor protocol: spectra with the observed
  bands marked, NDVI maps (truth vs repaired) and per-pixel error heatmaps."""
  masked = [p for p in shown if p.startswith("missing_")]
  picks = ([max(masked, key=lambda p: int(p[8:-1]))] if masked else []) + \
      [p for p in shown if p.startswith("sensor_")][:1]
  x = np.asarray(d.wavelengths_nm)
  order = np.argsort(x)
  truth = d.test
  h, w = truth.shape[:2]
  pixels = [(int(h * f), int(w * g)) for f, g in ((0.2, 0.3), (0.5, 0.7), (0.8, 0.2), (0.35, 0.85))]
  for protocol in picks:
    preds, mask = shown[protocol]
    names = [m for m in REPAIR_SHOWN if m in preds]
    obs = np.flatnonzero(mask)
    fig, axes = plt.subplots(1, len(pixels), figsize=(4.2 * len(pixels), 3.4), squeeze=False)
    for ax, (r, c) in zip(axes[0], pixels):
      ax.plot(x[order], truth[r, c, order], "k-", lw=2, label="truth")
      for m in names:
        ax.plot(x[order], preds[m][r, c, order], lw=1, label=m)
      ax.plot(x[obs], preds[names[0]][r, c, obs], "ko", ms=4, mfc="none", label="observed")
      ax.set_title(f"pixel (row {r}, col {c})")
      ax.set_xlabel("wavelength (nm)")
    axes[0, 0].set_ylabel(f"normalised value ({protocol})")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{protocol}_spectra.png"), dpi=110)
    plt.close(fig)

    ndvi = {"truth": np.asarray(phys.indices(phys.reflectance(truth))[0])}
    ndvi.update({m: np.asarray(phys.indices(phys.reflectance(preds[m]))[0]) for m in names})
    fig, axes = plt.subplots(1, len(ndvi), figsize=(2.6 * len(ndvi), 4.2), squeeze=False)
    for ax, (m, v) in zip(axes[0], ndvi.items()):
      im = ax.imshow(v, cmap="RdYlGn", vmin=-0.2, vmax=1.0)
      cc = "" if m == "truth" else f"\nCC {np.corrcoef(v.ravel(), ndvi['truth'].ravel())[0, 1]:.3f}"
      ax.set_title(f"{m}{cc}")
      ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="NDVI")
    fig.savefig(os.path.join(out_dir, f"{protocol}_ndvi.png"), dpi=110)
    plt.close(fig)

    error_heatmaps(os.path.join(out_dir, f"{protocol}_error.png"), truth, preds, names)
