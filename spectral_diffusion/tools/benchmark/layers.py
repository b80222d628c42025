"""Where a network call's time goes, by layer kind: every module call of the network recorded with its
input shapes (flax intercept_methods under eval_shape: nothing runs), each distinct one compiled and timed
alone, times calls summed per kind. What the isolated layers do not cover (concatenations, the two
encoder streams' interleave and split, residual adds, the time embedding) is the whole call minus their
sum; fusion across layer boundaries makes that remainder approximate, and it can come out negative."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spectral_diffusion.models import layers
from spectral_diffusion.tools.benchmark.timing import log, time_calls


def _kind(module, x):
  """The breakdown row of one module call (None: not timed on its own)."""
  if isinstance(module, nn.Conv):
    k = "x".join(map(str, module.kernel_size))
    stride = module.strides not in (None, 1, (1, 1))
    return f"conv {k}{' stride 2' if stride else ''}"
  if isinstance(module, (nn.GroupNorm, layers.GroupNorm)):
    return "GroupNorm"
  if isinstance(module, nn.Dense):
    return "dense (attention q/k/v/out)" if x.ndim == 4 else "dense (time embedding and projections)"
  if isinstance(module, layers.AttnBlock):
    return "attention block"
  if isinstance(module, layers.Upsample):
    return "upsample block"
  return None


def census(model, variables, args, skip=None):
  """{(kind, module repr, input shapes): [unbound module, calls]} of one model.apply (eval_shape only)."""
  counts = {}

  def record(next_fun, a, kwargs, context):
    if context.method_name == "__call__" and a:
      kind = _kind(context.module, a[0])
      if kind is not None and kind != skip:
        mod = context.module.clone(parent=None, name=None)
        shapes = tuple(jax.ShapeDtypeStruct(v.shape, v.dtype) for v in a)
        key = (kind, repr(mod), tuple((v.shape, str(v.dtype)) for v in shapes))
        counts.setdefault(key, [mod, shapes, 0])[2] += 1
    return next_fun(*a, **kwargs)

  def run(v, *xs):
    with nn.intercept_methods(record):
      return model.apply(v, *xs)

  jax.eval_shape(run, variables, *args)
  return counts


def _random_tree(tree, rng):
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape).astype(s.dtype) * 0.05), tree)


def time_module(mod, shapes, repeats, rng):
  """Median seconds of one jitted call of `mod` alone at these input shapes."""
  variables = jax.eval_shape(mod.init, jax.random.key(0), *shapes)
  p = _random_tree(variables, rng)
  xs = _random_tree(shapes, rng)
  fn = jax.jit(lambda p, *xs: mod.apply(p, *xs))
  return time_calls(fn, (p, *xs), repeats)[0]


def breakdown(model, params, args, call_seconds, repeats):
  """Seconds per layer kind (calls x time alone) and the remainder, as rows sorted by time."""
  rng = np.random.default_rng(0)
  rows, times = {}, {}

  def timed(key, mod, shapes):
    if key not in times:
      times[key] = time_module(mod, shapes, repeats, rng)
    return times[key]

  counts = census(model, {"params": params}, args)
  log(f"layer breakdown: {len(counts)} distinct module calls")
  for key, (mod, shapes, n) in counts.items():
    r = rows.setdefault(key[0], {"kind": key[0], "calls": 0, "seconds": 0.0})
    r["calls"] += n
    r["seconds"] += n * timed(key, mod, shapes)
  # The attention and upsample blocks hold GroupNorm, dense and conv calls already counted in their own
  # rows: keep only what the block adds (the attention core QK^T, softmax, AV; the nearest-neighbour copy).
  names = {"attention block": "attention core (QK^T, softmax, AV)", "upsample block": "nearest-neighbour upsample"}
  for key, (mod, shapes, n) in counts.items():
    if key[0] not in names:
      continue
    inner = census(mod, jax.eval_shape(mod.init, jax.random.key(0), *shapes), shapes, skip=key[0])
    rows[key[0]]["seconds"] -= n * sum(m * timed(k, md, sh) for k, (md, sh, m) in inner.items())
  for block, name in names.items():
    if block in rows:
      rows[block]["kind"] = name
  out = sorted(rows.values(), key=lambda r: -r["seconds"])
  rest = call_seconds - sum(r["seconds"] for r in out)
  out.append({"kind": "rest: concatenations, stream interleave/split, adds, SiLU", "calls": None, "seconds": rest})
  for r in out:
    r["share"] = r["seconds"] / call_seconds
  return out
