"""Spatial splits (column ranges, or the papers' patch protocols), random training crops and tiled
inference with blended seams."""

import dataclasses
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
  """(batch, size, size, B) float32 random crops of an image (H, W, B) or of a stack of patches
  (P, h, w, B) (each crop inside one patch, patches drawn uniformly), with random flips and 90-degree
  turns when augment."""
  cube = np.asarray(cube)
  if cube.ndim == 4:
    return _stack_crops(cube, rng, batch, size, augment)
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
  return _augment(crops, rng) if augment else np.ascontiguousarray(crops)


def _augment(crops, rng):
  ks = rng.integers(0, 4, size=len(crops))
  flips = rng.integers(0, 2, size=len(crops)).astype(bool)
  return np.ascontiguousarray(np.stack([_dihedral(c, k, f) for c, k, f in zip(crops, ks, flips)]))


def _stack_crops(stack, rng, batch, size, augment):
  p, h, w = stack.shape[:3]
  if h < size or w < size:
    raise UserInputError(
        f"the patches are {h}x{w} pixels, smaller than the {size}x{size} crop; "
        f"use a crop size of at most {min(h, w)}")
  ps = rng.integers(0, p, size=batch)
  ys = rng.integers(0, h - size + 1, size=batch)
  xs = rng.integers(0, w - size + 1, size=batch)
  crops = np.stack([stack[i, y:y + size, x:x + size] for i, y, x in zip(ps, ys, xs)]).astype(np.float32)
  return _augment(crops, rng) if augment else crops


def pixels(cube) -> np.ndarray:
  """An image (H, W, B) as it is, or a stack of patches (P, h, w, B) as one image (P*h, w, B): for
  per-pixel fits (regressions, statistics), which do not care where a pixel sits."""
  cube = np.asarray(cube)
  return cube.reshape((-1,) + cube.shape[2:]) if cube.ndim == 4 else cube


def mosaic(cube) -> np.ndarray:
  """An image (H, W, B) as it is, or a stack of patches (P, h, w, B) side by side, (h, P*w, B): one
  picture of a whole test split."""
  cube = np.asarray(cube)
  return np.concatenate(list(cube), axis=1) if cube.ndim == 4 else cube


# A window of a scene: (row, col, height, width) of its top-left corner and size.
Window = tuple[int, int, int, int]


def _overlaps(a: Window, b: Window) -> bool:
  return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@dataclasses.dataclass(frozen=True)
class GridSplit:
  """SCDM's protocol: one grid of size x size patches over the scene's first `rows` x `cols` pixels
  (0 = all), stride `size` with the last patch on each axis aligned to the border (tile_positions with
  no overlap), numbered row-major; the patches at `test` are the test split, the others the training
  split. Test patches must overlap no other patch, so no test pixel is ever trained on."""
  size: int
  test: tuple
  rows: int = 0
  cols: int = 0

  def windows(self, height: int, width: int) -> tuple[list[Window], list[Window]]:
    h, w = self.rows or height, self.cols or width
    if h > height or w > width:
      raise UserInputError(f"the scene is {height}x{width} pixels; the protocol uses its first {h}x{w}: "
                           f"use the full scene")
    grid = [(y, x, self.size, self.size) for y, x in tile_positions(h, w, self.size, 0)]
    bad = [i for i in self.test if not 0 <= i < len(grid)]
    if bad or not self.test:
      raise UserInputError(f"test patches {tuple(self.test)} are not among the {len(grid)} patches of a "
                           f"{h}x{w} scene; use row-major indices below {len(grid)}")
    test = [grid[i] for i in self.test]
    train = [g for i, g in enumerate(grid) if i not in self.test]
    for i, t in zip(self.test, test):
      if any(_overlaps(t, o) for o in grid if o != t):
        raise UserInputError(f"test patch {i} at {t[:2]} overlaps another patch, so its pixels would be "
                             f"trained on; choose test patches that overlap no other patch")
    return train, test


@dataclasses.dataclass(frozen=True)
class RegionSplit:
  """AnyBand-style protocol: a training and a test region, [start, stop) along `axis` (0 rows, 1
  columns; Python slice rules, negative counts from the end), each cut into size x size patches with
  its own stride (last patch aligned to the region's border); size 0 = the whole region as one
  patch. The regions must not overlap."""
  axis: int
  train: tuple
  test: tuple
  size: int = 0
  train_stride: int = 0   # 0 = size (no overlap)
  test_stride: int = 0

  def windows(self, height: int, width: int) -> tuple[list[Window], list[Window]]:
    if self.axis not in (0, 1):
      raise UserInputError(f"region split axis must be 0 (rows) or 1 (columns), got {self.axis}")
    n = (height, width)[self.axis]
    train = _as_slice(tuple(self.train), n, "train region")
    test = _as_slice(tuple(self.test), n, "test region")
    if train.step != 1 or test.step != 1 or (train.start < test.stop and test.start < train.stop):
      raise UserInputError(f"train region {tuple(self.train)} and test region {tuple(self.test)} overlap "
                           f"(or are not contiguous) on a {n}-pixel axis; make them disjoint ranges")
    return (self._tile(train, height, width, self.train_stride),
            self._tile(test, height, width, self.test_stride))

  def _tile(self, span: range, height: int, width: int, stride: int) -> list[Window]:
    box = (span.start, 0, len(span), width) if self.axis == 0 else (0, span.start, height, len(span))
    if not self.size:
      return [box]
    size = self.size
    stride = stride or size
    if not 0 < stride <= size:
      raise UserInputError(f"patch stride {stride} must be in 1..{size} (the patch size)")
    return [(box[0] + y, box[1] + x, size, size)
            for y, x in tile_positions(box[2], box[3], size, size - stride)]


def cut(cube, windows: list[Window]) -> np.ndarray:
  """The windows of a scene (H, W, B) as a stack (P, h, w, B); all windows must share one size."""
  sizes = {(w[2], w[3]) for w in windows}
  if len(sizes) != 1:
    raise UserInputError(f"windows of different sizes {sorted(sizes)} cannot be stacked; cut them one by one")
  return np.stack([cube[r:r + h, c:c + w] for r, c, h, w in windows])


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
