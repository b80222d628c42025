"""The command line: flags, their checks, and main (python -m spectral_diffusion.tools.benchmark)."""
import functools
import json
import sys

from absl import flags
import jax
from ml_collections import config_flags

from spectral_diffusion import sampling
from spectral_diffusion.data import outputs
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.main import parse as cli_parse
from spectral_diffusion.tools.benchmark.memory import config_args, memory_case, MEMORY_TAG
from spectral_diffusion.tools.benchmark.report import format_report, jsonable, run, write_json

SECTIONS = ("convs", "layers", "samplers", "guidance", "throughput", "bf16", "sharded")
# layers compiles every distinct layer call of the network alone (about 90 programs for a paper U-Net), so
# it runs only when asked for.
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s != "layers")
FAST_SOLVERS = ("dpm_solver_pp", "dpm_solver_pp_3m", "sde_dpm_solver_pp", "unipc")


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
  d(flags.DEFINE_integer, flag_values=fv)("fast_steps", 20, "network calls of each fast solver")
  d(flags.DEFINE_list, flag_values=fv)("solvers", list(FAST_SOLVERS), "fast solvers timed beside DDPM and "
                                       "DDIM (samplers.SAMPLERS)")
  d(flags.DEFINE_list, flag_values=fv)("loops", ["python", "scan"], "sampler loop drivers to time")
  d(flags.DEFINE_integer, flag_values=fv)("probe_steps", 3, "steps of the short run that gives a step time")
  d(flags.DEFINE_integer, flag_values=fv)("bf16_ddim_steps", 10, "DDIM steps of the bfloat16 vs float32 sample")
  d(flags.DEFINE_float, flag_values=fv)("max_sample_seconds", 120.0,
                                        "a full sample (or batch sweep) longer than this, counting its "
                                        "warm-up run, is estimated from a short run instead")
  d(flags.DEFINE_integer, flag_values=fv)("matmul_size", 2048, "n of the attainable n x n x n matmul")
  d(flags.DEFINE_integer, flag_values=fv)("devices", 1, "CPU devices (jax_num_cpu_devices); >1 adds the "
                                          "figures sharded over them")
  d(flags.DEFINE_list, flag_values=fv)("sections", list(DEFAULT_SECTIONS), "which sections besides the "
                                       f"network call: {', '.join(SECTIONS)} (layers: the call's time by "
                                       "layer kind)")
  d(flags.DEFINE_list, flag_values=fv)("stages", [], "0-based stages to measure (default: all)")
  d(flags.DEFINE_string, flag_values=fv)("json", None, "also write the results as JSON here")
  d(flags.DEFINE_string, flag_values=fv)("workdir", None, "a trained SCDM run of this config: bfloat16 vs "
                                         "float32 samples on its real test split, and the python vs "
                                         "compiled sampling programs (time, jitted calls)")
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

  sampling.SampleSettings.from_config(config.sample)  # --batch defaults to sample.batch_size: check it
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
          "memory_train_size": fv.memory_train_size, "memory_sample_size": fv.memory_sample_size,
          "solvers": [v for v in fv.solvers if v], "loops": [v for v in fv.loops if v]}
  for key, allowed in (("solvers", FAST_SOLVERS), ("loops", ("python", "scan"))):
    bad = [v for v in opts[key] if v not in allowed]
    if bad or not opts[key]:
      raise UserInputError(f"--{key} {','.join(bad) or '(empty)'}: use any of {', '.join(allowed)}")
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
  problem = cli_parse(fv, argv)  # missing or broken config file, unknown override key, bad flag value
  if problem:
    sys.stderr.write(f"error: {problem}\n")
    return 2
  try:
    config = fv.config
    if config is None:
      raise UserInputError("no --config given; e.g. --config=configs/demo_indian_pines.py")
    if fv.json:  # a long run must not fail at its very end
      outputs.check_output(fv.json, flag="--json")
    if fv.memory_case:
      print(MEMORY_TAG + json.dumps(jsonable(memory_case(config, fv.memory_case, fv.size))))
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
