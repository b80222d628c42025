"""Progress lines, compiling and timing one program: what every figure of the benchmark is measured with."""
import statistics
import sys
import time

import jax

_T0 = time.perf_counter()


def log(msg):
  """One progress line per measurement (runs are long): elapsed time and what is being measured."""
  s = int(time.perf_counter() - _T0)
  sys.stderr.write(f"[benchmark {s // 60:d}:{s % 60:02d}] {msg}\n")
  sys.stderr.flush()


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


def network_call(eps_fn, x, t):
  """One network call as the samplers make it: the program the network figures compile and time."""
  return eps_fn(x, t)
