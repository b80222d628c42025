"""Where results go, and how they get there without costing the user a file.

Every command that writes (sample, repair, eval, the benchmark, the steps sweep) checks its output
location with `check_output` / `check_directory` before any work, and writes through `Staged` or
`staged_directory`: each file is written under a temporary name unique to the process, and only once
every file of the result is complete are they renamed over their targets. A failed run leaves every
earlier file as it was and no half-written one.
"""
import contextlib
import os
import shutil
import uuid

from spectral_diffusion.errors import UserInputError


def temp_name(path):
  """A hidden name beside `path`, unique to this process and call, with the same extension (writers
  such as matplotlib pick the format from it)."""
  head, tail = os.path.split(os.fspath(path))
  ext = os.path.splitext(tail)[1]
  return os.path.join(head, f".{tail}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{ext}")


def _remove(*paths):
  for p in paths:
    for leftover in (p, p + ".aux.xml"):  # GDAL may write a side file
      if os.path.isfile(leftover):
        os.remove(leftover)


def atomic_write(path, write):
  """Calls write(tmp) on a temporary name beside `path`, then renames it over `path`."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  tmp = temp_name(path)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    _remove(tmp)
    raise


class Staged:
  """Several files written as one result: `path(final)` gives the temporary name to write final's
  content to; `commit()` renames them all once every one is written (a `with` block commits on
  success and removes the temporary files on any error)."""

  def __init__(self):
    self.pairs = []

  def path(self, final):
    final = os.fspath(final)
    os.makedirs(os.path.dirname(os.path.abspath(final)) or ".", exist_ok=True)
    tmp = temp_name(final)
    self.pairs.append((tmp, final))
    return tmp

  def commit(self):
    for tmp, final in self.pairs:
      os.replace(tmp, final)
    self.pairs = []

  def discard(self):
    _remove(*(tmp for tmp, _ in self.pairs))
    self.pairs = []

  def __enter__(self):
    return self

  def __exit__(self, kind, *_):
    if kind is None:
      self.commit()
    else:
      self.discard()
    return False


@contextlib.contextmanager
def staged_directory(final_dir):
  """Yields a fresh temporary directory beside final_dir; on success every file written into it is
  moved into final_dir (files there of the same name are replaced, others kept), on error it is removed."""
  final_dir = os.path.abspath(os.fspath(final_dir))
  parent, name = os.path.split(final_dir)
  tmp = os.path.join(parent, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
  os.makedirs(tmp)
  try:
    yield tmp
    os.makedirs(final_dir, exist_ok=True)
    for entry in sorted(os.listdir(tmp)):
      os.replace(os.path.join(tmp, entry), os.path.join(final_dir, entry))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def check_directory(directory, what):
  """Refuses a directory that cannot be created or written (a file on the way, no permission),
  before any work. Missing directories are fine when the nearest existing one is writable."""
  directory = os.path.abspath(os.fspath(directory))
  probe = directory
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if not os.path.isdir(probe):
    raise UserInputError(f"{what}: {probe} is a file, not a directory; choose another location")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise UserInputError(f"{what}: directory {probe} is not writable; choose another location or fix "
                         f"its permissions")
  return directory


def check_output(path, inputs=(), flag="--output"):
  """Refuses an output that would destroy an input (the same file, through any link) or that cannot be
  written (a directory of that name, a parent that is a file or read-only), before any work."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise UserInputError(f"{flag}={path} is a directory; give a file name, e.g. {os.path.join(path, 'out.npy')}")
  real = os.path.realpath(path)
  for given in inputs:
    if given is not None and os.path.realpath(os.fspath(given)) == real:
      raise UserInputError(f"{flag}={path} is the input file; writing there would destroy the input: "
                           f"choose another output name")
  check_directory(os.path.dirname(os.path.abspath(path)), f"{flag}={path}")
  return path
