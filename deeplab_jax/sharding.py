"""The device mesh from the config, shardings of parameters and batches, host -> global arrays.

A `spatial` mesh axis splits each image's height over devices of one host. Heights that do
not divide by it are padded at the bottom (padded_height, pad_height): the image with zeros
(after normalising), the label with the ignore label, so the loss and the metrics skip the
padded rows.
"""

import math
from typing import Dict, Sequence, Tuple

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
      raise UserError(f'mesh={tuple(mesh_config)}: {len(devices)} devices do not divide by '
                      f'{known}.')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise UserError(f'mesh={tuple(mesh_config)} needs {math.prod(sizes)} devices; '
                    f'there are {len(devices)}.')
  # jax.make_mesh orders the devices by the machine's topology (TPU rings); Auto axes, not
  # its default Explicit ones: jit places the collectives.
  auto = (jax.sharding.AxisType.Auto,) * len(names)
  return jax.make_mesh(tuple(sizes), names, axis_types=auto, devices=devices)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Batch over `data`; the height of arrays with an image axis (ndim >= 3: images, labels,
  predictions) over `spatial` when the mesh has it. `mask` [B] and `size` [B, 2] only over
  `data`."""
  spec = ['data']
  if ndim >= 3:
    spec.append('spatial' if 'spatial' in mesh.axis_names else None)
  return NamedSharding(mesh, P(*spec, *([None] * (ndim - len(spec)))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_spatial(mesh: Mesh) -> None:
  """Each host holds whole images: the devices along `spatial` of every `data` row belong to
  one process, since a host's batch rows (to_global) carry whole images."""
  spatial = mesh.shape.get('spatial', 1)
  if spatial == 1:
    return
  if jax.local_device_count() % spatial:
    raise UserError(f'mesh spatial={spatial} must divide the {jax.local_device_count()} devices '
                    'of each host.')
  rows = np.moveaxis(mesh.devices, mesh.axis_names.index('spatial'), -1).reshape(-1, spatial)
  for row in rows:
    processes = sorted({d.process_index for d in row})
    if len(processes) > 1:
      raise UserError(f'mesh spatial={spatial} puts one image on the devices of processes '
                      f'{processes}; each host must hold whole images (devices {row.tolist()}).')


def padded_height(height: int, mesh: Mesh, multiple: int = 1) -> int:
  """The height an image of `height` rows is padded to: ceil(height / m) * m, m the least
  common multiple of `multiple` (config.data.pad_height_multiple) and the mesh's spatial size.

  The padded rows are ignored by the loss and the metrics but pass through the network: in
  training they enter BatchNorm's batch statistics, and at evaluation the image pooling and
  the output grid see them. A `multiple` that the mesh's spatial size divides fixes the padded
  height, and with it every number, on all such meshes.
  """
  if int(multiple) != multiple or multiple < 1:
    raise UserError(f'data.pad_height_multiple={multiple} must be an integer >= 1.')
  m = math.lcm(int(multiple), mesh.shape.get('spatial', 1))
  return -(-height // m) * m


def pad_height(batch: Dict[str, np.ndarray], height: int,
               ignore_label: int) -> Dict[str, np.ndarray]:
  """A host batch with 'label' (the ignore label) padded at the bottom to `height` rows and
  'image' (zeros: the mean colour after normalising) by as many; other fields as they are.
  (An image taller than its label, a crop with context, stays that much taller.)"""
  have = batch['label'].shape[1]
  if have == height:
    return batch
  if have > height:
    raise ValueError(f'batch height {have} is larger than the padded height {height}.')
  rows = ((0, 0), (0, height - have))
  out = dict(batch)
  out['image'] = np.pad(batch['image'], rows + ((0, 0),) * (batch['image'].ndim - 2))
  out['label'] = np.pad(batch['label'], rows + ((0, 0),) * (batch['label'].ndim - 2),
                        constant_values=ignore_label)
  return out


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
