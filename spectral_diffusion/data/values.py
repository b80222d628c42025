"""What values a model may be given and may give back: the one place for the checks that keep wrong
units, blank images and unreadable bytes from turning into plausible-looking garbage.

Training stores the raw value range of its training split in the checkpoint metadata (`value_range`);
sampling and repair compare an input with it (`check_input`) and refuse input that is clearly not in the
training data's units, unless sample.allow_out_of_range. Checkpoints written before the range was
stored give None, and only the checks that need no range run.
"""
import numpy as np

from spectral_diffusion.errors import UserInputError

OVERRIDE = "--config.sample.allow_out_of_range=True"
_MAX_VALUES = 1 << 20   # percentiles of large scenes from an even subsample: same answer, less memory


def value_range(normaliser, normalised):
  """[lo, hi] in raw units of a normalised training array (what `check_input` compares with)."""
  ends = normaliser.inverse(np.asarray([np.min(normalised), np.max(normalised)], np.float64))
  return [float(min(ends)), float(max(ends))]


def stored_range(meta):
  """The checkpoint's training value range, or None for checkpoints written before it was stored."""
  r = meta.get("value_range")
  return None if r is None else (float(r[0]), float(r[1]))


def _finite_sample(values, bands=None):
  """Finite values of the array (of `bands` on its last axis), evenly subsampled to about _MAX_VALUES
  band by band: no full-size copy of a large scene."""
  values = np.asarray(values)
  if bands is None:
    parts = [values.reshape(-1)]
  else:
    parts = [values[..., i].reshape(-1) for i in bands]
  total = sum(p.size for p in parts)
  step = total // _MAX_VALUES + 1
  v = np.concatenate([p[::step] for p in parts]) if parts else np.zeros(0)
  return v[np.isfinite(v)].astype(np.float64)


def check_not_mask(dtype, what):
  """Refuses a boolean array as an image, whatever the settings: True/False are not measurements."""
  if np.dtype(dtype) == np.bool_:
    raise UserInputError(f"{what} holds True/False values (a mask?), not measurements; give the image "
                         f"in the training data's units")


def check_input(values, trained, what, allow=False, bands=None):
  """Refuses input values (raw, NaN = nodata/missing, ignored) that are a mask, blank, or far from the
  training range `trained` (lo, hi): their 1st-99th percentiles lie beyond it by half its span, or
  spread over less than 1/1000 or more than 10 times it (different units, or unreadable bytes).
  One line that names `what`, both ranges and the override. bands: the last-axis indices to look at
  (default all)."""
  check_not_mask(np.asarray(values).dtype, what)
  v = _finite_sample(values, bands)
  if v.size == 0:
    return  # all nodata: the nodata checks say so
  if allow:
    return
  if v.min() == v.max():
    raise UserInputError(f"{what}: every value is {v.min():g}, a blank image with nothing to sample from; "
                         f"give a real image (or pass {OVERRIDE} to run anyway)")
  if trained is None:
    return
  lo, hi = trained
  span = max(hi - lo, 1e-12)
  p1, p99 = (float(x) for x in np.percentile(v, [1, 99]))
  spread = p99 - p1
  if p99 < lo - span / 2 or p1 > hi + span / 2 or not span / 1000 <= spread <= 10 * span:
    hint = ""
    if np.abs(v).max() < 1e-30 or np.abs(v).max() > 1e20:
      hint = " (values like these usually mean the bytes were read in the wrong order: check 'byte order' " \
             "in an ENVI header)"
    raise UserInputError(f"{what}: values run {p1:.4g} to {p99:.4g} (1st-99th percentile), the model was "
                         f"trained on {lo:.4g} to {hi:.4g}; give the input in the training data's units"
                         f"{hint} (or pass {OVERRIDE} to run anyway)")


def check_output(values, what):
  """Refuses to hand back NaN/Inf where the input had data (nodata pixels are NaN by design: pass
  `values` with them already excluded or set to a finite value)."""
  bad = int(np.count_nonzero(~np.isfinite(np.asarray(values))))
  if bad:
    raise UserInputError(f"{what}: the model produced {bad} NaN/Inf values, so nothing was written; the input "
                         f"is probably far outside the training data's range")


def output_note(values, trained):
  """A short note when the output holds values the training data never had a sign for (negative
  radiances or reflectances), '' otherwise; the result is still written, the user is told."""
  if trained is None or trained[0] < 0:
    return ""
  v = np.asarray(values)
  with np.errstate(invalid="ignore"):
    negative = int(np.count_nonzero(v < 0))
  if not negative:
    return ""
  return (f"; note: {negative} output values ({100.0 * negative / max(v.size, 1):.2g}%) are negative, "
          f"which the training data ({trained[0]:.4g} to {trained[1]:.4g}) never is")
