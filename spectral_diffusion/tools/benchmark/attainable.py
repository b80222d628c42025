"""Attainable throughput of this machine through XLA: a large matmul, and the model's convolutions timed
alone (found in its jaxpr, with their FLOPs in closed form)."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from spectral_diffusion.tools.benchmark.timing import measure


def _normal(shape, seed):
  """Random operands from numpy: jax.random would compile a new program for every shape."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def matmul_probe(n, repeats):
  """Attainable float32 GFLOP/s of a large (n, n) @ (n, n) product through XLA."""
  a, b = _normal((n, n), 1), _normal((n, n), 2)
  rec, _, _ = measure(jnp.matmul, (a, b), repeats, f"attainable: matmul {n}x{n}x{n} float32")
  return {"n": n, "flops_closed_form": 2.0 * n ** 3, **rec}


def _sub_jaxprs(value):
  if hasattr(value, "jaxpr") and hasattr(value, "consts"):   # ClosedJaxpr
    return [value.jaxpr]
  if hasattr(value, "eqns"):                                  # Jaxpr
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def conv_equations(jaxpr):
  """Every conv_general_dilated in a jaxpr, nested calls (jit, remat, custom_jvp) included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      yield eqn
    for value in eqn.params.values():
      for sub in _sub_jaxprs(value):
        yield from conv_equations(sub)


def _valid_taps(size, kernel, stride, pad_lo, pad_hi):
  """Kernel taps that land inside the input, summed over output positions, along one axis."""
  out = (size + pad_lo + pad_hi - kernel) // stride + 1
  return sum(1 for o in range(out) for j in range(kernel) if 0 <= o * stride - pad_lo + j < size)


def conv_flops(lhs_shape, rhs_shape, strides, padding, dimension_numbers, groups=1):
  """Closed-form FLOPs of a convolution as XLA counts them: 2 per multiply-add, and taps that fall on
  padding are not counted (so a padded 'SAME' 3x3 conv costs less than 2 * 9 * Cin * Cout per pixel)."""
  lhs_spec, rhs_spec, _ = dimension_numbers
  batch, c_in = lhs_shape[lhs_spec[0]], lhs_shape[lhs_spec[1]]
  c_out, c_in_group = rhs_shape[rhs_spec[0]], rhs_shape[rhs_spec[1]]
  taps = 1
  for axis, (ld, rd) in enumerate(zip(lhs_spec[2:], rhs_spec[2:])):
    taps *= _valid_taps(lhs_shape[ld], rhs_shape[rd], strides[axis], *padding[axis])
  del c_in, groups  # c_in = c_in_group * groups; each output channel sees c_in_group inputs
  return 2 * batch * c_out * c_in_group * taps


@dataclasses.dataclass(frozen=True)
class ConvShape:
  lhs: tuple
  rhs: tuple
  strides: tuple
  padding: tuple
  dimension_numbers: object
  groups: int

  @property
  def flops(self):
    return conv_flops(self.lhs, self.rhs, self.strides, self.padding, self.dimension_numbers, self.groups)

  def describe(self):
    return f"input {self.lhs} kernel {self.rhs} stride {self.strides}"


def conv_census(jaxpr):
  """{ConvShape: number of calls} in a (Closed)Jaxpr, and the FLOPs of all its convolutions (closed form)."""
  counts = {}
  for eqn in conv_equations(getattr(jaxpr, "jaxpr", jaxpr)):
    p = eqn.params
    shape = ConvShape(tuple(eqn.invars[0].aval.shape), tuple(eqn.invars[1].aval.shape),
                      tuple(p["window_strides"]), tuple(tuple(x) for x in p["padding"]),
                      p["dimension_numbers"], int(p["feature_group_count"]))
    counts[shape] = counts.get(shape, 0) + 1
  return counts, sum(s.flops * n for s, n in counts.items())


def conv_probe(shape, repeats):
  """Attainable GFLOP/s of one convolution of this shape alone (random float32 operands)."""
  lhs, rhs = _normal(shape.lhs, 3), _normal(shape.rhs, 4)
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=shape.strides, padding=shape.padding,
                           dimension_numbers=shape.dimension_numbers, feature_group_count=shape.groups)
  rec, _, _ = measure(conv, (lhs, rhs), repeats, f"attainable: conv {shape.describe()}")
  return {"input_shape": list(shape.lhs), "kernel_shape": list(shape.rhs), "strides": list(shape.strides),
          "flops_closed_form": shape.flops, **rec}


def convs_alone(census, repeats, cache):
  """Every distinct convolution of the network timed alone: the sum over shapes of calls x time is what
  the network's convolutions cost with nothing else around them, a per-model attainable figure."""
  rows, seconds, flops = [], 0.0, 0.0
  for shape, calls in sorted(census.items(), key=lambda kv: -kv[0].flops * kv[1]):
    if shape not in cache:
      cache[shape] = conv_probe(shape, repeats)
    p = cache[shape]
    seconds += calls * p["seconds"]
    flops += calls * p["flops"]
    rows.append({"input_shape": list(shape.lhs), "kernel_shape": list(shape.rhs), "strides": list(shape.strides),
                 "calls": calls, "seconds": p["seconds"], "gflop_per_s": p["gflop_per_s"]})
  return {"seconds": seconds, "flops": flops, "gflop_per_s": flops / seconds / 1e9, "shapes": rows}
