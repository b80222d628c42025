"""The one place that asks which method a config is: `get(config)` returns its `Method`.

A method (scdm, anyband) implements this small interface; the command line, `describe` and the
benchmark use it and never branch on the method themselves.
"""
import dataclasses
from typing import Optional, Protocol, Sequence

from spectral_diffusion.errors import UserInputError

NAMES = ("scdm", "anyband")


@dataclasses.dataclass(frozen=True)
class FileRequest:
  """What the command line asks of a trained model for one file (sample or repair mode)."""
  input: str
  output: Optional[str] = None
  input_key: Optional[str] = None
  input_bands: Optional[Sequence[int]] = None      # sample: R, G, B of a multi-band file
  missing_bands: Optional[Sequence[int]] = None    # repair: bands to rebuild
  sensor: Optional[str] = None
  wavelengths: Optional[Sequence[float]] = None    # band centres of the file (nm)


class Method(Protocol):
  name: str
  file_mode: str          # the command line's mode that runs the model on a file: sample | repair
  sections: tuple         # the config sections of its own (configs/default.py)

  def check_config(self, config) -> None:
    """Every enumerated and numeric setting the method reads, checked once (one-line UserInputError)."""

  def load_data(self, config):
    """The split data the method trains and evaluates on."""

  def train_and_evaluate(self, config, workdir):
    """Trains every model of the experiment in workdir (resuming), then writes workdir/eval."""

  def evaluate(self, config, workdir):
    """Scores the trained models on the held-out split; writes workdir/eval."""

  def load(self, workdir, config=None, **sample):
    """The trained model as a pipeline (pipelines.SCDM or pipelines.AnyBand)."""

  def run_file(self, config, workdir, request: FileRequest):
    """Runs the trained model on a file and writes the output (the command line's file mode)."""

  def describe(self, config) -> str:
    """What the config builds and its parameter counts, with no parameters allocated."""


def get(config) -> Method:
  """The config's method (config.method), its settings checked."""
  name = config.get("method", "scdm")
  if name == "scdm":
    from spectral_diffusion.scdm.method import SCDM as method
  elif name == "anyband":
    from spectral_diffusion.anyband.method import AnyBand as method
  else:
    raise UserInputError(f"unknown method {name!r}: use one of {', '.join(NAMES)}")
  method = method()
  missing = [s for s in method.sections if s not in config]
  if missing:
    raise UserInputError(f"config.method={name} but the config has no {', '.join(missing)} section(s); start "
                         f"the config file from configs/default.py's get_config({name!r})")
  method.check_config(config)
  return method
