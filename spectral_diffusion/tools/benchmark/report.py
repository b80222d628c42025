"""The whole run: every figure of every stage as one JSON-ready dict, the table printed from it and the
JSON file written from it."""
import json

import numpy as np

from spectral_diffusion.data import outputs
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.tools.benchmark.attainable import matmul_probe
from spectral_diffusion.tools.benchmark.figures import bench_stage, bf16_real_data, sampling_programs
from spectral_diffusion.tools.benchmark.machine import device_peak_bytes, machine_info, machine_label, peak_rss_bytes
from spectral_diffusion.tools.benchmark.memory import memory_section
from spectral_diffusion.tools.benchmark.stages import build, check_size, plan_stages
from spectral_diffusion.tools.benchmark.timing import log


def run(config, opts, config_argv=()):
  """Every figure for every stage (and --memory, --workdir); returns the JSON-ready dict."""
  stages = plan_stages(config)
  method = stages[0].method   # a config's stages are all of its one method
  if opts["stages"]:
    bad = [k for k in opts["stages"] if not 0 <= k < len(stages)]
    if bad:
      raise UserInputError(f"--stages {bad} out of range: the config has stages 0..{len(stages) - 1}")
    stages = [stages[k] for k in opts["stages"]]
  for s in stages:
    check_size(build(config, s), opts["size"])
  machine = machine_info()
  log(f"machine: {machine_label(machine)}")
  result = {"machine": machine, "config": opts.get("config_path"), "method": method,
            "options": {k: v for k, v in opts.items() if k != "config_path"}}
  attainable = {"matmul": matmul_probe(opts["matmul_size"], opts["repeats"]), "conv": {}}
  result["attainable_matmul"] = attainable["matmul"]
  result["stages"] = [bench_stage(config, s, opts, attainable) for s in stages]
  if opts.get("workdir"):
    result["bfloat16_real_data"] = bf16_real_data(config, opts["workdir"])
    result["sampling_programs"] = sampling_programs(config, opts["workdir"])
  if opts.get("memory"):
    result["memory"] = memory_section(config_argv, opts)
  result["peak_rss_bytes"] = peak_rss_bytes()
  result["device_peak_bytes"] = device_peak_bytes()
  return result


def _f(v, spec=".3g"):
  return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def _gib(b):
  return f"{b / 2 ** 30:.2f} GiB"


def format_report(res):
  """The human-readable table."""
  m, o = res["machine"], res["options"]
  lines = [f"Machine: {machine_label(m)}",
           f"Config: {res['config']} ({res['method']}), {o['size']}x{o['size']}, batch {o['batch']}, "
           f"median of {o['repeats']} calls after a warm-up; float32 unless stated",
           f"Attainable through XLA: matmul {res['attainable_matmul']['n']}^3 float32 "
           f"{res['attainable_matmul']['gflop_per_s']:.1f} GFLOP/s"]
  for s in res["stages"]:
    f, d = s["forward"], s["dominant_conv"]
    lines += ["", f"{s['name']}: {s['parameters']:,} parameters, condition {s['cond_bands']} bands",
              f"  network call   {f['seconds'] * 1e3:10.1f} ms  compile {f['compile_seconds']:.1f} s  "
              f"{f['flops'] / 1e9:.2f} GFLOP  {f['gflop_per_s']:.1f} GFLOP/s",
              f"  dominant conv  input {tuple(d['input_shape'])} kernel {tuple(d['kernel_shape'])}, "
              f"{d['calls']} calls, {100 * d['share_of_flops']:.0f} % of FLOPs (all convs "
              f"{100 * s['conv_share_of_flops']:.0f} %); alone {d['probe_gflop_per_s']:.1f} GFLOP/s",
              f"  achieved / attainable: {100 * s['vs_conv_probe']:.0f} % of the conv probe, "
              f"{100 * s['vs_matmul']:.0f} % of the matmul probe"]
    if "convs_alone" in s:
      c = s["convs_alone"]
      lines.append(f"  convs alone    {len(c['shapes'])} shapes timed one by one: {c['seconds'] * 1e3:.1f} ms, "
                   f"{c['gflop_per_s']:.1f} GFLOP/s; the network reaches {100 * s['vs_convs_alone']:.0f} % of "
                   f"that rate, its convs alone take {100 * s['convs_alone_share_of_time']:.0f} % of its time")
    if "layers" in s:
      lines.append("  by layer kind  (calls x time alone; the rest is the call minus their sum)")
      for r in s["layers"]:
        calls = f"{r['calls']:4d} calls" if r["calls"] is not None else " " * 10
        lines.append(f"    {r['kind']:58s} {calls} {r['seconds'] * 1e3:9.1f} ms {100 * r['share']:6.1f} %")
    for r in s.get("samplers", []):
      lines.append(f"  {r['sampler'] + '-' + str(r['steps']):22s} {r['seconds']:10.2f} s  "
                   f"{'estimated' if r['estimated'] else 'measured '}  overhead {r['overhead']:.3f}  "
                   f"(step {r['step_seconds'] * 1e3:.1f} ms, loop {r['loop']})")
    for name, g in s.get("guidance", {}).items():
      if "skipped" in g:
        lines.append(f"  {name}: skipped ({g['skipped']})")
      else:
        extra = f", FLOPs x{g['flops_ratio']:.2f}" if "flops_ratio" in g else f" ({g['via']})"
        lines.append(f"  guidance {name:8s} time x{g['time_ratio']:.2f} per call vs unguided{extra}")
    if "throughput" in s:
      lines.append("  images/s       " + ", ".join(
          f"batch {r['batch']}: {r['images_per_s']:.3g}{' (est.)' if r['estimated'] else ''}"
          for r in s["throughput"]))
    if "bfloat16" in s:
      b = s["bfloat16"]
      lines.append(f"  bfloat16       {b['seconds'] * 1e3:10.1f} ms  x{b['speedup_vs_float32']:.2f} float32 speed; "
                   f"output |diff| mean {_f(b['output']['relative_mean'])} of mean |out| "
                   f"(max {_f(b['output']['max_abs'])}); DDIM-{b['ddim_steps']} sample |diff| mean "
                   f"{_f(b['ddim_sample']['relative_mean'])} relative")
    if "sharded" in s:
      sh = s["sharded"]
      lines.append(f"  sharded over {sh['devices']} devices, batch {sh['batch']}: "
                   f"{sh['sharded']['images_per_s']:.3g} images/s vs {sh['one_device']['images_per_s']:.3g} on one "
                   f"(x{sh['speedup']:.2f}); DDIM step {sh['sharded']['ddim']['step_seconds'] * 1e3:.1f} ms vs "
                   f"{sh['one_device']['ddim']['step_seconds'] * 1e3:.1f} ms, overhead "
                   f"{sh['sharded']['ddim']['overhead']:.3f}; collectives per call "
                   f"{sh['sharded']['collectives'] or 'none'}")
  if "bfloat16_real_data" in res:
    r = res["bfloat16_real_data"]
    lines += ["", f"bfloat16 on real data ({r['workdir']}, test {tuple(r['test_shape'])}, {r['sampler']}): "
              f"MPSNR {r['float32_mpsnr']:.2f} dB float32, {r['bfloat16_mpsnr']:.2f} dB bfloat16 "
              f"({r['mpsnr_difference_db']:+.2f} dB); bfloat16 vs float32 {r['bfloat16_vs_float32_mpsnr']:.1f} dB; "
              f"sampling {r['float32_seconds']:.1f} s vs {r['bfloat16_seconds']:.1f} s"]
  if "sampling_programs" in res:
    r = res["sampling_programs"]
    lines += ["", f"sampling programs on real data ({r['workdir']}, {tuple(r['image_shape'])}): " + "; ".join(
        f"{p} {r[p]['seconds']:.1f} s (first call {r[p]['first_seconds']:.1f} s), "
        f"{r[p]['jitted_calls_per_image']} jitted calls per image" for p in ("python", "compiled"))
        + f"; compiled / python {r['compiled_over_python']:.2f}"]
  for r in res.get("memory", []):
    case = r["case"] + (" (memory scheduler)" if r.get("memory_scheduler") else "")
    if "failed" in r:
      lines.append(f"memory {case} at {r['size']}: FAILED {r['failed']}")
      continue
    xla = r.get("xla_bytes", {})
    lines.append(f"memory {case:31s} {r['stage']}, {r['size']}x{r['size']}, batch 1: peak RSS "
                 f"{_gib(r['peak_rss_bytes'])} (process baseline {_gib(r['baseline_rss_bytes'])}); XLA temp "
                 f"{_gib(xla.get('temp', 0))}, arguments {_gib(xla.get('argument', 0))}; "
                 f"run {r['run_seconds']:.1f} s")
  lines += ["", f"Peak resident memory of this run: {_gib(res['peak_rss_bytes'])}"
            + (f"; device peaks {[_gib(b) for b in res['device_peak_bytes']]}" if res["device_peak_bytes"] else "")]
  return "\n".join(lines)


def jsonable(v):
  """The result in JSON's types: numpy numbers as Python ones, NaN and infinities as null."""
  if isinstance(v, dict):
    return {str(k): jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [jsonable(x) for x in v]
  if isinstance(v, (np.floating, float)):
    return float(v) if np.isfinite(v) else None
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, np.bool_):
    return bool(v)
  return v


def write_json(result, path):
  """Writes next to the target first, so an error never leaves a broken file under the real name."""
  def write(tmp):
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(jsonable(result), f, indent=1)
  outputs.atomic_write(path, write)
