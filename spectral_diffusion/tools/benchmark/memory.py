"""Peak memory (--memory): one training step of the last SCDM stage with and without remat, and one
sampling network call, each in a fresh subprocess so the peaks are separate."""
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from spectral_diffusion.errors import UserInputError
from spectral_diffusion.tools.benchmark.machine import device_peak_bytes, peak_rss_bytes
from spectral_diffusion.tools.benchmark.stages import build, check_size, method_of, plan_stages, random_params
from spectral_diffusion.tools.benchmark.timing import flops_of, log, network_call

MEMORY_CASES = ("train", "train_remat", "sample")
MEMORY_TAG = "BENCHMARK_MEMORY "   # marks the subprocess's result line on its stdout
# XLA:CPU's default scheduler optimises for concurrency and computes jax.checkpoint's recomputations
# early, keeping every activation alive (remat then saves nothing); this flag restores a memory-minimising
# schedule. Measured on a 12-block conv chain at 128x128: temp 296 MiB with or without remat by default,
# 88 MiB with remat under this flag.
CPU_MEMORY_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def memory_case(config, case, size):
  """One memory case in this (fresh) process: compile and run it once, return peak RSS and XLA's plan.

  train / train_remat: one SCDM training step of the config's last stage at size x size, batch 1,
  remat off / on. sample: one sampling network call of the last stage at size x size, batch 1, with
  the stage's configured ICMG and PDT (ICMG doubles the batch of the call)."""
  from spectral_diffusion import training
  from spectral_diffusion.scdm import train
  if method_of(config) != "scdm":
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
  host = stage.random_inputs(1, size, seed=1)
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
    eps_fn = stage.eps_function(model, params, {"cond": jnp.asarray(host["cond"])}, schedule,
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
    lines = [l for l in proc.stdout.splitlines() if l.startswith(MEMORY_TAG)]
    if proc.returncode or not lines:
      why = (f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0
             else f"exit code {proc.returncode}")
      results.append({"case": case, "size": size, "memory_scheduler": memory_scheduler, "failed": why})
      log(f"memory: {label} failed: {why}")
      continue
    r = json.loads(lines[-1][len(MEMORY_TAG):])
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
