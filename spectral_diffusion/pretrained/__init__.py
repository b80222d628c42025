"""Pretrained weights that ship inside the package: EMA parameters (float16, compressed) and the
metadata and config they were trained with, by name. A name works wherever a trained workdir does for
inference: `pipelines.SCDM.load("demo")`, and `--workdir=demo` with `--mode=sample` (a path that exists
is always taken as a path).

  demo   the SCDM demo cascade, configs/demo_indian_pines.py (Indian Pines, RGB -> 24 -> 200 bands)

Each was exported from a workdir the README's training command left, with
`python -m spectral_diffusion.pretrained WORKDIR NAME` (the README says which run).
"""
import os

from spectral_diffusion import checkpoints
from spectral_diffusion.errors import UserInputError

NAMES = {"demo": "the SCDM demo cascade (configs/demo_indian_pines.py)"}
_HERE = os.path.dirname(os.path.abspath(__file__))


def resolve(workdir):
  """workdir itself when it exists or is no pretrained name; else the shipped weights' directory."""
  if os.path.exists(workdir) or workdir not in NAMES:
    return workdir
  return os.path.join(_HERE, workdir)


def model_dirs(workdir):
  """The trained model directories of a workdir: stage_k (SCDM) and anyband* (AnyBand)."""
  found = sorted(n for n in os.listdir(workdir)
                 if (n.startswith("stage_") or n.startswith("anyband")) and n != "anyband_metrics.json"
                 and os.path.isdir(os.path.join(workdir, n)))
  if not found:
    raise UserInputError(f"{workdir} holds no trained model (stage_k or anyband directories); train first")
  return found


def export(workdir, out_dir):
  """Writes the EMA parameters and metadata of every model in workdir to out_dir (compact format)."""
  for sub in model_dirs(workdir):
    params, meta = checkpoints.load(os.path.join(workdir, sub), sub)
    checkpoints.save_compact(os.path.join(out_dir, sub), params, meta)
  return out_dir

