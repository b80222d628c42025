"""Invertible value normalisers, stored as plain dicts in checkpoint metadata."""

import dataclasses
from typing import Any

import numpy as np

from spectral_diffusion.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class MinMax:
  """forward(x) = (x - lo) / (hi - lo): maps [lo, hi] to [0, 1]."""
  lo: float
  hi: float

  def __post_init__(self):
    if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.hi > self.lo):
      raise UserInputError(f"min-max normaliser needs finite lo < hi, got lo={self.lo}, hi={self.hi}; "
                           "check the data is not constant or NaN")

  def forward(self, x):
    return (x - self.lo) / (self.hi - self.lo)

  def inverse(self, y):
    return y * (self.hi - self.lo) + self.lo

  @property
  def span(self):
    """Data units per normalised unit (turns a normalised RMSE into data units)."""
    return self.hi - self.lo

  def to_dict(self) -> dict[str, Any]:
    return {"kind": "minmax", "lo": float(self.lo), "hi": float(self.hi)}


@dataclasses.dataclass(frozen=True)
class Affine:
  """forward(x) = (x - offset) / scale."""
  offset: float
  scale: float

  def __post_init__(self):
    if not (np.isfinite(self.offset) and np.isfinite(self.scale) and self.scale != 0):
      raise UserInputError(f"affine normaliser needs a finite offset and a finite non-zero scale, got "
                           f"offset={self.offset}, scale={self.scale}; fix the values")

  def forward(self, x):
    return (x - self.offset) / self.scale

  def inverse(self, y):
    return y * self.scale + self.offset

  @property
  def span(self):
    """Data units per normalised unit (turns a normalised RMSE into data units)."""
    return abs(self.scale)

  def to_dict(self) -> dict[str, Any]:
    return {"kind": "affine", "offset": float(self.offset), "scale": float(self.scale)}


# The DFC2018 Houston rule: (DN - 3693) / 7410.
DFC2018 = Affine(offset=3693.0, scale=7410.0)

Normaliser = MinMax | Affine


def fit_minmax(cube) -> MinMax:
  """Global min and max over all pixels and bands (one pair, so band ratios survive)."""
  cube = np.asarray(cube)
  if cube.size == 0:
    raise UserInputError("cannot fit a min-max normaliser on an empty array; pass a non-empty cube")
  lo, hi = float(np.min(cube)), float(np.max(cube))
  if not (np.isfinite(lo) and np.isfinite(hi)):
    raise UserInputError("cannot fit a min-max normaliser: the cube has NaN/Inf values; fill or mask them first")
  if hi <= lo:
    raise UserInputError(f"cannot fit a min-max normaliser: the cube is constant ({lo:g}); pass a real scene")
  return MinMax(lo=lo, hi=hi)


def normaliser_from_dict(d: dict[str, Any]) -> Normaliser:
  """Inverse of `to_dict`."""
  try:
    kind = d["kind"]
    if kind == "minmax":
      return MinMax(lo=float(d["lo"]), hi=float(d["hi"]))
    if kind == "affine":
      return Affine(offset=float(d["offset"]), scale=float(d["scale"]))
  except (KeyError, TypeError, ValueError) as e:
    if isinstance(e, UserInputError):
      raise
    raise UserInputError(f"bad normaliser metadata {d!r} ({type(e).__name__}: {e}); "
                         "re-save the checkpoint or fix its metadata") from e
  raise UserInputError(f"unknown normaliser kind {kind!r}; expected 'minmax' or 'affine'")
