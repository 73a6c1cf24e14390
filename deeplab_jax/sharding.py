"""The device mesh from the config, shardings of parameters and batches, host -> global arrays."""

import math
from typing import Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deeplab_jax.errors import UserError

AXES = ('data', 'spatial')


def make_mesh(mesh_config: Sequence[Tuple[str, int]], devices=None) -> Mesh:
  """A Mesh with the config's named axes; one size may be -1 (the rest of the devices)."""
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(name for name, _ in mesh_config)
  sizes = [int(size) for _, size in mesh_config]
  for name in names:
    if name not in AXES:
      raise UserError(f'mesh axis {name!r} in mesh={tuple(mesh_config)} is not one of {AXES}.')
  if not names or names[0] != 'data':
    raise UserError(f'mesh={tuple(mesh_config)} must start with the "data" axis (the others '
                    'split images within a host).')
  if sizes.count(-1) > 1:
    raise UserError(f'mesh={tuple(mesh_config)} has more than one -1 size.')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(f'mesh={tuple(mesh_config)}: {len(devices)} devices do not divide by {known}.')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise UserError(f'mesh={tuple(mesh_config)} needs {math.prod(sizes)} devices; '
                    f'there are {len(devices)}.')
  # Auto axes (not jax.make_mesh's Explicit ones): jit places the collectives.
  return Mesh(np.asarray(devices).reshape(sizes), names)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Batch over `data`, image height over `spatial` (when the mesh has it)."""
  spec = ['data']
  if ndim > 1:
    spec.append('spatial' if 'spatial' in mesh.axis_names else None)
  return NamedSharding(mesh, P(*spec, *([None] * (ndim - len(spec)))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_spatial(mesh: Mesh, heights) -> None:
  """A `spatial` axis stays within each host and divides every image height it splits."""
  spatial = mesh.shape.get('spatial', 1)
  if spatial == 1:
    return
  if jax.local_device_count() % spatial:
    raise UserError(f'mesh spatial={spatial} must divide the {jax.local_device_count()} devices '
                    'of each host.')
  for field, height in heights:
    if height % spatial:
      raise UserError(f'{field} height {height} is not divisible by mesh spatial={spatial}.')


def check_batch_size(mesh: Mesh, batch_size: int, field: str) -> None:
  data = mesh.shape['data']
  if batch_size % data:
    raise UserError(f'{field}={batch_size} is not divisible by the {data} devices of the '
                    '"data" mesh axis.')


def to_global(mesh: Mesh, local_batch):
  """Host-local numpy arrays -> global jax arrays sharded over the mesh (one per leaf)."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x),
      local_batch)
