"""Command line: python -m spectral_diffusion.main --config=configs/X.py --workdir=DIR --mode=MODE.

Modes: train (train, then evaluate), eval, sample (SCDM: RGB --input -> all bands), repair (AnyBand:
--input with missing bands -> all bands), describe (the plan and parameter counts, nothing allocated).
`--config.a.b=value` overrides any field; `config.method` (scdm | anyband) picks the method, once.
Exit codes: 0 done, 2 bad input (one-line message), 3 training diverged (last good checkpoint kept).
"""
import os
import re
import sys

from absl import flags
from ml_collections import config_flags

from spectral_diffusion import methods, pretrained
from spectral_diffusion.errors import TrainingDiverged, UserInputError

MODES = ("train", "eval", "sample", "repair", "describe")


def define_flags(argv):
  """A fresh flag set per call: main() may run more than once in a process (tests, notebooks)."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)", flag_values=fv,
                                 sys_argv=argv)  # overrides are found in argv, not in sys.argv
  flags.DEFINE_string("workdir", "runs/default", "checkpoints, metrics.jsonl and eval/ go here", flag_values=fv)
  flags.DEFINE_enum("mode", "train", MODES, "what to do", flag_values=fv)
  flags.DEFINE_string("input", None, "sample/repair: .npy, .npz, .mat, GeoTIFF (.tif) or ENVI (.hdr/.img) "
                      "file. sample: RGB (H, W, 3), or a cube whose RGB bands are found by wavelength "
                      "(or --input_bands); repair: a cube on the model's grid with missing bands NaN "
                      "(or --missing_bands), or a sensor's bands with --sensor. Nodata pixels stay nodata",
                      flag_values=fv)
  flags.DEFINE_string("input_key", None, "sample/repair: variable name of the image inside a .mat/.npz "
                      "input (needed when several arrays could be the image)",
                      flag_values=fv)
  flags.DEFINE_list("missing_bands", None, "repair: 0-based indices of the bands to rebuild", flag_values=fv)
  flags.DEFINE_string("sensor", None, "sample/repair: the input holds this sensor's bands, in the order "
                      "the model's grid gives them (physics.sensor_names())", flag_values=fv)
  flags.DEFINE_list("wavelengths", None, "sample/repair: band centres of the input in nm, comma-separated, "
                    "for files that do not store them (needed for GeoTIFF/ENVI without wavelength "
                    "metadata); replaces the file's", flag_values=fv)
  flags.DEFINE_list("input_bands", None, "sample: 0-based indices of R, G, B in a multi-band input",
                    flag_values=fv)
  flags.DEFINE_string("output", None, "sample/repair: output path; .tif/.tiff writes a GeoTIFF with the "
                      "input's georeferencing and per-band wavelengths, .npy an array (nodata as NaN). "
                      "Default: WORKDIR/samples/ or WORKDIR/repaired/<input>.tif for a georeferenced input, "
                      ".npy otherwise", flag_values=fv)
  return fv


def _one_line(e):
  text = " ".join(str(e).split())
  return (text[:400] + " ...") if len(text) > 400 else (text or type(e).__name__)


def _numbers(values, flag, kind, example):
  if not values:
    return None
  try:
    return [kind(v) for v in values]
  except ValueError:
    raise UserInputError(f"--{flag}={','.join(values)} must be {example}") from None


def file_request(fv):
  """The file flags, parsed once."""
  return methods.FileRequest(
      input=fv.input, output=fv.output, input_key=fv.input_key,
      input_bands=_numbers(fv.input_bands, "input_bands", int, "3 band indices separated by commas, e.g. "
                           "--input_bands=29,19,9"),
      missing_bands=_numbers(fv.missing_bands, "missing_bands", int, "0-based band indices separated by "
                             "commas, e.g. --missing_bands=3,50,51"),
      sensor=fv.sensor,
      wavelengths=_numbers(fv.wavelengths, "wavelengths", float, "band centres in nm separated by commas, "
                           "e.g. --wavelengths=450.5,550,660.2"))


def run(flag_values):
  config = flag_values.config
  if config is None:
    raise UserInputError("no --config given; e.g. --config=configs/demo_indian_pines.py")
  method = methods.get(config)   # the one place the method is chosen; the config is checked here
  mode = flag_values.mode
  if mode in ("sample", "repair"):
    if mode != method.file_mode:
      raise UserInputError(f"a {method.name} model runs on files with --mode={method.file_mode}, not "
                           f"--mode={mode}" + (" (use an anyband config, e.g. --config=configs/"
                                               "anyband_demo_indian_pines.py)" if mode == "repair" else ""))
    request = file_request(flag_values)
    if not request.input:
      raise UserInputError(f"--mode={mode} needs --input=FILE (.npy, .mat, .tif or ENVI .hdr)")
    workdir = pretrained.resolve(flag_values.workdir)
    if workdir != flag_values.workdir and not request.output:  # outputs never go inside the package
      raise UserInputError(f"--workdir={flag_values.workdir} is the shipped pretrained model: give "
                           f"--output=FILE (.npy or .tif) for the result")
    method.run_file(config, workdir, request)
  elif mode == "describe":
    print(method.describe(config))
  elif mode == "train":
    method.train_and_evaluate(config, flag_values.workdir)
  else:
    method.evaluate(config, flag_values.workdir)


def parse(flag_values, argv):
  """Parses argv into flag_values and loads the --config file; returns None, or the one-line message of
  a missing or broken config file, an unknown override key or a bad flag value (the caller prints it
  and exits with 2). The command line, the benchmark and the steps sweep all parse through here."""
  for arg in argv:
    path = arg.split("=", 1)[1] if arg.startswith("--config=") else None
    if path and not os.path.isfile(path.split(":")[0]):
      return (f"config file {path} does not exist; run from the repository root or give its path "
              f"(e.g. --config=configs/demo_indian_pines.py)")
  try:
    flag_values(argv)
    if "config" in flag_values and flag_values.config is not None:
      flag_values.config.keys()  # the file loads lazily: fail here, inside the try, if it cannot
  except (KeyError, AttributeError) as e:  # ml_collections: an override names a key the config lacks
    name = re.sub(r"[\"'\\]", "", str(e.args[0] if e.args else e))
    return f"unknown config key {name!r} in an override; the valid keys are listed in configs/default.py"
  except (flags.Error, ValueError, TypeError, OSError, SyntaxError) as e:  # bad flags or values, config file
    return f"{_one_line(e)} (see --helpfull)"
  return None


def main(argv=None):
  argv = sys.argv if argv is None else argv
  flag_values = define_flags(argv)
  problem = parse(flag_values, argv)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  try:
    run(flag_values)
  except UserInputError as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return 2
  except TrainingDiverged as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main())
