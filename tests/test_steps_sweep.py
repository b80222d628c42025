"""The steps sweep on the tiny trained cascade: its rows are evaluate's scores for the same sampler and rng."""
import json
import os

from conftest import raises_one_line
from spectral_diffusion.tools import steps_sweep
from test_cli import overrides

DEMO = "configs/demo_indian_pines.py"


def flags(config):
  """The fixture's cascade and sampling settings as --config.* overrides (PDT too: the demo has none)."""
  return [*overrides(config), f"--config.sample.pdt_p_start={tuple(config.sample.pdt_p_start)}"]


def test_sweep_matches_evaluate_and_writes_table_and_plot(trained, tmp_path, capsys):
  config, workdir = trained
  out = tmp_path / "sweep"
  # The fixture evaluated with DDIM at sample.num_steps: the sweep's DDIM row at that count, from the same
  # rng, is the same sample, so it must score exactly as eval/metrics.json's `scdm` row.
  n = config.sample.num_steps
  assert n == 2  # DPM-Solver++ with 2 calls is all first order, i.e. DDIM (checked below)
  code = steps_sweep.main(["steps_sweep", f"--config={DEMO}", *flags(config), f"--workdir={workdir}",
                           f"--steps={n},{n + 1}", "--samplers=ddim,dpm_solver_pp",
                           "--spacings=logsnr", "--noddpm", f"--output_dir={out}"])
  assert code == 0, capsys.readouterr().err
  doc = json.loads((out / "sweep.json").read_text())
  rows = {(r["sampler"], r["spacing"], r["num_steps"]): r for r in doc["rows"]}
  assert set(rows) == {(s, sp, k) for k in (n, n + 1) for s, sp in (("ddim", None), ("dpm_solver_pp", "logsnr"))}
  evaluated = json.loads((workdir / "eval" / "metrics.json").read_text())["scdm"]
  for key in ("mpsnr", "sam_deg", "rmse"):
    assert abs(rows[("ddim", None, n)]["all_bands"][key] - evaluated[key]) < 1e-6, key
  # ICMG in stage 2 (scale 1.5) counts two network passes per step there.
  assert rows[("ddim", None, n)]["network_evals_per_tile"] == n + 2 * n
  # With 2 calls DPM-Solver++ takes only first-order steps, which are DDIM's; with 3 it differs.
  same = lambda a, b: all(abs(a[k] - b[k]) <= 1e-6 * abs(b[k]) for k in b)
  assert same(rows[("dpm_solver_pp", "logsnr", n)]["all_bands"], rows[("ddim", None, n)]["all_bands"])
  assert not same(rows[("dpm_solver_pp", "logsnr", n + 1)]["all_bands"], rows[("ddim", None, n + 1)]["all_bands"])
  table = (out / "sweep.md").read_text()
  assert table.count("| dpm_solver_pp (logsnr) |") == 2 and "| ddim |" in table
  assert (out / "sweep.png").stat().st_size > 0
  assert sorted(os.listdir(out)) == ["sweep.json", "sweep.md", "sweep.png"]


def test_best_within_tolerance_picks_the_cheapest_close_setting():
  def row(sampler, steps, mpsnr):
    return dict(sampler=sampler, spacing=None, label=sampler, num_steps=steps, network_evals_per_tile=steps,
                all_bands=dict(mpsnr=mpsnr))

  rows = [row("ddim", 10, 30.0), row("dpm_solver_pp", 10, 31.8), row("dpm_solver_pp", 20, 31.95),
          row("ddim", 50, 31.9), row("ddpm", 1000, 32.0)]
  assert steps_sweep.best_within(rows, 0.3) is rows[1]
  assert steps_sweep.best_within(rows, 0.1) is rows[2]
  assert steps_sweep.best_within(rows, 0.01) is None
  assert steps_sweep.best_within(rows[:-1], 0.3) is None  # no DDPM reference


def test_bad_settings_are_one_line_errors_and_keep_earlier_output(trained, tmp_path, capsys):
  config, workdir = trained
  for kw, match in ((dict(few_step=("euler",)), "euler"), (dict(spacings=("cosine",)), "karras"),
                    (dict(steps=(0,)), "1 to 1000")):
    args = dict(few_step=("ddim",), steps=(2,), spacings=("logsnr",), num_timesteps=1000) | kw
    raises_one_line(steps_sweep.settings, args.pop("few_step"), args.pop("steps"), args.pop("spacings"),
                    **args, match=match)
  out = tmp_path / "sweep"
  out.mkdir()
  (out / "sweep.md").write_text("earlier")
  code = steps_sweep.main(["steps_sweep", f"--config={DEMO}", *flags(config), f"--workdir={tmp_path}/none",
                           "--steps=2", f"--output_dir={out}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "checkpoint" in err[0]
  assert (out / "sweep.md").read_text() == "earlier"
