"""Device mesh and shardings: batches split over a 'data' axis of every device, parameters replicated."""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from spectral_diffusion.errors import UserInputError

_initialized = False


def maybe_initialize_distributed(enabled):
  """Multi-host start: jax.distributed.initialize() reads the coordinator from the environment
  (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, or a cluster such as SLURM)."""
  global _initialized
  if enabled and not _initialized:
    jax.distributed.initialize()
    _initialized = True


def data_mesh():
  return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharded(mesh):
  return NamedSharding(mesh, P("data"))


def check_batch(batch_size, mesh, what="train.batch_size"):
  n = mesh.devices.size
  if batch_size % n:
    raise UserInputError(f"{what}={batch_size} does not split over {n} devices; "
                         f"use a multiple of {n}")


def put_global_batch(x, mesh):
  """Places a host array holding the GLOBAL batch (the same on every process) on the mesh."""
  sharding = batch_sharded(mesh)
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  per_process = x.shape[0] // jax.process_count()
  local = x[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
  return jax.make_array_from_process_local_data(sharding, local, x.shape)


def local_data_mesh():
  return Mesh(np.asarray(jax.local_devices()), ("data",))


def shard_for_sampling(params, *batches):
  """Parameters replicated and the tile batches split over this host's devices, so a sampler's compiled
  steps run data-parallel (computation follows its inputs' shardings). Each host samples its own tiles;
  a batch that does not divide over the devices stays on one device. Returns (params, *batches)."""
  mesh = local_data_mesh()
  n = mesh.devices.size
  if n == 1 or batches[0].shape[0] % n:
    return (params, *batches)
  return (jax.device_put(params, replicated(mesh)),
          *(jax.device_put(b, batch_sharded(mesh)) for b in batches))


def constrain_to_local_devices(batch):
  """Inside jit: the batch split over this host's devices when it divides over them (else unchanged)."""
  mesh = local_data_mesh()
  n = mesh.devices.size
  if n == 1 or batch.shape[0] % n:
    return batch
  return jax.lax.with_sharding_constraint(batch, batch_sharded(mesh))
