"""Every figure of one stage: the network call against what this machine attains, the samplers'
full-sample times, guidance (through the stage), images/s by batch size, bfloat16 against float32 and
the call sharded over --devices; and bfloat16 on a trained SCDM run's real test split (--workdir)."""
import dataclasses
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from spectral_diffusion.errors import UserInputError
from spectral_diffusion.tools.benchmark.attainable import conv_census, conv_probe, convs_alone
from spectral_diffusion.tools.benchmark.layers import breakdown
from spectral_diffusion.tools.benchmark.stages import build, method_of, random_params
from spectral_diffusion.tools.benchmark.timing import log, measure, network_call, time_calls


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
  inputs = {k: jnp.asarray(v) for k, v in stage.random_inputs(batch, size, seed=100 + stage.index).items()}
  eps_fn = stage.eps_function(model, params, inputs, schedule, param)
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
  if "layers" in opts["sections"]:
    rec["layers"] = breakdown(model, params, stage.example_args(batch, size), fwd["seconds"], reps)
  call_s = fwd["seconds"]
  loop = samplers._resolve_loop(config.sample.loop)  # the driver decides how warm-up must run
  rng = jax.random.key(7)
  shape = tuple(x.shape)

  if "samplers" in opts["sections"]:
    runs = [("ddpm", schedule.num_timesteps), ("ddim", opts["ddim_steps"])]
    runs += [(name, opts["fast_steps"]) for name in opts["solvers"]]
    rec["samplers"] = []
    # The network call timed again beside each sample: on a shared machine the ratio of two timings
    # taken minutes apart says more about the neighbours than about the sampler.
    call_now = lambda: time_calls(fwd_compiled, (eps_fn, x, t), reps)[0]
    for kind, steps in runs:
      for run_loop in opts["loops"]:
        runner = sampler_runner(kind, eps_fn, schedule, shape, rng, config, run_loop)
        r = time_sampler(f"{stage.name}: {kind}-{steps}, {run_loop} loop", runner, steps, call_now,
                         opts["max_sample_seconds"], opts["probe_steps"])
        rec["samplers"].append({"sampler": kind, "loop": run_loop, **r})

  if "guidance" in opts["sections"]:
    rec["guidance"] = stage.guidance_costs(config, model, params, inputs, schedule, fwd, opts)

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
        ins = {k: jnp.asarray(v) for k, v in stage.random_inputs(b, size, seed=200 + b).items()}
        r, _, _ = measure(network_call, (stage.eps_function(model, params, ins, schedule, param), ins["x"],
                                      ins["t"]), reps, f"{stage.name}: network call, batch {b}")
      rec["throughput"].append({"batch": b, "seconds": r["seconds"], "images_per_s": b / r["seconds"],
                                "gflop_per_s": r["gflop_per_s"], "estimated": False})

  if "bf16" in opts["sections"]:
    rec["bfloat16"] = bf16_figures(config, stage, params, inputs, schedule, fwd, fwd_compiled, eps_fn, opts)

  if "sharded" in opts["sections"] and jax.device_count() > 1:
    rec["sharded"] = sharded_figures(config, stage, model, params, schedule, opts, loop)
  return rec


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
  kwargs = {"loop": loop}
  if kind == "ddim":
    kwargs["eta"] = sc.eta
  else:
    kwargs["spacing"] = sc.spacing
  if kind == "unipc":
    kwargs["order"] = sc.get("unipc_order", 2)
  fn = samplers.SAMPLERS[kind]
  return lambda steps: (lambda: fn(eps_fn, schedule, shape, rng, num_steps=steps, **kwargs))


def time_sampler(name, runner, steps, call_seconds, budget_s, probe_steps):
  """Full-sample time of `steps` network calls: measured (a warm-up run, then a timed run) when twice
  the estimate fits in budget_s, else steps x the step time of a probe_steps run, labelled estimated.
  overhead = sample time / (steps x call_seconds); call_seconds is a number, or a function that times
  the network call (then timed right after the sample, and recorded)."""
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
  if callable(call_seconds):
    call_seconds = rec["call_seconds"] = call_seconds()
  rec["overhead"] = rec["seconds"] / (steps * call_seconds)
  log(f"{name}: {rec['seconds']:.2f} s{' (estimated)' if rec['estimated'] else ''}, "
      f"overhead {rec['overhead']:.3f}")
  return rec


def bf16_figures(config, stage, params, inputs, schedule, fwd, fwd_compiled, eps_fn, opts):
  """bfloat16 compute with the same float32 parameters: call speed, and the output and a short DDIM
  sample against float32 from the same inputs and noise."""
  from spectral_diffusion import samplers
  model16 = build(config, stage, dtype="bfloat16")
  # What a bfloat16 model initialises by itself: its parameters must stay float32.
  shapes16 = jax.eval_shape(model16.init, jax.random.key(0), *stage.example_args(1, model16.min_size))
  param = config.diffusion.parameterisation
  eps16 = stage.eps_function(model16, params, inputs, schedule, param)
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
  host = stage.random_inputs(batch, size, seed=300)
  out = {"devices": n, "batch": batch}
  for name, p_sh, b_sh in (("one_device", jax.devices()[0], jax.devices()[0]),
                           ("sharded", sharding.replicated(mesh), sharding.batch_sharded(mesh))):
    ins = {k: jax.device_put(v, b_sh) for k, v in host.items()}
    eps_fn = stage.eps_function(model, jax.device_put(params, p_sh), ins, schedule, param)
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


def bf16_real_data(config, workdir):
  """A trained SCDM cascade sampled on its real test split in float32 and in bfloat16 (same weights,
  same noise): MPSNR of each against the truth, and of bfloat16 against float32."""
  from spectral_diffusion import metrics, sampling, training
  from spectral_diffusion.scdm import cascade, evaluate, experiment
  method = method_of(config)
  if method != "scdm":
    raise UserInputError("--workdir compares bfloat16 on a trained SCDM cascade; this config is "
                         f"method={method}")
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


def sampling_programs(config, workdir, repeats=2):
  """A trained SCDM cascade's whole test split (raw RGB -> every band) through pipelines.SCDM with
  sample.program=python (the host driver) and =compiled (one program per tile batch): first call (with
  compilation) and the median of `repeats` further calls, alternated, and the jitted calls per image."""
  from spectral_diffusion import pipelines
  from spectral_diffusion.scdm import experiment
  method = method_of(config)
  if method != "scdm":
    raise UserInputError(f"--workdir times a trained SCDM cascade; this config is method={method}")
  exp = experiment.load_experiment(config)
  image = exp.test if exp.test.ndim == 3 else exp.test[0]   # one test image, or the first patch
  rgb = exp.normaliser.inverse(image[..., list(exp.rgb_bands)])
  pipes = {p: pipelines.SCDM.load(workdir, config=config, program=p) for p in ("python", "compiled")}
  out = {"workdir": os.path.abspath(workdir), "image_shape": list(image.shape)}
  times = {p: [] for p in pipes}
  for r in range(repeats + 1):
    for p, pipe in pipes.items():
      log(f"sampling programs: {p}, call {r + 1} of {repeats + 1}")
      t0 = time.perf_counter()
      pipe.sample(rgb, jax.random.key(config.seed))
      times[p].append(time.perf_counter() - t0)
  for p, pipe in pipes.items():
    batches = pipe.num_tile_batches(*image.shape[:2])   # python: per stage; compiled: all stages
    steps = pipe.settings.num_steps if pipe.settings.sampler != "ddpm" else pipe.schedule.num_timesteps
    out[p] = {"first_seconds": times[p][0], "seconds": float(np.median(times[p][1:])),
              "tile_batches": batches,
              # python: an x_T draw and one jitted step per sampler step, per stage and tile batch
              # (samplers' python loop); compiled: one call per tile batch (sampling.run_tiled).
              "jitted_calls_per_image": batches * (steps + 1) if p == "python" else batches}
  out["compiled_over_python"] = out["compiled"]["seconds"] / out["python"]["seconds"]
  return out
