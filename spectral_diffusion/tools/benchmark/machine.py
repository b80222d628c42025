"""The machine the figures hold for, and the peak memory of this process."""
import os
import platform
import resource

import jax


def machine_info():
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    model = names[0] if names else model
  except OSError:
    pass
  devices = jax.devices()
  return {"cpu": model, "cpu_cores": os.cpu_count(),
          "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
          "backend": jax.default_backend(), "device_count": len(devices),
          "device_kind": devices[0].device_kind, "jax": jax.__version__, "python": platform.python_version()}


def machine_label(m):
  return (f"{m['cpu']}, {m['cpu_cores_usable'] or m['cpu_cores']} cores, backend {m['backend']}, "
          f"{m['device_count']} x {m['device_kind']}, jax {m['jax']}")


def peak_rss_bytes():
  """Peak resident set of this process so far (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_peak_bytes():
  """Peak bytes in use on each device where the backend reports it (GPU/TPU); None on CPU."""
  peaks = []
  for d in jax.local_devices():
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
      return None
    peaks.append(int(stats["peak_bytes_in_use"]))
  return peaks
