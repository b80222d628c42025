"""The benchmark: FLOP counts against closed forms, internal consistency of its figures (no timing
assertions), the CLI with sharding, and the memory / bfloat16 options it measures (remat, bf16)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import anyband_demo_indian_pines, demo_indian_pines
from conftest import raises_one_line, shrink
from spectral_diffusion import samplers, schedules
from spectral_diffusion.scdm import experiment
from spectral_diffusion.scdm.method import stage_parameter_count
from spectral_diffusion.tools.benchmark import attainable, cli, figures, memory, report, stages, timing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A one-stage cascade of a one-level U-Net: every section of the benchmark in seconds, no data needed.
TINY_CONFIG = """
from configs import demo_indian_pines


def get_config():
  c = demo_indian_pines.get_config()
  c.data.num_bands = 12
  c.data.rgb_bands = (9, 5, 1)
  c.cascade.num_stages = 1
  c.model.base_channels = 8
  c.model.channel_mults = (1,)
  c.model.num_res_blocks = 1
  c.model.attn_levels = ()
  c.model.num_groups = 4
  c.model.time_embed_dim = 16
  c.diffusion.num_timesteps = 4
  c.sample.batch_size = 2
  return c
"""


def tiny_config(tmp_path):
  path = tmp_path / "tiny_bench.py"
  path.write_text(TINY_CONFIG)
  scope = {}
  exec(compile(TINY_CONFIG, str(path), "exec"), scope)  # the same config the CLI test loads from the file
  return scope["get_config"](), path


def tiny_options(**kw):
  # Steps = probe steps = T: one compiled step per sampler; batch sizes = the call's batch: no recompiling.
  opts = dict(size=8, batch=2, batch_sizes=[2], repeats=1, ddim_steps=4, fast_steps=4, probe_steps=4,
              bf16_ddim_steps=4, max_sample_seconds=1e9, matmul_size=64, devices=1,
              sections=["convs", "layers", "samplers", "throughput"], stages=[], workdir=None, memory=False,
              solvers=list(cli.FAST_SOLVERS), loops=["python", "scan"])
  opts.update(kw)
  return opts


@pytest.mark.parametrize("lhs,rhs,strides,padding,expected", [
    ((2, 64, 64, 32), (3, 3, 32, 32), (1, 1), ((1, 1), (1, 1)), 2 * 2 * 32 * 32 * 190 * 190),
    ((1, 16, 16, 8), (3, 3, 8, 4), (2, 2), ((1, 1), (1, 1)), 2 * 1 * 4 * 8 * 23 * 23),
    ((3, 10, 6, 5), (1, 1, 5, 7), (1, 1), ((0, 0), (0, 0)), 2 * 3 * 7 * 5 * 10 * 6),
])
def test_conv_flops_closed_form_matches_xla_cost_analysis(lhs, rhs, strides, padding, expected):
  # 190 = 3 * 64 - 2: at each border one of the three taps falls on padding and XLA does not count it;
  # stride 2 over 16 with pad (1, 1): 8 outputs, 24 taps, 1 on padding -> 23.
  dn = jax.lax.conv_dimension_numbers(lhs, rhs, ("NHWC", "HWIO", "NHWC"))
  assert attainable.conv_flops(lhs, rhs, strides, padding, dn) == expected
  conv = lambda a, b: jax.lax.conv_general_dilated(a, b, strides, padding, dimension_numbers=dn)
  compiled = jax.jit(conv).lower(jnp.zeros(lhs), jnp.zeros(rhs)).compile()
  assert timing.flops_of(compiled) == expected


def test_time_sampler_measured_or_estimated_and_labelled():
  schedule = schedules.linear(20)
  eps_fn = jax.tree_util.Partial(lambda x, t: 0.1 * x)
  runner = lambda steps: (lambda: samplers.ddim(eps_fn, schedule, (1, 4, 4, 2), jax.random.key(0),
                                                num_steps=steps))
  est = figures.time_sampler("test", runner, 20, call_seconds=1e-3, budget_s=0.0, probe_steps=2)
  assert est["estimated"] and est["probe_steps"] == 2
  assert est["seconds"] == pytest.approx(20 * est["probe_seconds"] / 2)
  assert est["overhead"] == pytest.approx(est["seconds"] / (20 * 1e-3))
  full = figures.time_sampler("test", runner, 20, call_seconds=1e-3, budget_s=1e9, probe_steps=2)
  assert not full["estimated"] and full["overhead"] == pytest.approx(full["seconds"] / (20 * 1e-3))


def run_via_json(tmp_path, **options):
  config, _ = tiny_config(tmp_path)
  out = tmp_path / "bench.json"
  report.write_json(report.run(config, tiny_options(**options)), str(out))
  return config, json.loads(out.read_text())   # the tests check what the JSON says


def test_benchmark_figures_are_consistent(tmp_path):
  config, res = run_via_json(tmp_path)
  assert res["machine"]["backend"] == jax.default_backend() and res["machine"]["cpu_cores"] >= 1
  mm = res["attainable_matmul"]
  assert mm["flops"] == pytest.approx(mm["flops_closed_form"], rel=1e-3)
  (s,) = res["stages"]
  stage = experiment.plan_from_config(config)[0]
  assert s["parameters"] == stage_parameter_count(config, stage, s["cond_bands"])
  assert (s["out_bands"], s["cond_bands"]) == (12, 3 + 12)   # ridge prior: inputs + prior prediction
  f = s["forward"]
  assert f["gflop_per_s"] == pytest.approx(f["flops"] / f["seconds"] / 1e9)
  assert f["seconds"] == pytest.approx(float(np.median(f["times"])))
  d = s["dominant_conv"]
  assert d["probe_flops"] == d["probe_flops_closed_form"]
  assert s["vs_conv_probe"] == pytest.approx(f["gflop_per_s"] / d["probe_gflop_per_s"])
  assert s["vs_matmul"] == pytest.approx(f["gflop_per_s"] / mm["gflop_per_s"])
  assert 0 < d["share_of_flops"] <= s["conv_share_of_flops"] <= 1.0
  c = s["convs_alone"]
  # 2 stems + encoder block (2 convs) + 2 middle blocks (2 each) + 2 decoder blocks (2 convs and a 1x1
  # shortcut each, since their input is the concatenation [h, skip_x, skip_cond]) + the output conv.
  assert sum(r["calls"] for r in c["shapes"]) == 2 + 2 + 4 + 6 + 1
  assert c["flops"] == pytest.approx(s["conv_share_of_flops"] * f["flops"])
  assert c["seconds"] == pytest.approx(sum(r["calls"] * r["seconds"] for r in c["shapes"]))
  assert s["vs_convs_alone"] == pytest.approx(f["gflop_per_s"] / c["gflop_per_s"])
  rows = {r["kind"]: r for r in s["layers"]}
  # The same 15 convs by kind; GroupNorm: 2 per res block (1 encoder, 2 middle, 2 decoder), the middle
  # attention block's and out_norm.
  assert rows["conv 3x3"]["calls"] == 13 and rows["conv 1x1"]["calls"] == 2
  assert rows["GroupNorm"]["calls"] == 12
  assert sum(r["seconds"] for r in s["layers"]) == pytest.approx(f["seconds"])
  assert sum(r["share"] for r in s["layers"]) == pytest.approx(1.0)
  sam = s["samplers"]
  assert [(r["sampler"], r["loop"], r["steps"]) for r in sam] == [
      (name, loop, 4) for name in ("ddpm", "ddim") + cli.FAST_SOLVERS for loop in ("python", "scan")]
  for r in sam:
    assert not r["estimated"]
    assert r["overhead"] == pytest.approx(r["seconds"] / (r["steps"] * r["call_seconds"]))
  for r in s["throughput"]:
    assert r["images_per_s"] == pytest.approx(r["batch"] / r["seconds"])
  assert res["peak_rss_bytes"] > 0
  text = report.format_report(res)
  assert "stage 1: 3 -> 12 bands" in text and "% of the conv probe" in text and "ddim-4" in text


def test_benchmark_guidance_and_bfloat16_figures(tmp_path):
  _, res = run_via_json(tmp_path, sections=["guidance", "bf16"])
  (s,) = res["stages"]
  f = s["forward"]
  g = s["guidance"]
  assert g["icmg"]["flops_ratio"] == pytest.approx(2.0, rel=0.05)   # one call of twice the batch
  assert g["physics"]["flops_ratio"] > 1.5                          # a backward pass through the network
  assert g["icmg"]["time_ratio"] == pytest.approx(g["icmg"]["seconds"] / g["icmg"]["unguided_seconds"])
  b = s["bfloat16"]
  assert b["parameters_float32"] and b["speedup_vs_float32"] == pytest.approx(f["seconds"] / b["seconds"])
  # bfloat16 keeps 8 mantissa bits (relative rounding 2^-9 per op); through the network ~1 %.
  assert 0 < b["output"]["relative_mean"] < 0.05
  assert b["output"]["max_abs"] >= b["output"]["mean_abs"]
  assert "guidance icmg" in report.format_report(res)


def test_cli_sharded_over_two_devices_writes_json(tmp_path):
  _, path = tiny_config(tmp_path)
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, "-m", "spectral_diffusion.tools.benchmark", f"--config={path}", "--size=8", "--repeats=1",
       "--devices=2", "--sections=sharded", "--ddim_steps=2", "--probe_steps=2", "--matmul_size=64",
       f"--json={out}"], cwd=REPO, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  res = json.loads(out.read_text())
  assert res["machine"]["device_count"] == 2 and res["config"] == str(path)
  sh = res["stages"][0]["sharded"]
  assert sh["devices"] == 2 and sh["batch"] == 2
  assert sh["speedup"] == pytest.approx(sh["one_device"]["seconds"] / sh["sharded"]["seconds"])
  # Each device holds whole samples, both encoder streams included: no data moves between devices.
  assert sh["sharded"]["collectives"] == {}
  assert "sharded over 2 devices" in proc.stdout and "[benchmark" in proc.stderr


def test_bad_input_is_one_line(tmp_path):
  config, _ = tiny_config(tmp_path)
  config.data.num_bands = 0
  raises_one_line(report.run, config, tiny_options(), match="num_bands")
  config.data.num_bands = 12
  config.model.channel_mults = (1, 2)
  raises_one_line(report.run, config, tiny_options(size=5), match="multiple of the model's minimum size 2")
  jnp.zeros(())   # the backend has started in this process: too late for more CPU devices
  raises_one_line(cli.set_cpu_devices, 3, match="fresh process")


def _count_remat(jaxpr):
  n = 0
  for eqn in jaxpr.eqns:
    n += eqn.primitive.name in ("checkpoint", "remat", "remat2")
    for v in eqn.params.values():
      n += sum(_count_remat(j) for j in attainable._sub_jaxprs(v))
  return n


@pytest.mark.parametrize("make_config", [demo_indian_pines.get_config, anyband_demo_indian_pines.get_config])
def test_remat_wraps_every_res_block(make_config):
  config = shrink(make_config(), "unused")
  config.model.channel_mults, config.model.num_res_blocks, config.model.attn_levels = (1, 2), 1, ()
  config.data.num_bands = 12
  if config.method == "scdm":   # the band plan is SCDM's own section
    config.data.rgb_bands, config.cascade.num_stages = (9, 5, 1), 1
  stage = stages.plan_stages(config)[0]
  inputs = {k: jnp.asarray(v) for k, v in stage.random_inputs(1, 8, seed=0).items()}
  args = [inputs[k] for k in ("x", "t", "cond", "mask") if k in inputs]
  counts = []
  for remat in (False, True):
    model = stages.build(config, stage, remat=remat)
    params = stages.random_params(model, stage, seed=0)
    loss = lambda p: jnp.sum(model.apply({"params": p}, *args, train=True) ** 2)
    counts.append(_count_remat(jax.make_jaxpr(loss)(params).jaxpr))
    jax.make_jaxpr(jax.grad(loss))(params)   # the backward pass traces (train is static under remat)
  # 2 levels x 1 encoder block + 2 middle blocks + 2 levels x 2 decoder blocks; jax.checkpoint keeps the
  # values by construction, so the structure is what needs checking.
  assert counts == [0, 2 + 2 + 4]


def test_anyband_bfloat16_close_to_float32():
  config = anyband_demo_indian_pines.get_config()
  config.model.base_channels, config.model.channel_mults, config.model.context_dim = 16, (1, 2), 32
  config.data.num_bands = 20
  stage = stages.plan_stages(config)[0]
  params = jax.device_put(stages.random_params(stages.build(config, stage), stage, seed=1))
  ins = {k: jnp.asarray(v) for k, v in stage.random_inputs(2, 8, seed=0).items()}
  args = (ins["x"], ins["t"], ins["cond"], ins["mask"])
  out32, out16 = (jax.jit(stages.build(config, stage, dtype=d).apply)({"params": params}, *args)
                  for d in ("float32", "bfloat16"))
  assert out16.dtype == jnp.float32 and float(jnp.mean(jnp.abs(out32))) > 0.1  # random output conv: not 0
  rel = float(jnp.mean(jnp.abs(out16 - out32)) / jnp.mean(jnp.abs(out32)))
  assert rel < 0.05


def test_memory_case_reports_peak_and_xla_plan(tmp_path):
  config, _ = tiny_config(tmp_path)
  # The sampling case; the training cases (a train step compiles for ~20 s even for this model) run in
  # --memory.
  rec = memory.memory_case(config, "sample", 8)
  assert rec["icmg_scale"] == 0.0 and rec["size"] == 8 and rec["stage"] == "stage 1: 3 -> 12 bands"
  assert rec["memory_scheduler"] == (memory.CPU_MEMORY_SCHEDULER in os.environ.get("XLA_FLAGS", ""))
  assert rec["peak_rss_bytes"] >= rec["baseline_rss_bytes"] > 0
  assert set(rec["xla_bytes"]) == {"argument", "output", "temp"} and rec["flops"] > 0
  raises_one_line(memory.memory_case, config, "nope", 8, match="train_remat")


def test_sampling_programs_on_a_trained_run(trained):
  from spectral_diffusion.tools.benchmark import figures
  config, workdir = trained
  out = figures.sampling_programs(config, str(workdir), repeats=1)
  assert out["image_shape"] == [40, 20, 200]
  # 40 x 20 in 16-pixel tiles (overlap 4) is 3 x 2 tiles: 2 batches of 4, per stage on the host driver.
  assert out["compiled"]["tile_batches"] == 2 and out["compiled"]["jitted_calls_per_image"] == 2
  assert out["python"]["tile_batches"] == 4 and out["python"]["jitted_calls_per_image"] == 4 * (2 + 1)
  assert out["compiled_over_python"] == out["compiled"]["seconds"] / out["python"]["seconds"] > 0
