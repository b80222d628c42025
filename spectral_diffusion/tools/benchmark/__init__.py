"""Benchmark every stage of a config from the config alone: random parameters, no data, no checkpoint.

  python -m spectral_diffusion.tools.benchmark --config=configs/scdm_dfc2018.py --size=128 --json=bench.json
  python -m spectral_diffusion.tools.benchmark --config=configs/demo_indian_pines.py --size=64 --devices=2
  python -m spectral_diffusion.tools.benchmark --config=configs/scdm_dfc2018.py --memory --sections= --stages=1

Per stage: parameters; FLOPs of one network call (XLA's cost analysis); compile time; call time (median
of --repeats after a warm-up call) and GFLOP/s; in the same run the attainable GFLOP/s of this machine
through XLA (a float32 matrix product and the model's dominant convolution alone) and the ratios;
full-sample time of DDPM (all T steps), DDIM-50 and the fastest solver (DPM-Solver++(2M)) with the
sampler overhead = sample time / (steps x network-call time); the cost of ICMG, PDT and physics guidance
per network call relative to an unguided call; images/s at several batch sizes;
bfloat16 compute (float32 parameters) against float32: speed and output differences; with --devices=N
(CPU devices), the figures sharded over N. --memory adds peak resident memory of one training step of
the last stage with and without remat (jax.checkpoint of the res blocks; on CPU also under XLA's
memory-minimising scheduler, CPU_MEMORY_SCHEDULER, without which remat saves nothing there) and of one
sampling network call, each in a fresh subprocess; --workdir adds bfloat16 vs float32 samples of a
trained SCDM run on its real test split, and that split through pipelines.SCDM with sample.program=python
(host driver) and =compiled (one program per tile batch): time and jitted calls per image.
--sections=layers (not in the default set: it compiles each distinct layer call alone) splits the network
call's time by layer kind (convolutions, GroupNorm, attention, dense, upsampling, the rest).

Ratios are of figures measured in this run; absolute times hold for the machine printed at the top.
A full sample that would take longer than --max_sample_seconds (counting its warm-up run) is not run:
its time is steps x the step time of a --probe_steps run of the same sampler, labelled "estimated".
Nothing here touches a JAX device at import, so --devices can still take effect: the project's modules
that start the backend when imported (training, scdm, anyband) are imported inside the functions that
use them.
"""
