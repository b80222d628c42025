"""Quality against sampler steps: the trained SCDM cascade on the test split, per sampler and step count.

  python -m spectral_diffusion.tools.steps_sweep --config=configs/demo_indian_pines.py --workdir=runs/demo \\
      --steps=10,20,50,100

Runs DDIM and DPM-Solver++(2M) (or any few-step samplers: --samplers, --spacings) at each step count,
then ancestral DDPM over all T steps (the official recipe's sampler; --noddpm skips it): one sample of
the whole test split per setting, every setting from the same rng (evaluate's first sample, so a setting
equal to the config's matches the `scdm` row of eval/metrics.json) and with the config's ICMG and PDT.
Scored by evaluate.score (normalised units, data_range 1, SAM in degrees), with the RGB input bands put
back exactly as evaluate does for every method.
Writes OUTPUT_DIR (default WORKDIR/steps_sweep)/
{sweep.json, sweep.md, sweep.png}; the three files replace earlier ones only when the whole sweep is done
(until then sweep.partial.json holds the rows so far).
A sampler's first setting includes compiling its step (once per stage; later step counts reuse it).
"""
import json
import os
import sys
import time

import jax
import numpy as np

from spectral_diffusion import methods, samplers, sampling, training
from spectral_diffusion.data import outputs
from spectral_diffusion.scdm import cascade, evaluate, experiment
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.progress import Progress

FEW_STEP = tuple(name for name in samplers.SAMPLERS if name != "ddpm")  # defaults: DDIM and 2M
DEFAULT_FEW_STEP = ("ddim", "dpm_solver_pp")


def settings(few_step, steps, spacings, num_timesteps, ddpm=True):
  """[(sampler, num_steps, spacing)] in run order: the few-step samplers by step count, then DDPM-T.

  spacing applies to the DPM-Solver++ and UniPC samplers (None for ddim)."""
  for name in few_step:
    if name not in FEW_STEP:
      raise UserInputError(f"unknown sampler {name!r} in --samplers: use {', '.join(FEW_STEP)} (ddpm runs "
                           f"with --ddpm)")
  for sp in spacings:
    if sp not in samplers.SPACINGS:
      raise UserInputError(f"unknown spacing {sp!r} in --spacings: use {', '.join(samplers.SPACINGS)}")
  for n in steps:
    if not 1 <= n <= num_timesteps:
      raise UserInputError(f"--steps has {n}: each step count must be 1 to {num_timesteps} "
                           f"(diffusion.num_timesteps)")
  out = []
  for n in sorted(set(steps)):
    for name in few_step:
      for sp in (spacings if name != "ddim" else (None,)):
        out.append((name, n, sp))
  if ddpm:
    out.append(("ddpm", num_timesteps, None))
  if not out:
    raise UserInputError("nothing to run: give --steps and --samplers, or --ddpm")
  return out


def label(sampler, spacing):
  return f"{sampler} ({spacing})" if spacing else sampler


def network_evals(config, num_steps):
  """Network evaluations per tile over the cascade: steps x (2 with ICMG, whose passes share a call)."""
  return sum(num_steps * (2 if float(cascade.per_stage(config.sample.icmg_scale, k, "sample.icmg_scale"))
                          else 1) for k in range(config.cascade.num_stages))


class _Weighted:
  """Progress in network steps: run_cascade reports tile batches, each worth num_steps calls."""

  def __init__(self, progress, weight):
    self.progress, self.weight = progress, weight

  def update(self, n=1):
    self.progress.update(n * self.weight)


def run_sweep(config, workdir, plan, exp=None, partial_path=None):
  """Samples and scores the test split for each (sampler, num_steps, spacing) of plan; returns rows.

  With partial_path, the rows so far are saved there after each setting (a long DDPM run may be cut)."""
  exp = exp or experiment.load_experiment(config)
  bundles = evaluate.load_cascade(config, workdir, exp)
  schedule = training.make_schedule(config.diffusion)
  test, rgb = exp.test, list(exp.rgb_bands)
  span = float(exp.normaliser.span)
  inferred = [b for b in range(exp.num_bands) if b not in exp.rgb_bands]
  settings = sampling.SampleSettings.from_config(config.sample)
  batches = cascade.num_tile_batches(bundles, settings, *test.shape[:2])
  progress = Progress(batches * sum(n for _, n, _ in plan), "steps sweep (network steps)")
  official = 2 * schedule.num_timesteps * len(bundles)  # 1000-step DDPM, cond and uncond calls
  rows = []
  for name, n, spacing in plan:
    sample_cfg = settings.replace(sampler=name, num_steps=n, spacing=spacing or settings.spacing)
    progress.postfix = f"{label(name, spacing)} {n}"
    t0 = time.perf_counter()
    pred = cascade.run_cascade(bundles, schedule, test[..., rgb], jax.random.key(config.seed + 100),
                               sample_cfg, _Weighted(progress, n))[-1]
    seconds = time.perf_counter() - t0
    pred = sampling.keep_observed(np.array(pred), test[..., rgb], rgb)  # RGB bands as given, as evaluate
    evals = network_evals(config, n)
    rows.append(dict(sampler=name, spacing=spacing, label=label(name, spacing), num_steps=n,
                     network_evals_per_tile=evals, cheaper_than_official=official / evals,
                     seconds=seconds, all_bands=evaluate.score(pred, test, None, span),
                     inferred_bands=evaluate.score(pred, test, inferred, span)))
    if partial_path:
      _write_text(partial_path, json.dumps(rows, indent=1))
  progress.close()
  return rows


def best_within(rows, tolerance_db):
  """The row with the fewest network evaluations whose MPSNR is within tolerance_db of DDPM's (or None)."""
  ref = next((r for r in rows if r["sampler"] == "ddpm"), None)
  if ref is None:
    return None
  ok = [r for r in rows if r["sampler"] != "ddpm" and
        r["all_bands"]["mpsnr"] >= ref["all_bands"]["mpsnr"] - tolerance_db]
  return min(ok, key=lambda r: (r["network_evals_per_tile"], -r["all_bands"]["mpsnr"]), default=None)


def markdown(rows, exp, config, tolerance_db):
  ref = next((r for r in rows if r["sampler"] == "ddpm"), None)
  lines = [f"# Quality against sampler steps: {exp.name}, test split columns {tuple(config.data.test_cols)}, "
           f"{exp.test.shape[0]}x{exp.test.shape[1]} pixels, {exp.num_bands} bands",
           "",
           f"One sample per setting, all from the same rng; ICMG {tuple(config.sample.icmg_scale)}, PDT p_start "
           f"{tuple(config.sample.pdt_p_start)} on {config.sample.pdt_target}. Units: normalised "
           f"(data_range 1), SAM in degrees. Network evaluations per tile summed over the "
           f"{config.cascade.num_stages} stages (ICMG counts 2); 'x cheaper' is against the official recipe "
           f"(ancestral DDPM, T steps, 2 calls each). A sampler's first row includes compiling its step.",
           "",
           "| sampler | steps | network evals | x cheaper | MPSNR (dB) | vs DDPM (dB) | SAM (deg) | "
           "MPSNR inferred bands | SAM inferred | wall (s) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    a, i = r["all_bands"], r["inferred_bands"]
    delta = f"{a['mpsnr'] - ref['all_bands']['mpsnr']:+.2f}" if ref else "-"
    lines.append(f"| {r['label']} | {r['num_steps']} | {r['network_evals_per_tile']} | "
                 f"{r['cheaper_than_official']:.0f} | {a['mpsnr']:.2f} | {delta} | {a['sam_deg']:.2f} | "
                 f"{i['mpsnr']:.2f} | {i['sam_deg']:.2f} | {r['seconds']:.0f} |")
  best = best_within(rows, tolerance_db)
  if ref is not None:
    lines += ["", (f"Fewest network evaluations within {tolerance_db} dB MPSNR of DDPM-{ref['num_steps']}: "
                   f"{best['label']} at {best['num_steps']} steps ({best['all_bands']['mpsnr']:.2f} dB, "
                   f"{best['cheaper_than_official']:.0f}x cheaper than the official recipe)." if best else
                   f"No few-step setting is within {tolerance_db} dB MPSNR of DDPM-{ref['num_steps']}.")]
  return "\n".join(lines) + "\n"


def plot(path, rows):
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  ref = next((r for r in rows if r["sampler"] == "ddpm"), None)
  for ax, key, ylabel in ((axes[0], "mpsnr", "MPSNR (dB)"), (axes[1], "sam_deg", "SAM (deg)")):
    for lab in dict.fromkeys(r["label"] for r in rows if r["sampler"] != "ddpm"):
      pts = sorted((r["num_steps"], r["all_bands"][key]) for r in rows if r["label"] == lab)
      ax.plot(*zip(*pts), marker="o", label=lab)
    if ref is not None:
      ax.axhline(ref["all_bands"][key], color="k", ls="--", lw=1, label=f"ddpm {ref['num_steps']} steps")
      ax.plot([ref["num_steps"]], [ref["all_bands"][key]], "ks")
    ax.set_xscale("log")
    ax.set_xlabel("sampler steps (network calls per stage)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(out_dir, rows, exp, config, tolerance_db):
  """sweep.json, sweep.md and sweep.png, each written beside its target and then moved over it."""
  os.makedirs(out_dir, exist_ok=True)
  best = best_within(rows, tolerance_db)
  doc = dict(dataset=exp.name, test_cols=list(config.data.test_cols), tolerance_db=tolerance_db,
             best_within_tolerance=best and {k: best[k] for k in ("sampler", "spacing", "num_steps")},
             rows=rows)
  table = markdown(rows, exp, config, tolerance_db)
  with outputs.Staged() as staged:
    _write_text(staged.path(os.path.join(out_dir, "sweep.json")), json.dumps(doc, indent=1))
    _write_text(staged.path(os.path.join(out_dir, "sweep.md")), table)
    plot(staged.path(os.path.join(out_dir, "sweep.png")), rows)
  return table


def _write_text(path, text):
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def sweep(config, workdir, steps, few_step=DEFAULT_FEW_STEP, spacings=None, ddpm=True, out_dir=None,
          tolerance_db=0.3):
  """The whole tool: run, score, write; returns the rows."""
  if methods.get(config).name != "scdm":  # every setting checked once, as the command line does
    raise UserInputError("the steps sweep evaluates an SCDM cascade (method=scdm); AnyBand's evaluator is "
                         "--mode=eval")
  plan = settings(few_step, steps, spacings or (config.sample.spacing,), config.diffusion.num_timesteps, ddpm)
  out_dir = outputs.check_directory(out_dir or os.path.join(workdir, "steps_sweep"), "--output_dir")
  exp = experiment.load_experiment(config)
  os.makedirs(out_dir, exist_ok=True)
  partial = os.path.join(out_dir, "sweep.partial.json")
  rows = run_sweep(config, workdir, plan, exp, partial)
  print(write(out_dir, rows, exp, config, tolerance_db))
  os.remove(partial)
  return rows


def main(argv=None):
  from absl import flags
  from ml_collections import config_flags

  from spectral_diffusion.main import _one_line, parse
  argv = sys.argv if argv is None else argv
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)", flag_values=fv,
                                  sys_argv=argv)
  flags.DEFINE_string("workdir", None, "the trained cascade's workdir", flag_values=fv)
  flags.DEFINE_list("steps", ["10", "20", "50", "100"], "step counts of the few-step samplers", flag_values=fv)
  flags.DEFINE_list("samplers", list(DEFAULT_FEW_STEP), "few-step samplers to run at each step count: "
                    f"{', '.join(FEW_STEP)}", flag_values=fv)
  flags.DEFINE_list("spacings", None, "timesteps of the samplers other than ddim, one line each (default: "
                    "sample.spacing)",
                    flag_values=fv)
  flags.DEFINE_bool("ddpm", True, "also run ancestral DDPM over all T steps (the reference)", flag_values=fv)
  flags.DEFINE_float("tolerance_db", 0.3, "report the cheapest setting within this MPSNR of DDPM",
                     flag_values=fv)
  flags.DEFINE_string("output_dir", None, "default: WORKDIR/steps_sweep", flag_values=fv)
  problem = parse(fv, argv)  # missing or broken config file, unknown override key, bad flag value
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  try:
    if fv.config is None or fv.workdir is None:
      raise flags.Error("give --config=configs/X.py and --workdir=DIR (a trained cascade)")
    steps = [int(s) for s in fv.steps]
  except (flags.Error, ValueError) as e:
    print(f"error: {_one_line(e)} (see --helpfull)", file=sys.stderr)
    return 2
  try:
    sweep(fv.config, fv.workdir, steps, tuple(fv.samplers), fv.spacings and tuple(fv.spacings), fv.ddpm,
          fv.output_dir, fv.tolerance_db)
  except UserInputError as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
