"""The device mesh, its shardings, and assembling global batches from per-host data.

One code path for one CPU, 8 simulated CPU devices, a GPU, a TPU host or a
multi-host pod: the batch is sharded over a 'data' axis, parameters replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Stitches each process's part of the batch into one global, data-sharded array."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def to_host(tree: Any) -> Any:
  """Fetches (replicated) arrays to numpy on every process."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
