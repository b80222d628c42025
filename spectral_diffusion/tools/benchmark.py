"""Benchmark every stage of a config from the config alone: random parameters, no data, no checkpoint.

  python -m spectral_diffusion.tools.benchmark --config=configs/scdm_dfc2018.py --size=128 --json=bench.json
  python -m spectral_diffusion.tools.benchmark --config=configs/demo_indian_pines.py --size=64 --devices=2
  python -m spectral_diffusion.tools.benchmark --config=configs/scdm_dfc2018.py --memory --sections= --stages=1

Per stage: parameters; FLOPs of one network call (XLA's cost analysis); compile time; call time (median
of --repeats after a warm-up call) and GFLOP/s; in the same run the attainable GFLOP/s of this machine
through XLA (a float32 matrix product and the model's dominant convolution alone) and the ratios;
full-sample time of DDPM (all T steps), DDIM-50 and the fastest solver (DPM-Solver++(2M)) with the
sampler overhead = sample time / (steps x network-call time); the cost of ICMG, PDT and physics guidance
per network call relative to an unguided call; images/s at several batch sizes;
bfloat16 compute (float32 parameters) against float32: speed and output differences; with --devices=N
(CPU devices), the figures sharded over N. --memory adds peak resident memory of one training step of
the last stage with and without remat (jax.checkpoint of the res blocks; on CPU also under XLA's
memory-minimising scheduler, CPU_MEMORY_SCHEDULER, without which remat saves nothing there) and of one
sampling network call, each in a fresh subprocess; --workdir adds bfloat16 vs float32 samples of a
trained SCDM run on its real test split.

Ratios are of figures measured in this run; absolute times hold for the machine printed at the top.
A full sample that would take longer than --max_sample_seconds (counting its warm-up run) is not run:
its time is steps x the step time of a --probe_steps run of the same sampler, labelled "estimated".
This module touches no JAX device at import (nor do its imports), so --devices can still take effect.
"""
import dataclasses
import functools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from spectral_diffusion.errors import UserInputError

SECTIONS = ("convs", "samplers", "guidance", "throughput", "bf16", "sharded")
MEMORY_CASES = ("train", "train_remat", "sample")
_MEMORY_TAG = "BENCHMARK_MEMORY "
# XLA:CPU's default scheduler optimises for concurrency and computes jax.checkpoint's recomputations
# early, keeping every activation alive (remat then saves nothing); this flag restores a memory-minimising
# schedule. Measured on a 12-block conv chain at 128x128: temp 296 MiB with or without remat by default,
# 88 MiB with remat under this flag.
CPU_MEMORY_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
_T0 = time.perf_counter()


def log(msg):
  """One progress line per measurement (runs are long): elapsed time and what is being measured."""
  s = int(time.perf_counter() - _T0)
  sys.stderr.write(f"[benchmark {s // 60:d}:{s % 60:02d}] {msg}\n")
  sys.stderr.flush()


# ---------------------------------------------------------------------------------------- the machine


def machine_info():
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    model = names[0] if names else model
  except OSError:
    pass
  devices = jax.devices()
  return {"cpu": model, "cpu_cores": os.cpu_count(),
          "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
          "backend": jax.default_backend(), "device_count": len(devices),
          "device_kind": devices[0].device_kind, "jax": jax.__version__, "python": platform.python_version()}


def machine_label(m):
  return (f"{m['cpu']}, {m['cpu_cores_usable'] or m['cpu_cores']} cores, backend {m['backend']}, "
          f"{m['device_count']} x {m['device_kind']}, jax {m['jax']}")


def peak_rss_bytes():
  """Peak resident set of this process so far (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_peak_bytes():
  """Peak bytes in use on each device where the backend reports it (GPU/TPU); None on CPU."""
  peaks = []
  for d in jax.local_devices():
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
      return None
    peaks.append(int(stats["peak_bytes_in_use"]))
  return peaks


# ------------------------------------------------------------------------------------- timing helpers


def flops_of(compiled):
  """FLOPs of a compiled program from XLA's cost analysis (nan when the backend gives none)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def compile_timed(fn, *args):
  """(compiled, seconds to trace, lower and compile, jaxpr) of jax.jit(fn) on these arguments."""
  t0 = time.perf_counter()
  traced = jax.jit(fn).trace(*args)
  compiled = traced.lower().compile()
  return compiled, time.perf_counter() - t0, traced.jaxpr


def time_calls(fn, args, repeats):
  """Median and all times of `repeats` calls of fn(*args) after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(max(repeats, 1)):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def measure(fn, args, repeats, what):
  """Compile, cost analysis and timing of one program: the record every throughput figure comes from.
  Returns (record, compiled, jaxpr): the program runs again without compiling, the jaxpr is inspected."""
  log(f"{what}: compiling")
  compiled, compile_s, jaxpr = compile_timed(fn, *args)
  flops = flops_of(compiled)
  log(f"{what}: compiled in {compile_s:.1f} s, {flops / 1e9:.3f} GFLOP per call; timing {repeats} calls")
  seconds, times = time_calls(compiled, args, repeats)
  gflops = flops / seconds / 1e9
  log(f"{what}: {seconds:.4f} s per call, {gflops:.1f} GFLOP/s")
  return {"flops": flops, "compile_seconds": compile_s, "seconds": seconds, "times": times,
          "gflop_per_s": gflops}, compiled, jaxpr


# ------------------------------------------------------------------------------ attainable throughput


def _normal(shape, seed):
  """Random operands from numpy: jax.random would compile a new program for every shape."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def matmul_probe(n, repeats):
  """Attainable float32 GFLOP/s of a large (n, n) @ (n, n) product through XLA."""
  a, b = _normal((n, n), 1), _normal((n, n), 2)
  rec, _, _ = measure(jnp.matmul, (a, b), repeats, f"attainable: matmul {n}x{n}x{n} float32")
  return {"n": n, "flops_closed_form": 2.0 * n ** 3, **rec}


def _sub_jaxprs(value):
  if hasattr(value, "jaxpr") and hasattr(value, "consts"):   # ClosedJaxpr
    return [value.jaxpr]
  if hasattr(value, "eqns"):                                  # Jaxpr
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def conv_equations(jaxpr):
  """Every conv_general_dilated in a jaxpr, nested calls (jit, remat, custom_jvp) included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      yield eqn
    for value in eqn.params.values():
      for sub in _sub_jaxprs(value):
        yield from conv_equations(sub)


def _valid_taps(size, kernel, stride, pad_lo, pad_hi):
  """Kernel taps that land inside the input, summed over output positions, along one axis."""
  out = (size + pad_lo + pad_hi - kernel) // stride + 1
  return sum(1 for o in range(out) for j in range(kernel) if 0 <= o * stride - pad_lo + j < size)


def conv_flops(lhs_shape, rhs_shape, strides, padding, dimension_numbers, groups=1):
  """Closed-form FLOPs of a convolution as XLA counts them: 2 per multiply-add, and taps that fall on
  padding are not counted (so a padded 'SAME' 3x3 conv costs less than 2 * 9 * Cin * Cout per pixel)."""
  lhs_spec, rhs_spec, _ = dimension_numbers
  batch, c_in = lhs_shape[lhs_spec[0]], lhs_shape[lhs_spec[1]]
  c_out, c_in_group = rhs_shape[rhs_spec[0]], rhs_shape[rhs_spec[1]]
  taps = 1
  for axis, (ld, rd) in enumerate(zip(lhs_spec[2:], rhs_spec[2:])):
    taps *= _valid_taps(lhs_shape[ld], rhs_shape[rd], strides[axis], *padding[axis])
  del c_in, groups  # c_in = c_in_group * groups; each output channel sees c_in_group inputs
  return 2 * batch * c_out * c_in_group * taps


@dataclasses.dataclass(frozen=True)
class ConvShape:
  lhs: tuple
  rhs: tuple
  strides: tuple
  padding: tuple
  dimension_numbers: object
  groups: int

  @property
  def flops(self):
    return conv_flops(self.lhs, self.rhs, self.strides, self.padding, self.dimension_numbers, self.groups)

  def describe(self):
    return f"input {self.lhs} kernel {self.rhs} stride {self.strides}"


def conv_census(jaxpr):
  """{ConvShape: number of calls} in a (Closed)Jaxpr, and the FLOPs of all its convolutions (closed form)."""
  counts = {}
  for eqn in conv_equations(getattr(jaxpr, "jaxpr", jaxpr)):
    p = eqn.params
    shape = ConvShape(tuple(eqn.invars[0].aval.shape), tuple(eqn.invars[1].aval.shape),
                      tuple(p["window_strides"]), tuple(tuple(x) for x in p["padding"]),
                      p["dimension_numbers"], int(p["feature_group_count"]))
    counts[shape] = counts.get(shape, 0) + 1
  return counts, sum(s.flops * n for s, n in counts.items())


def conv_probe(shape, repeats):
  """Attainable GFLOP/s of one convolution of this shape alone (random float32 operands)."""
  lhs, rhs = _normal(shape.lhs, 3), _normal(shape.rhs, 4)
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=shape.strides, padding=shape.padding,
                           dimension_numbers=shape.dimension_numbers, feature_group_count=shape.groups)
  rec, _, _ = measure(conv, (lhs, rhs), repeats, f"attainable: conv {shape.describe()}")
  return {"input_shape": list(shape.lhs), "kernel_shape": list(shape.rhs), "strides": list(shape.strides),
          "flops_closed_form": shape.flops, **rec}


def convs_alone(census, repeats, cache):
  """Every distinct convolution of the network timed alone: the sum over shapes of calls x time is what
  the network's convolutions cost with nothing else around them, a per-model attainable figure."""
  rows, seconds, flops = [], 0.0, 0.0
  for shape, calls in sorted(census.items(), key=lambda kv: -kv[0].flops * kv[1]):
    if shape not in cache:
      cache[shape] = conv_probe(shape, repeats)
    p = cache[shape]
    seconds += calls * p["seconds"]
    flops += calls * p["flops"]
    rows.append({"input_shape": list(shape.lhs), "kernel_shape": list(shape.rhs), "strides": list(shape.strides),
                 "calls": calls, "seconds": p["seconds"], "gflop_per_s": p["gflop_per_s"]})
  return {"seconds": seconds, "flops": flops, "gflop_per_s": flops / seconds / 1e9, "shapes": rows}


# ---------------------------------------------------------------------------- stages from the config


def config_wavelengths(config):
  """Band centres the config states, or Indian Pines' own grid for that scene (None when unknown)."""
  if config.data.wavelengths:
    return np.asarray(config.data.wavelengths, np.float64)
  if config.data.name == "indian_pines":
    from spectral_diffusion.data import INDIAN_PINES_WAVELENGTHS_NM
    return np.asarray(INDIAN_PINES_WAVELENGTHS_NM, np.float64)
  return None


def num_bands_of(config):
  n = int(config.data.num_bands)
  if not n:
    raise UserInputError("the benchmark plans the stages from the config alone: set "
                         "--config.data.num_bands=N (the cube's band count)")
  return n


@dataclasses.dataclass
class BenchStage:
  """One network to measure: an SCDM cascade stage or the AnyBand model."""
  index: int
  name: str
  method: str                   # scdm | anyband
  out_bands: int
  cond_bands: int
  icmg_scale: float             # the config's value for this stage (scdm)
  pdt_p_start: float

  def example_args(self, batch, size):
    x = jax.ShapeDtypeStruct((batch, size, size, self.out_bands), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    cond = jax.ShapeDtypeStruct((batch, size, size, self.cond_bands), jnp.float32)
    if self.method == "anyband":
      return x, t, cond, jax.ShapeDtypeStruct((batch, self.out_bands), jnp.float32)
    return x, t, cond


def plan_stages(config):
  """The config's networks with their band counts, planned without data."""
  from spectral_diffusion import data
  from spectral_diffusion.scdm import cascade, experiment
  n = num_bands_of(config)
  if config.method == "anyband":
    return [BenchStage(0, f"anyband: {n} bands", "anyband", n, n, 0.0, 1.0)]
  if config.data.rgb_bands:
    rgb = experiment.rgb_bands(config.data, None, n)
  else:
    wl = config_wavelengths(config)
    if wl is None:
      raise UserInputError("the benchmark needs the RGB bands without data: set "
                           "--config.data.rgb_bands='(r, g, b)' or --config.data.wavelengths")
    if len(wl) != n:
      raise UserInputError(f"the config's wavelength grid has {len(wl)} bands but data.num_bands={n}; "
                           f"make them agree")
    rgb = tuple(data.nearest_bands(wl, config.data.rgb_nm))
  stages = []
  for s in cascade.plan_stages(n, rgb, config.cascade.num_stages):
    prior = cascade.per_stage(config.diffusion.prior, s.index, "diffusion.prior") != "none"
    out = len(s.out_bands)
    stages.append(BenchStage(
        s.index, f"stage {s.index + 1}: {len(s.in_bands)} -> {out} bands", "scdm", out,
        len(s.in_bands) + (out if prior else 0),
        float(cascade.per_stage(config.sample.icmg_scale, s.index, "sample.icmg_scale")),
        float(cascade.per_stage(config.sample.pdt_p_start, s.index, "sample.pdt_p_start"))))
  return stages


def build(config, stage, dtype=None, remat=None):
  """The Flax module of a BenchStage, optionally with another compute dtype or remat setting."""
  from spectral_diffusion import models
  model_cfg = config.model.copy_and_resolve_references()
  if dtype is not None:
    model_cfg.dtype = dtype
  if remat is not None:
    model_cfg.remat = remat
  return models.build_model(model_cfg, stage.out_bands)


def check_size(model, size):
  if size % model.min_size:
    raise UserInputError(f"--size={size} is not a multiple of the model's minimum size {model.min_size} "
                         f"(2 ** downsamplings); use a multiple of {model.min_size}")


def random_params(model, stage, seed):
  """Parameters of the model's shapes, all random, float32, drawn in numpy so nothing compiles:
  kernels ~ N(0, 1 / fan_in), GroupNorm scales 1, biases 0. Unlike model.init, no layer starts at
  zero (AnyBand's output conv and CAM layers do), so bfloat16 vs float32 compares non-trivial outputs."""
  size = model.min_size
  shapes = jax.eval_shape(model.init, jax.random.key(0), *stage.example_args(1, size))["params"]
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = getattr(path[-1], "key", str(path[-1]))
    if name == "kernel":
      return rng.standard_normal(s.shape, np.float32) / np.float32(np.sqrt(np.prod(s.shape[:-1])))
    return (np.ones if name == "scale" else np.zeros)(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def random_inputs(stage, batch, size, seed):
  """Numpy inputs of a network call: x_t ~ N(0, 1), t spread over [0, T), condition in [-1, 1]."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, size, size, stage.out_bands)).astype(np.float32)
  t = (np.arange(batch) * 997 % 1000).astype(np.int32)
  cond = rng.uniform(-1, 1, (batch, size, size, stage.cond_bands)).astype(np.float32)
  if stage.method == "anyband":
    mask = np.zeros((batch, stage.out_bands), np.float32)
    mask[:, ::2] = 1.0   # every other band observed
    return {"x": x, "t": t, "cond": cond, "mask": mask}
  return {"x": x, "t": t, "cond": cond}


def eps_function(stage, model, params, inputs, schedule, parameterisation, icmg_scale=0.0, pdt_p_start=1.0):
  """The sampler's eps_fn(x_t, t) for this stage, exactly as the method builds it (a tree_util.Partial
  of the method's hashable denoiser), optionally with ICMG and PDT (scdm)."""
  if stage.method == "anyband":
    from spectral_diffusion.anyband import model as anyband
    return jax.tree_util.Partial(anyband.Denoiser(model, parameterisation), params, inputs["cond"],
                                 inputs["mask"], schedule)
  from spectral_diffusion.scdm import cascade
  denoiser = cascade.StageDenoiser(model, parameterisation, float(icmg_scale), float(pdt_p_start), "eps")
  return jax.tree_util.Partial(denoiser, params, inputs["cond"], schedule)


def range_loss(x0_hat):
  """Squared excursion of x0_hat outside [-1, 1], per sample: the loss of the physics-guidance cost
  probe on SCDM stages (the cost is the gradient through the network, whatever the loss)."""
  b = x0_hat.shape[0]
  out = jnp.square(jax.nn.relu(-1.0 - x0_hat)) + jnp.square(jax.nn.relu(x0_hat - 1.0))
  return jnp.mean(out.reshape(b, -1), axis=-1)


def network_call(eps_fn, x, t):
  return eps_fn(x, t)


# ------------------------------------------------------------------------------------------ samplers


def sampler_runner(kind, eps_fn, schedule, shape, rng, config, loop):
  """steps -> a zero-argument run of sampler `kind` with that many network calls. DDPM with fewer steps
  than T runs on a shorter schedule of the same betas range: the same step program, for the step time."""
  from spectral_diffusion import samplers, schedules
  sc, dc = config.sample, config.diffusion
  if kind == "ddpm":
    def run(steps):
      sched = schedule if steps == schedule.num_timesteps else schedules.linear(steps, dc.beta_start, dc.beta_end)
      return lambda: samplers.ddpm(eps_fn, sched, shape, rng, variance=sc.ddpm_variance, loop=loop)
    return run
  if kind == "ddim":
    fn, kwargs = samplers.ddim, {"loop": loop, "eta": sc.eta}
  else:
    fn, kwargs = samplers.dpm_solver_pp, {"loop": loop, "spacing": sc.spacing}
  return lambda steps: (lambda: fn(eps_fn, schedule, shape, rng, num_steps=steps, **kwargs))


def time_sampler(name, runner, steps, call_seconds, budget_s, probe_steps):
  """Full-sample time of `steps` network calls: measured (a warm-up run, then a timed run) when twice
  the estimate fits in budget_s, else steps x the step time of a probe_steps run, labelled estimated.
  overhead = sample time / (steps x call_seconds)."""
  k = max(1, min(probe_steps, steps))
  probe = runner(k)
  log(f"{name}: warm-up {k}-step run")
  jax.block_until_ready(probe())
  t0 = time.perf_counter()
  jax.block_until_ready(probe())
  probe_s = time.perf_counter() - t0
  step_s = probe_s / k
  estimate = steps * step_s
  rec = {"steps": steps, "probe_steps": k, "probe_seconds": probe_s, "step_seconds": step_s}
  if k == steps:   # the probe was the full sample
    rec.update(seconds=probe_s, estimated=False)
  elif 2 * estimate <= budget_s:
    full = runner(steps)
    log(f"{name}: full sample, about {estimate:.1f} s (twice: warm-up, timed)")
    jax.block_until_ready(full())
    t0 = time.perf_counter()
    jax.block_until_ready(full())
    rec.update(seconds=time.perf_counter() - t0, estimated=False)
  else:
    rec.update(seconds=estimate, estimated=True)
  rec["overhead"] = rec["seconds"] / (steps * call_seconds)
  log(f"{name}: {rec['seconds']:.2f} s{' (estimated)' if rec['estimated'] else ''}, "
      f"overhead {rec['overhead']:.3f}")
  return rec


# ---------------------------------------------------------------------------------------- one stage


def bench_stage(config, stage, opts, attainable):
  """Every per-stage figure; `attainable` caches conv probes by shape across stages."""
  from spectral_diffusion import samplers, training
  schedule = training.make_schedule(config.diffusion)
  param = config.diffusion.parameterisation
  size, batch, reps = opts["size"], opts["batch"], opts["repeats"]
  model = build(config, stage)
  log(f"{stage.name}: random parameters")
  params = jax.device_put(random_params(model, stage, seed=stage.index))
  rec = {"name": stage.name, "method": stage.method, "out_bands": stage.out_bands,
         "cond_bands": stage.cond_bands, "batch": batch, "size": size,
         "parameters": int(sum(p.size for p in jax.tree.leaves(params)))}
  inputs = {k: jnp.asarray(v) for k, v in random_inputs(stage, batch, size, seed=100 + stage.index).items()}
  eps_fn = eps_function(stage, model, params, inputs, schedule, param)
  x, t = inputs["x"], inputs["t"]

  fwd, fwd_compiled, fwd_jaxpr = measure(network_call, (eps_fn, x, t), reps,
                                         f"{stage.name}: network call, batch {batch}")
  rec["forward"] = fwd
  census, conv_total = conv_census(fwd_jaxpr)
  dominant = max(census, key=lambda s: s.flops * census[s])
  if dominant not in attainable["conv"]:
    attainable["conv"][dominant] = conv_probe(dominant, reps)
  probe = attainable["conv"][dominant]
  rec["dominant_conv"] = {**{k: probe[k] for k in ("input_shape", "kernel_shape", "strides")},
                          "calls": census[dominant], "share_of_flops": dominant.flops * census[dominant] / fwd["flops"],
                          "probe_gflop_per_s": probe["gflop_per_s"], "probe_flops": probe["flops"],
                          "probe_flops_closed_form": probe["flops_closed_form"]}
  rec["conv_share_of_flops"] = conv_total / fwd["flops"]
  rec["vs_conv_probe"] = fwd["gflop_per_s"] / probe["gflop_per_s"]
  rec["vs_matmul"] = fwd["gflop_per_s"] / attainable["matmul"]["gflop_per_s"]
  if "convs" in opts["sections"]:
    c = convs_alone(census, reps, attainable["conv"])
    rec["convs_alone"] = c
    rec["vs_convs_alone"] = fwd["gflop_per_s"] / c["gflop_per_s"]
    rec["convs_alone_share_of_time"] = c["seconds"] / fwd["seconds"]
  call_s = fwd["seconds"]
  loop = samplers._resolve_loop(config.sample.loop)  # the driver decides how warm-up must run
  rng = jax.random.key(7)
  shape = tuple(x.shape)

  if "samplers" in opts["sections"]:
    fast_name = "dpm_solver_pp"
    runs = [("ddpm", schedule.num_timesteps), ("ddim", opts["ddim_steps"]), ("fast", opts["fast_steps"])]
    rec["samplers"] = {}
    for kind, steps in runs:
      label = f"{fast_name}-{steps}" if kind == "fast" else f"{kind}-{steps}"
      runner = sampler_runner(kind if kind != "fast" else fast_name, eps_fn, schedule, shape, rng, config, loop)
      r = time_sampler(f"{stage.name}: {label}", runner, steps, call_s, opts["max_sample_seconds"],
                       opts["probe_steps"])
      rec["samplers"][kind] = {"sampler": label.split("-")[0], "loop": loop, **r}

  if "guidance" in opts["sections"]:
    rec["guidance"] = guidance_costs(config, stage, model, params, inputs, schedule, fwd, opts)

  if "throughput" in opts["sections"]:
    rec["throughput"] = []
    for b in sorted(set(opts["batch_sizes"]) | {batch}):
      per_image = call_s / batch
      if per_image * b * (reps + 1) > opts["max_sample_seconds"]:
        rec["throughput"].append({"batch": b, "seconds": per_image * b, "images_per_s": 1.0 / per_image,
                                  "estimated": True})
        log(f"{stage.name}: batch {b} estimated from batch {batch} (over --max_sample_seconds)")
        continue
      if b == batch:
        r = fwd
      else:
        ins = {k: jnp.asarray(v) for k, v in random_inputs(stage, b, size, seed=200 + b).items()}
        r, _, _ = measure(network_call, (eps_function(stage, model, params, ins, schedule, param), ins["x"],
                                      ins["t"]), reps, f"{stage.name}: network call, batch {b}")
      rec["throughput"].append({"batch": b, "seconds": r["seconds"], "images_per_s": b / r["seconds"],
                                "gflop_per_s": r["gflop_per_s"], "estimated": False})

  if "bf16" in opts["sections"]:
    rec["bfloat16"] = bf16_figures(config, stage, params, inputs, schedule, fwd, fwd_compiled, eps_fn, opts)

  if "sharded" in opts["sections"] and jax.device_count() > 1:
    rec["sharded"] = sharded_figures(config, stage, model, params, schedule, opts, loop)
  return rec


def guidance_costs(config, stage, model, params, inputs, schedule, fwd, opts):
  """Time and FLOPs of one guided network call over one unguided call (same batch, same inputs)."""
  from spectral_diffusion.anyband import model as anyband
  param, reps = config.diffusion.parameterisation, opts["repeats"]
  x, t = inputs["x"], inputs["t"]
  plain = eps_function(stage, model, params, inputs, schedule, param)
  out = {}

  def ratio(name, eps_fn, **extra):
    r, _, _ = measure(network_call, (eps_fn, x, t), reps, f"{stage.name}: {name}")
    out[name] = {**extra, "seconds": r["seconds"], "flops": r["flops"], "compile_seconds": r["compile_seconds"],
                 "time_ratio": r["seconds"] / fwd["seconds"], "flops_ratio": r["flops"] / fwd["flops"]}

  if stage.method == "scdm":
    s = stage.icmg_scale or 2.5   # the stage's own scale, or the paper's when the config has none
    ratio("icmg", eps_function(stage, model, params, inputs, schedule, param, icmg_scale=s), scale=s)
    p = stage.pdt_p_start if stage.pdt_p_start < 1.0 else 0.96
    ratio("pdt", eps_function(stage, model, params, inputs, schedule, param, pdt_p_start=p), p_start=p)
    pgs = jax.tree_util.Partial(anyband.PhysicsGuided(), plain, jax.tree_util.Partial(range_loss), schedule,
                                jnp.float32(1.0))
    ratio("physics", pgs, loss="range loss on x0_hat (SCDM has no physics loss; the cost is the "
                           "gradient through the network)")
  else:
    out["physics"] = anyband_pgs_cost(config, stage, model, params, inputs, schedule, opts)
  return out


def anyband_pgs_cost(config, stage, model, params, inputs, schedule, opts):
  """Physics-guided sampling per DDIM step over unguided, through anyband.repair_tiles itself (its own
  guidance loss, indices and RTM emulator), from probe_steps-step runs after a warm-up run of each."""
  from spectral_diffusion import baselines, data
  from spectral_diffusion.anyband import model as anyband
  wl = config_wavelengths(config)
  if wl is None or len(wl) != stage.out_bands:
    return {"skipped": "needs the config's band wavelengths (data.wavelengths, or Indian Pines)"}
  if not config.physics.guidance_scale:
    return {"skipped": "physics.guidance_scale is 0 in this config"}
  rng = np.random.default_rng(5)
  cube = rng.uniform(0.05, 0.6, (64, 64, stage.out_bands)).astype(np.float32)
  normaliser = data.MinMax(0.0, 1.0 / float(config.data.reflectance_scale))
  gaussian = baselines.BandGaussian(*(jnp.asarray(a) for a in baselines.fit_band_gaussian(cube)))
  prior = anyband.check_config(config)
  space = anyband.ModelSpace(gaussian, float(config.diffusion.target_scale) or 1.0, prior == "ridge")
  bundle = anyband.Bundle(model, params, space, config.diffusion.parameterisation, {})
  phys = anyband.make_physics(config, wl, normaliser, anyband.needs_emulator(config))
  x_obs = np.asarray((inputs["cond"] + 1.0) / 2.0)
  mask = np.asarray(inputs["mask"][0])
  k = opts["probe_steps"]
  times = {}
  for pgs in (False, True):
    run = lambda: anyband.repair_tiles(bundle, schedule, x_obs, mask, jax.random.key(3), config, phys, pgs, k)
    name = f"{stage.name}: repair_tiles DDIM-{k} {'with' if pgs else 'without'} physics guidance"
    log(f"{name}: warm-up")
    run()
    t0 = time.perf_counter()
    run()
    times[pgs] = time.perf_counter() - t0
    log(f"{name}: {times[pgs]:.3f} s")
  return {"scale": float(config.physics.guidance_scale), "steps": k, "seconds": times[True],
          "unguided_seconds": times[False], "time_ratio": times[True] / times[False],
          "via": "anyband.repair_tiles, per DDIM step"}


def bf16_figures(config, stage, params, inputs, schedule, fwd, fwd_compiled, eps_fn, opts):
  """bfloat16 compute with the same float32 parameters: call speed, and the output and a short DDIM
  sample against float32 from the same inputs and noise."""
  from spectral_diffusion import samplers
  model16 = build(config, stage, dtype="bfloat16")
  # What a bfloat16 model initialises by itself: its parameters must stay float32.
  shapes16 = jax.eval_shape(model16.init, jax.random.key(0), *stage.example_args(1, model16.min_size))
  param = config.diffusion.parameterisation
  eps16 = eps_function(stage, model16, params, inputs, schedule, param)
  x, t = inputs["x"], inputs["t"]
  r, compiled16, _ = measure(network_call, (eps16, x, t), opts["repeats"], f"{stage.name}: network call bfloat16")
  out32, out16 = np.asarray(fwd_compiled(eps_fn, x, t)), np.asarray(compiled16(eps16, x, t))
  steps = opts["bf16_ddim_steps"]
  log(f"{stage.name}: DDIM-{steps} float32 vs bfloat16 from the same noise")
  s32 = np.asarray(samplers.ddim(eps_fn, schedule, x.shape, jax.random.key(11), num_steps=steps))
  s16 = np.asarray(samplers.ddim(eps16, schedule, x.shape, jax.random.key(11), num_steps=steps))
  return {"seconds": r["seconds"], "compile_seconds": r["compile_seconds"], "gflop_per_s": r["gflop_per_s"],
          "speedup_vs_float32": fwd["seconds"] / r["seconds"],
          "parameters_float32": all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes16)),
          "output": differences(out16, out32), "ddim_steps": steps, "ddim_sample": differences(s16, s32)}


def differences(a, b):
  """|a - b| against the scale of the reference b."""
  d = np.abs(a.astype(np.float64) - b.astype(np.float64))
  scale = float(np.mean(np.abs(b)))
  return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "reference_mean_abs": scale,
          "relative_mean": float(d.mean() / scale) if scale else float("nan")}


def collectives(compiled):
  """{op: count} of cross-device collectives in a compiled program (a batch-parallel call needs none)."""
  text = compiled.as_text()
  found = {op: len(re.findall(rf"\b{op}(?:-start)?\(", text))
           for op in ("all-to-all", "all-gather", "all-reduce", "collective-permute", "reduce-scatter")}
  return {op: n for op, n in found.items() if n}


def sharded_figures(config, stage, model, params, schedule, opts, loop):
  """The network call and a probe_steps DDIM run with the batch split over every device (parameters
  replicated), against the same global batch on one device."""
  from spectral_diffusion import sharding
  n = jax.device_count()
  batch = -(-opts["batch"] // n) * n
  mesh = sharding.data_mesh()
  param, size, reps = config.diffusion.parameterisation, opts["size"], opts["repeats"]
  host = random_inputs(stage, batch, size, seed=300)
  out = {"devices": n, "batch": batch}
  for name, p_sh, b_sh in (("one_device", jax.devices()[0], jax.devices()[0]),
                           ("sharded", sharding.replicated(mesh), sharding.batch_sharded(mesh))):
    ins = {k: jax.device_put(v, b_sh) for k, v in host.items()}
    eps_fn = eps_function(stage, model, jax.device_put(params, p_sh), ins, schedule, param)
    r, compiled, _ = measure(network_call, (eps_fn, ins["x"], ins["t"]), reps,
                             f"{stage.name}: network call, batch {batch}, {name.replace('_', ' ')}")
    runner = sampler_runner("ddim", eps_fn, schedule, (batch, size, size, stage.out_bands),
                            jax.random.key(7), config, loop)
    s = time_sampler(f"{stage.name}: ddim-{opts['ddim_steps']} {name.replace('_', ' ')}", runner,
                     opts["ddim_steps"], r["seconds"], opts["max_sample_seconds"], opts["probe_steps"])
    out[name] = {"seconds": r["seconds"], "images_per_s": batch / r["seconds"], "flops": r["flops"],
                 "collectives": collectives(compiled), "ddim": s}
  one, sh = out["one_device"], out["sharded"]
  # XLA's cost analysis of an SPMD program counts one partition; the global work is the one-device count.
  sh["gflop_per_s"] = one["flops"] / sh["seconds"] / 1e9
  one["gflop_per_s"] = one["flops"] / one["seconds"] / 1e9
  out["speedup"] = one["seconds"] / sh["seconds"]
  return out


# -------------------------------------------------------------------------------- bf16 on real data


def bf16_real_data(config, workdir):
  """A trained SCDM cascade sampled on its real test split in float32 and in bfloat16 (same weights,
  same noise): MPSNR of each against the truth, and of bfloat16 against float32."""
  from spectral_diffusion import metrics, sampling, training
  from spectral_diffusion.scdm import cascade, evaluate, experiment
  if config.method != "scdm":
    raise UserInputError("--workdir compares bfloat16 on a trained SCDM cascade; this config is "
                         f"method={config.method}")
  cfg = config.copy_and_resolve_references()
  cfg.model.dtype = "float32"   # checkpoints are loaded with the settings they were trained with
  log(f"bfloat16 on real data: loading {workdir}")
  exp = experiment.load_experiment(cfg)
  bundles = evaluate.load_cascade(cfg, workdir, exp)
  bundles16 = [dataclasses.replace(b, model=b.model.clone(dtype=jnp.bfloat16)) for b in bundles]
  schedule = training.make_schedule(cfg.diffusion)
  rgb = exp.test[..., list(exp.rgb_bands)]
  settings = sampling.SampleSettings.from_config(cfg.sample)
  out = {"workdir": os.path.abspath(workdir), "test_shape": list(exp.test.shape),
         "sampler": cfg.sample.sampler, "num_steps": cfg.sample.num_steps}
  preds = {}
  for name, bs in (("float32", bundles), ("bfloat16", bundles16)):
    cascade.run_cascade(bs, schedule, rgb[:32, :32], jax.random.key(0), settings)  # compile
    log(f"bfloat16 on real data: sampling the test split in {name}")
    t0 = time.perf_counter()
    preds[name] = cascade.run_cascade(bs, schedule, rgb, jax.random.key(cfg.seed + 100), settings)[-1]
    out[f"{name}_seconds"] = time.perf_counter() - t0
    out[f"{name}_mpsnr"] = float(metrics.mpsnr(preds[name], exp.test, 1.0))
    out[f"{name}_sam_deg"] = float(np.degrees(metrics.sam(preds[name], exp.test)))
  out["mpsnr_difference_db"] = out["bfloat16_mpsnr"] - out["float32_mpsnr"]
  out["bfloat16_vs_float32_mpsnr"] = float(metrics.mpsnr(preds["bfloat16"], preds["float32"], 1.0))
  out["max_abs_difference"] = float(np.max(np.abs(preds["bfloat16"] - preds["float32"])))
  return out


# --------------------------------------------------------------------------------------------- memory


def memory_case(config, case, size):
  """One memory case in this (fresh) process: compile and run it once, return peak RSS and XLA's plan.

  train / train_remat: one SCDM training step of the config's last stage at size x size, batch 1,
  remat off / on. sample: one sampling network call of the last stage at size x size, batch 1, with
  the stage's configured ICMG and PDT (ICMG doubles the batch of the call)."""
  from spectral_diffusion import training
  from spectral_diffusion.scdm import train
  if config.method != "scdm":
    raise UserInputError("--memory measures an SCDM stage (training step and sampling call); use an SCDM "
                         "config such as configs/scdm_dfc2018.py")
  if case not in MEMORY_CASES:
    raise UserInputError(f"unknown memory case {case!r}: use one of {', '.join(MEMORY_CASES)}")
  stage = plan_stages(config)[-1]
  check_size(build(config, stage), size)
  jnp.zeros(()).block_until_ready()   # start the backend so the baseline includes it
  base_rss = peak_rss_bytes()
  schedule = training.make_schedule(config.diffusion)
  model = build(config, stage, remat=(case == "train_remat"))
  params = jax.device_put(random_params(model, stage, seed=0))
  host = random_inputs(stage, 1, size, seed=1)
  rec = {"case": case, "stage": stage.name, "size": size, "batch": 1, "remat": case == "train_remat",
         "dtype": config.model.dtype, "memory_scheduler": CPU_MEMORY_SCHEDULER in os.environ.get("XLA_FLAGS", ""),
         "xla_flags": os.environ.get("XLA_FLAGS", "")}
  if case.startswith("train"):
    optimizer = training.make_optimizer(config.train)
    state = training.new_train_state(params, optimizer)
    step_fn = train.make_train_step(model, schedule, optimizer, config.diffusion, config.train)
    batch = {"x0": jnp.asarray(host["x"]), "cond": jnp.asarray(host["cond"]),
             "offset": jnp.zeros_like(jnp.asarray(host["x"]))}
    args = (state, batch, jax.random.key(2))
    fn = jax.jit(step_fn, donate_argnums=0)
  else:
    eps_fn = eps_function(stage, model, params, {"cond": jnp.asarray(host["cond"])}, schedule,
                          config.diffusion.parameterisation, stage.icmg_scale, stage.pdt_p_start)
    rec.update(icmg_scale=stage.icmg_scale, pdt_p_start=stage.pdt_p_start)
    args = (eps_fn, jnp.asarray(host["x"]), jnp.asarray(host["t"]))
    fn = jax.jit(network_call)
  log(f"memory: {case}, {stage.name}, {size}x{size}: compiling")
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  rec["compile_seconds"] = time.perf_counter() - t0
  log(f"memory: {case}: compiled in {rec['compile_seconds']:.0f} s; running once")
  mem = compiled.memory_analysis()
  if mem is not None:
    rec["xla_bytes"] = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp")}
  rec["flops"] = flops_of(compiled)
  t0 = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  rec["run_seconds"] = time.perf_counter() - t0
  rec["baseline_rss_bytes"] = base_rss
  rec["peak_rss_bytes"] = peak_rss_bytes()
  rec["device_peak_bytes"] = device_peak_bytes()
  return rec


def memory_section(config_argv, opts):
  """Each memory case in a fresh subprocess, so the peaks are separate. On CPU the training cases run
  under XLA's default scheduler and again under its memory-minimising one (CPU_MEMORY_SCHEDULER): the
  default, concurrency-optimised one keeps every activation alive, so there remat saves no memory."""
  train, sample = opts["memory_train_size"], opts["memory_sample_size"]
  cases = [("train", train, False), ("train_remat", train, False)]
  if jax.default_backend() == "cpu":
    cases += [("train", train, True), ("train_remat", train, True)]
  cases.append(("sample", sample, False))
  results = []
  for case, size, memory_scheduler in cases:
    label = case + (" (memory scheduler)" if memory_scheduler else "")
    log(f"memory: {label} at {size}x{size} in a subprocess (may take minutes)")
    cmd = [sys.executable, "-m", "spectral_diffusion.tools.benchmark", *config_argv, f"--memory_case={case}",
           f"--size={size}"]
    env = dict(os.environ)
    if memory_scheduler:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + CPU_MEMORY_SCHEDULER).strip()
    # The child's progress lines go straight to this stderr; its result comes back on stdout.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(_MEMORY_TAG)]
    if proc.returncode or not lines:
      why = (f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0
             else f"exit code {proc.returncode}")
      results.append({"case": case, "size": size, "memory_scheduler": memory_scheduler, "failed": why})
      log(f"memory: {label} failed: {why}")
      continue
    r = json.loads(lines[-1][len(_MEMORY_TAG):])
    log(f"memory: {label}: peak RSS {r['peak_rss_bytes'] / 2 ** 30:.2f} GiB")
    results.append(r)
  return results


def config_args(argv):
  """The --config flags of argv (the file and its overrides), to hand to a subprocess."""
  out, take_next = [], False
  for a in argv[1:]:
    if take_next:
      out.append(a)
      take_next = False
    elif a == "--config":
      out.append(a)
      take_next = True
    elif a.startswith("--config=") or a.startswith("--config."):
      out.append(a)
  return out


# ---------------------------------------------------------------------------------------- whole run


def run(config, opts, config_argv=()):
  """Every figure for every stage (and --memory, --workdir); returns the JSON-ready dict."""
  if config.method not in ("scdm", "anyband"):
    raise UserInputError(f"unknown method {config.method!r}: use scdm or anyband")
  stages = plan_stages(config)
  if opts["stages"]:
    bad = [k for k in opts["stages"] if not 0 <= k < len(stages)]
    if bad:
      raise UserInputError(f"--stages {bad} out of range: the config has stages 0..{len(stages) - 1}")
    stages = [stages[k] for k in opts["stages"]]
  for s in stages:
    check_size(build(config, s), opts["size"])
  machine = machine_info()
  log(f"machine: {machine_label(machine)}")
  result = {"machine": machine, "config": opts.get("config_path"), "method": config.method,
            "options": {k: v for k, v in opts.items() if k != "config_path"}}
  attainable = {"matmul": matmul_probe(opts["matmul_size"], opts["repeats"]), "conv": {}}
  result["attainable_matmul"] = attainable["matmul"]
  result["stages"] = [bench_stage(config, s, opts, attainable) for s in stages]
  if opts.get("workdir"):
    result["bfloat16_real_data"] = bf16_real_data(config, opts["workdir"])
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
    for kind, r in s.get("samplers", {}).items():
      lines.append(f"  {r['sampler'] + '-' + str(r['steps']):18s} {r['seconds']:10.2f} s  "
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


def _jsonable(v):
  if isinstance(v, dict):
    return {str(k): _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, (np.floating, float)):
    return float(v) if np.isfinite(v) else None
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, np.bool_):
    return bool(v)
  return v


def write_json(result, path):
  """Writes next to the target first, so an error never leaves a broken file under the real name."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".partial"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(_jsonable(result), f, indent=1)
  os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ command line


def define_flags(argv):
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)", flag_values=fv,
                                 sys_argv=argv)
  d = functools.partial
  d(flags.DEFINE_integer, flag_values=fv)("size", 128, "height and width of every measured call")
  d(flags.DEFINE_integer, flag_values=fv)("batch", 0, "batch of the measured network call (0 = sample.batch_size)")
  d(flags.DEFINE_list, flag_values=fv)("batch_sizes", ["1", "2", "4"], "images/s at these batch sizes")
  d(flags.DEFINE_integer, flag_values=fv)("repeats", 5, "timed calls after the warm-up (median reported)")
  d(flags.DEFINE_integer, flag_values=fv)("ddim_steps", 50, "DDIM network calls")
  d(flags.DEFINE_integer, flag_values=fv)("fast_steps", 20, "network calls of the fastest solver")
  d(flags.DEFINE_integer, flag_values=fv)("probe_steps", 3, "steps of the short run that gives a step time")
  d(flags.DEFINE_integer, flag_values=fv)("bf16_ddim_steps", 10, "DDIM steps of the bfloat16 vs float32 sample")
  d(flags.DEFINE_float, flag_values=fv)("max_sample_seconds", 120.0,
                                        "a full sample (or batch sweep) longer than this, counting its "
                                        "warm-up run, is estimated from a short run instead")
  d(flags.DEFINE_integer, flag_values=fv)("matmul_size", 2048, "n of the attainable n x n x n matmul")
  d(flags.DEFINE_integer, flag_values=fv)("devices", 1, "CPU devices (jax_num_cpu_devices); >1 adds the "
                                          "figures sharded over them")
  d(flags.DEFINE_list, flag_values=fv)("sections", list(SECTIONS), "which sections besides the network "
                                       f"call: {', '.join(SECTIONS)}")
  d(flags.DEFINE_list, flag_values=fv)("stages", [], "0-based stages to measure (default: all)")
  d(flags.DEFINE_string, flag_values=fv)("json", None, "also write the results as JSON here")
  d(flags.DEFINE_string, flag_values=fv)("workdir", None, "a trained SCDM run of this config: bfloat16 vs "
                                         "float32 samples on its real test split")
  d(flags.DEFINE_boolean, flag_values=fv)("memory", False, "peak memory of a training step (remat off/on) "
                                          "and of a sampling call of the last stage, in subprocesses")
  d(flags.DEFINE_integer, flag_values=fv)("memory_train_size", 256, "training crop of --memory")
  d(flags.DEFINE_integer, flag_values=fv)("memory_sample_size", 512, "sampling size of --memory")
  d(flags.DEFINE_string, flag_values=fv)("memory_case", None, "internal: run one memory case and print it")
  return fv


def options_from_flags(fv, config):
  def ints(values, what):
    try:
      out = [int(v) for v in values]
    except ValueError:
      raise UserInputError(f"--{what} takes integers, got {','.join(values)}") from None
    return out

  sections = [s for s in fv.sections if s]
  unknown = [s for s in sections if s not in SECTIONS]
  if unknown:
    raise UserInputError(f"unknown --sections {unknown}: use any of {', '.join(SECTIONS)}")
  opts = {"size": fv.size, "batch": fv.batch or int(config.sample.batch_size),
          "batch_sizes": ints(fv.batch_sizes, "batch_sizes"), "repeats": fv.repeats,
          "ddim_steps": fv.ddim_steps, "fast_steps": fv.fast_steps, "probe_steps": fv.probe_steps,
          "bf16_ddim_steps": fv.bf16_ddim_steps, "max_sample_seconds": fv.max_sample_seconds,
          "matmul_size": fv.matmul_size, "devices": fv.devices, "sections": sections,
          "stages": ints(fv.stages, "stages"), "workdir": fv.workdir, "memory": fv.memory,
          "memory_train_size": fv.memory_train_size, "memory_sample_size": fv.memory_sample_size}
  for key in ("size", "batch", "repeats", "ddim_steps", "fast_steps", "probe_steps", "bf16_ddim_steps",
              "matmul_size", "devices"):
    if opts[key] < 1:
      raise UserInputError(f"--{key} must be at least 1, got {opts[key]}")
  if any(b < 1 for b in opts["batch_sizes"]):
    raise UserInputError(f"--batch_sizes must be positive, got {opts['batch_sizes']}")
  return opts


def set_cpu_devices(n):
  """jax_num_cpu_devices must be set before the backend starts: check it took effect."""
  if n == 1:
    return
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:   # the backend already started (an earlier JAX call in this process)
    pass
  if jax.default_backend() == "cpu" and len(jax.devices()) != n:
    raise UserInputError(f"--devices={n} but JAX already runs with {len(jax.devices())} CPU device(s): "
                         f"start the benchmark in a fresh process (python -m spectral_diffusion.tools.benchmark)")


def main(argv=None):
  argv = list(sys.argv if argv is None else argv)
  fv = define_flags(argv)
  try:
    fv(argv)
    config = fv.config
    if config is None:
      raise UserInputError("no --config given; e.g. --config=configs/demo_indian_pines.py")
    if fv.memory_case:
      print(_MEMORY_TAG + json.dumps(_jsonable(memory_case(config, fv.memory_case, fv.size))))
      return 0
    opts = options_from_flags(fv, config)
    set_cpu_devices(opts["devices"])
    opts["config_path"] = config_flags.get_config_filename(fv["config"])
    result = run(config, opts, config_args(argv))
  except (UserInputError, flags.Error) as e:
    sys.stderr.write(f"error: {' '.join(str(e).split())}\n")
    return 2
  print(format_report(result))
  if fv.json:
    write_json(result, fv.json)
    print(f"wrote {fv.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
