"""Spatial splits, random training crops and tiled inference with blended seams."""

from typing import Callable

import numpy as np

from spectral_diffusion.errors import UserInputError


def _as_slice(cols, width: int, what: str) -> range:
  if isinstance(cols, slice):
    s = cols
  elif isinstance(cols, (tuple, list)) and len(cols) == 2:
    s = slice(cols[0], cols[1])
  else:
    raise UserInputError(f"{what}: expected a slice or a (start, stop) pair, got {cols!r}; pass e.g. (0, 100)")
  cols = range(*s.indices(width))
  if len(cols) == 0:
    raise UserInputError(f"{what}: {cols!r} selects no columns of a {width}-column image; widen it")
  return cols


def spatial_split(cube, train_cols, test_cols) -> tuple[np.ndarray, np.ndarray]:
  """Splits (H, W, B) by column ranges; the ranges must not overlap (no leakage)."""
  cube = np.asarray(cube)
  width = cube.shape[1]
  train = _as_slice(train_cols, width, "train_cols")
  test = _as_slice(test_cols, width, "test_cols")
  shared = sorted(set(train) & set(test))
  if shared:
    raise UserInputError(
        f"train and test columns overlap at {len(shared)} columns ({shared[0]}..{shared[-1]}); "
        "make the ranges disjoint so test pixels are never trained on")
  return cube[:, train.start:train.stop:train.step], cube[:, test.start:test.stop:test.step]


def _dihedral(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
  x = np.rot90(x, k=k, axes=(0, 1))
  return x[:, ::-1] if flip else x


def random_crops(cube, rng: np.random.Generator, batch: int, size: int,
                 augment: bool = True) -> np.ndarray:
  """(batch, size, size, B) float32 random crops, with random flips and 90-degree turns when augment."""
  cube = np.asarray(cube)
  h, w = cube.shape[:2]
  if h < size or w < size:
    raise UserInputError(
        f"the image is {h}x{w} pixels, smaller than the {size}x{size} crop; "
        f"use a crop size of at most {min(h, w)} or a larger image")
  ys = rng.integers(0, h - size + 1, size=batch)
  xs = rng.integers(0, w - size + 1, size=batch)
  offsets = np.arange(size)
  rows = (ys[:, None] + offsets)[:, :, None]
  cols = (xs[:, None] + offsets)[:, None, :]
  crops = cube[rows, cols].astype(np.float32)
  if augment:
    ks = rng.integers(0, 4, size=batch)
    flips = rng.integers(0, 2, size=batch).astype(bool)
    crops = np.stack([_dihedral(c, k, f) for c, k, f in zip(crops, ks, flips)])
  return np.ascontiguousarray(crops)


def _starts(n: int, size: int, stride: int) -> list[int]:
  # The last tile is aligned to the border so the edge is covered exactly.
  return list(range(0, n - size, stride)) + [n - size]


def _check_tiling(h: int, w: int, size: int, overlap: int):
  if h < size or w < size:
    raise UserInputError(
        f"the image is {h}x{w} pixels, smaller than the {size}x{size} tile; "
        f"use a tile size of at most {min(h, w)} or pad the image")
  if not 0 <= overlap < size:
    raise UserInputError(f"tile overlap must be in [0, {size}), got {overlap}; use e.g. overlap={size // 4}")


def tile_positions(h: int, w: int, size: int, overlap: int) -> list[tuple[int, int]]:
  """Top-left (row, col) of tiles of `size` that overlap by at least `overlap` and cover (h, w)."""
  _check_tiling(h, w, size, overlap)
  stride = size - overlap
  return [(y, x) for y in _starts(h, size, stride) for x in _starts(w, size, stride)]


def _window(size: int, overlap: int) -> np.ndarray:
  """2-D blending weights: a linear ramp across the overlap, strictly positive so any cover normalises."""
  if overlap == 0:
    ramp = np.ones(size)
  else:
    i = np.arange(size) + 0.5
    ramp = np.minimum(1.0, np.minimum(i, size - i) / overlap)
  return np.outer(ramp, ramp).astype(np.float32)


def predict_tiled(fn: Callable[[np.ndarray], np.ndarray], cube, size: int, overlap: int,
                  batch: int) -> np.ndarray:
  """Runs fn on overlapping tiles, `batch` at a time, and blends the outputs into (H, W, B') float32.

  fn maps (n, size, size, B) -> (n, size, size, B'). The last batch is padded to `batch` tiles so a
  jitted fn sees one shape.
  """
  cube = np.asarray(cube)
  if cube.ndim != 3:
    raise UserInputError(f"expected a (H, W, B) cube, got shape {cube.shape}; reshape it to (H, W, B)")
  if batch < 1:
    raise UserInputError(f"batch must be at least 1, got {batch}; pass a positive batch size")
  h, w = cube.shape[:2]
  positions = tile_positions(h, w, size, overlap)
  window = _window(size, overlap)[:, :, None]
  out = None
  weight = np.zeros((h, w, 1), np.float32)
  for start in range(0, len(positions), batch):
    chunk = positions[start:start + batch]
    tiles = np.stack([cube[y:y + size, x:x + size] for y, x in chunk])
    pad = batch - len(chunk)
    if pad:
      tiles = np.concatenate([tiles, np.repeat(tiles[-1:], pad, axis=0)])
    pred = np.asarray(fn(tiles), dtype=np.float32)
    if pred.ndim != 4 or pred.shape[:3] != (batch, size, size):
      raise UserInputError(
          f"the tile function returned shape {pred.shape} for input {tiles.shape}; "
          f"it must return ({batch}, {size}, {size}, bands)")
    if out is None:
      out = np.zeros((h, w, pred.shape[3]), np.float32)
    for (y, x), p in zip(chunk, pred):
      out[y:y + size, x:x + size] += window * p
      weight[y:y + size, x:x + size] += window
  return out / weight
