"""Console progress for long loops (training, sampling) and the metrics.jsonl writer."""
import json
import os
import sys
import time


def _fmt_seconds(s):
  s = int(max(s, 0))
  return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:d}:{s % 60:02d}"


class Progress:
  """A one-line bar on a terminal; plain periodic lines when stderr is a file (CI, logs)."""

  def __init__(self, total, desc, start=0, stream=None, min_interval_s=2.0):
    self.total, self.desc, self.start, self.n = total, desc, start, start
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.t0 = self.last = time.perf_counter()
    self.min_interval_s = min_interval_s if self.tty else 10 * min_interval_s
    self.postfix = ""

  def rate(self):
    dt = time.perf_counter() - self.t0
    return (self.n - self.start) / dt if dt > 0 else 0.0

  def update(self, n=1, postfix=None):
    self.n += n
    if postfix is not None:
      self.postfix = postfix
    now = time.perf_counter()
    if now - self.last >= self.min_interval_s or self.n >= self.total:
      self.last = now
      self._draw()

  def _draw(self):
    rate = self.rate()
    eta = (self.total - self.n) / rate if rate > 0 else 0.0
    frac = self.n / max(self.total, 1)
    bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
    line = (f"{self.desc} [{bar}] {self.n}/{self.total} {rate:.2f} it/s "
            f"ETA {_fmt_seconds(eta)} {self.postfix}")
    if self.tty:
      self.stream.write("\r" + line[:160].ljust(160))
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def close(self):
    self._draw()
    if self.tty:
      self.stream.write("\n")
    self.stream.flush()


class MetricsWriter:
  """Appends one JSON object per line; each line is flushed so a killed run keeps what it logged."""

  def __init__(self, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self.path = path

  def write(self, record):
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
