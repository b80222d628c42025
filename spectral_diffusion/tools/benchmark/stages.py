"""The networks a config trains, planned from the config alone: what differs between the methods.

`method_of` is the one place that asks which method a config is. `plan_stages` uses it to return
CascadeStage (scdm) or AnyBandStage objects, whose inputs, eps function and guidance costs are all the
per-method code of the benchmark, so the figures treat every stage alike; the figures only SCDM has
(--memory, --workdir) use it to refuse other configs.
"""
import dataclasses
import statistics
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from spectral_diffusion import methods
from spectral_diffusion.errors import UserInputError
from spectral_diffusion.tools.benchmark.timing import log, measure, network_call, time_calls


def method_of(config):
  """scdm or anyband, through methods.get (which also checks the method's settings)."""
  return methods.get(config).name


def config_wavelengths(config):
  """Band centres the config states, or Indian Pines' own grid for that scene (None when unknown)."""
  if config.data.wavelengths:
    return np.asarray(config.data.wavelengths, np.float64)
  if config.data.name == "indian_pines":
    from spectral_diffusion.data import INDIAN_PINES_WAVELENGTHS_NM
    return np.asarray(INDIAN_PINES_WAVELENGTHS_NM, np.float64)
  return None


def num_bands_of(config):
  n = int(config.data.num_bands)
  if not n:
    raise UserInputError("the benchmark plans the stages from the config alone: set "
                         "--config.data.num_bands=N (the cube's band count)")
  return n


@dataclasses.dataclass
class BenchStage:
  """One network to measure; the subclass of its method builds its inputs and eps function."""
  method: ClassVar[str]         # scdm | anyband
  index: int
  name: str
  out_bands: int
  cond_bands: int

  def example_args(self, batch, size):
    x = jax.ShapeDtypeStruct((batch, size, size, self.out_bands), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    cond = jax.ShapeDtypeStruct((batch, size, size, self.cond_bands), jnp.float32)
    return x, t, cond

  def random_inputs(self, batch, size, seed):
    """Numpy inputs of a network call: x_t ~ N(0, 1), t spread over [0, T), condition in [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, size, size, self.out_bands)).astype(np.float32)
    t = (np.arange(batch) * 997 % 1000).astype(np.int32)
    cond = rng.uniform(-1, 1, (batch, size, size, self.cond_bands)).astype(np.float32)
    return {"x": x, "t": t, "cond": cond}


@dataclasses.dataclass
class CascadeStage(BenchStage):
  """An SCDM cascade stage: its condition is the lower stages' bands (and the prior's prediction)."""
  method: ClassVar[str] = "scdm"
  icmg_scale: float             # the config's value for this stage
  pdt_p_start: float

  def eps_function(self, model, params, inputs, schedule, parameterisation, icmg_scale=0.0, pdt_p_start=1.0):
    """The sampler's eps_fn(x_t, t) exactly as the cascade builds it (a tree_util.Partial of its hashable
    denoiser), optionally with ICMG and PDT."""
    from spectral_diffusion.scdm import cascade
    denoiser = cascade.StageDenoiser(model, parameterisation, float(icmg_scale), float(pdt_p_start), "eps")
    return jax.tree_util.Partial(denoiser, params, inputs["cond"], schedule)

  def guidance_costs(self, config, model, params, inputs, schedule, fwd, opts):
    """Time and FLOPs of one guided network call over one unguided call (same batch, same inputs):
    ICMG, PDT and physics guidance."""
    from spectral_diffusion.anyband import model as anyband
    param, reps = config.diffusion.parameterisation, opts["repeats"]
    x, t = inputs["x"], inputs["t"]
    plain = self.eps_function(model, params, inputs, schedule, param)
    _, plain_compiled, _ = measure(network_call, (plain, x, t), 1, f"{self.name}: unguided call, for the ratios")
    out = {}

    def ratio(name, eps_fn, **extra):
      r, compiled, _ = measure(network_call, (eps_fn, x, t), reps, f"{self.name}: {name}")
      # Guided and unguided calls in alternating rounds: a shared machine's load then hits both alike.
      guided_s, plain_s = [], []
      for _ in range(reps):
        guided_s.append(time_calls(compiled, (eps_fn, x, t), 1)[0])
        plain_s.append(time_calls(plain_compiled, (plain, x, t), 1)[0])
      g, p = statistics.median(guided_s), statistics.median(plain_s)
      out[name] = {**extra, "seconds": g, "unguided_seconds": p, "flops": r["flops"],
                   "compile_seconds": r["compile_seconds"], "time_ratio": g / p, "flops_ratio": r["flops"] / fwd["flops"]}

    s = self.icmg_scale or 2.5   # the stage's own scale, or the paper's when the config has none
    ratio("icmg", self.eps_function(model, params, inputs, schedule, param, icmg_scale=s), scale=s)
    p = self.pdt_p_start if self.pdt_p_start < 1.0 else 0.96
    ratio("pdt", self.eps_function(model, params, inputs, schedule, param, pdt_p_start=p), p_start=p)
    pgs = jax.tree_util.Partial(anyband.PhysicsGuided(), plain, jax.tree_util.Partial(range_loss), schedule,
                                jnp.float32(1.0))
    ratio("physics", pgs, loss="range loss on x0_hat (SCDM has no physics loss; the cost is the "
                           "gradient through the network)")
    return out


def range_loss(x0_hat):
  """Squared excursion of x0_hat outside [-1, 1], per sample: the loss of the physics-guidance cost
  probe on SCDM stages (the cost is the gradient through the network, whatever the loss)."""
  b = x0_hat.shape[0]
  out = jnp.square(jax.nn.relu(-1.0 - x0_hat)) + jnp.square(jax.nn.relu(x0_hat - 1.0))
  return jnp.mean(out.reshape(b, -1), axis=-1)


@dataclasses.dataclass
class AnyBandStage(BenchStage):
  """The AnyBand model: every band from the observed ones, which a band mask marks."""
  method: ClassVar[str] = "anyband"

  def example_args(self, batch, size):
    return (*super().example_args(batch, size), jax.ShapeDtypeStruct((batch, self.out_bands), jnp.float32))

  def random_inputs(self, batch, size, seed):
    mask = np.zeros((batch, self.out_bands), np.float32)
    mask[:, ::2] = 1.0   # every other band observed
    return {**super().random_inputs(batch, size, seed), "mask": mask}

  def eps_function(self, model, params, inputs, schedule, parameterisation):
    """The sampler's eps_fn(x_t, t) exactly as AnyBand builds it (a tree_util.Partial of its hashable
    denoiser)."""
    from spectral_diffusion.anyband import model as anyband
    return jax.tree_util.Partial(anyband.Denoiser(model, parameterisation), params, inputs["cond"],
                                 inputs["mask"], schedule)

  def guidance_costs(self, config, model, params, inputs, schedule, fwd, opts):
    """Physics-guided sampling per DDIM step over unguided, through anyband.repair_tiles itself (its own
    guidance loss, indices and RTM emulator), from probe_steps-step runs after a warm-up run of each."""
    del fwd   # a guided repair is not one network call: it is timed against an unguided repair
    return {"physics": self._physics_guidance_cost(config, model, params, inputs, schedule, opts)}

  def _physics_guidance_cost(self, config, model, params, inputs, schedule, opts):
    from spectral_diffusion import baselines, data
    from spectral_diffusion.anyband import model as anyband
    wl = config_wavelengths(config)
    if wl is None or len(wl) != self.out_bands:
      return {"skipped": "needs the config's band wavelengths (data.wavelengths, or Indian Pines)"}
    if not config.physics.guidance_scale:
      return {"skipped": "physics.guidance_scale is 0 in this config"}
    rng = np.random.default_rng(5)
    cube = rng.uniform(0.05, 0.6, (64, 64, self.out_bands)).astype(np.float32)
    normaliser = data.MinMax(0.0, 1.0 / float(config.data.reflectance_scale))
    gaussian = baselines.BandGaussian(*(jnp.asarray(a) for a in baselines.fit_band_gaussian(cube)))
    prior = anyband.check_config(config)
    space = anyband.ModelSpace(gaussian, float(config.diffusion.target_scale) or 1.0, prior == "ridge",
                               config.diffusion.residual_scale == "per_band")
    bundle = anyband.Bundle(model, params, space, config.diffusion.parameterisation, {})
    phys = anyband.make_physics(config, wl, normaliser, anyband.needs_emulator(config))
    x_obs = np.asarray((inputs["cond"] + 1.0) / 2.0)
    mask = np.asarray(inputs["mask"][0])
    k = opts["probe_steps"]
    times = {}
    for pgs in (False, True):
      run = lambda: anyband.repair_tiles(bundle, schedule, x_obs, mask, jax.random.key(3), config, phys, pgs, k)
      name = f"{self.name}: repair_tiles DDIM-{k} {'with' if pgs else 'without'} physics guidance"
      log(f"{name}: warm-up")
      run()
      t0 = time.perf_counter()
      run()
      times[pgs] = time.perf_counter() - t0
      log(f"{name}: {times[pgs]:.3f} s")
    return {"scale": float(config.physics.guidance_scale), "steps": k, "seconds": times[True],
            "unguided_seconds": times[False], "time_ratio": times[True] / times[False],
            "via": "anyband.repair_tiles, per DDIM step"}


def plan_stages(config):
  """The config's networks with their band counts, planned without data."""
  method = method_of(config)
  n = num_bands_of(config)
  if method == "anyband":
    return [AnyBandStage(0, f"anyband: {n} bands", n, n)]
  return _cascade_stages(config, n)


def _cascade_stages(config, n):
  from spectral_diffusion import data
  from spectral_diffusion.scdm import cascade, experiment
  if config.data.rgb_bands:
    rgb = experiment.rgb_bands(config.data, None, n)
  else:
    wl = config_wavelengths(config)
    if wl is None:
      raise UserInputError("the benchmark needs the RGB bands without data: set "
                           "--config.data.rgb_bands='(r, g, b)' or --config.data.wavelengths")
    if len(wl) != n:
      raise UserInputError(f"the config's wavelength grid has {len(wl)} bands but data.num_bands={n}; "
                           f"make them agree")
    rgb = tuple(data.nearest_bands(wl, config.data.rgb_nm))
  stages = []
  for s in cascade.plan_stages(n, rgb, config.cascade.num_stages):
    prior = cascade.per_stage(config.diffusion.prior, s.index, "diffusion.prior") != "none"
    out = len(s.out_bands)
    stages.append(CascadeStage(
        s.index, f"stage {s.index + 1}: {len(s.in_bands)} -> {out} bands", out,
        len(s.in_bands) + (out if prior else 0),
        float(cascade.per_stage(config.sample.icmg_scale, s.index, "sample.icmg_scale")),
        float(cascade.per_stage(config.sample.pdt_p_start, s.index, "sample.pdt_p_start"))))
  return stages


def build(config, stage, dtype=None, remat=None):
  """The Flax module of a BenchStage, optionally with another compute dtype or remat setting."""
  from spectral_diffusion import models
  model_cfg = config.model.copy_and_resolve_references()
  if dtype is not None:
    model_cfg.dtype = dtype
  if remat is not None:
    model_cfg.remat = remat
  return models.build_model(model_cfg, stage.out_bands)


def check_size(model, size):
  if size % model.min_size:
    raise UserInputError(f"--size={size} is not a multiple of the model's minimum size {model.min_size} "
                         f"(2 ** downsamplings); use a multiple of {model.min_size}")


def random_params(model, stage, seed):
  """Parameters of the model's shapes, all random, float32, drawn in numpy so nothing compiles:
  kernels ~ N(0, 1 / fan_in), GroupNorm scales 1, biases 0. Unlike model.init, no layer starts at
  zero (AnyBand's output conv and CAM layers do), so bfloat16 vs float32 compares non-trivial outputs."""
  size = model.min_size
  shapes = jax.eval_shape(model.init, jax.random.key(0), *stage.example_args(1, size))["params"]
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = getattr(path[-1], "key", str(path[-1]))
    if name == "kernel":
      return rng.standard_normal(s.shape, np.float32) / np.float32(np.sqrt(np.prod(s.shape[:-1])))
    return (np.ones if name == "scale" else np.zeros)(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)
