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

  def check_config(self, config) -> None:
    """Every enumerated and numeric setting the method reads, checked once (one-line UserInputError)."""

  def load_data(self, config):
    """The split data the method trains and evaluates on."""

  def build_model(self, config, num_bands):
    """The Flax module of one model (a cascade stage's output band count, or the grid's)."""

  def example_inputs(self, config, num_bands, size, batch=1):
    """Zero arrays of the model's call arguments for (batch, size, size), after (x_t, t)."""

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
  method.check_config(config)
  return method
