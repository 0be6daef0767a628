"""Data parallelism over every device of every host: a 1-D `data` mesh."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xray_jax import errors

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
  """A mesh with one `data` axis over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Same value on every device: parameters, optimizer state, metrics."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the `data` axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, key: str) -> None:
  """Raises unless the global batch splits evenly over devices and processes."""
  for count, what in ((mesh.size, "devices"), (jax.process_count(), "processes")):
    if global_batch_size % count:
      raise errors.ConfigError(
          f"config.{key}={global_batch_size} is not divisible by the {count} {what}")


def to_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's share of a batch into global arrays sharded over `data`."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
