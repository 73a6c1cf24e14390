"""Data sets by name, and their prepared (TFDS array_record) copies.

A prepared copy lives under `config.data.cache_dir/<name>/<fingerprint>`, where the
fingerprint hashes the data folder's real path and the path, size and modification time
of every file it lists: a copy prepared from one folder never stands in for another,
and an edited file is prepared again.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import os
from typing import Callable, Optional, Sequence, Tuple, Type

import tensorflow_datasets as tfds

from deeplab_jax.data import camvid
from deeplab_jax.data import synthetic
from deeplab_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  builder: Type[tfds.core.GeneratorBasedBuilder]
  # Files that key the prepared copy of a data folder; None for generated sets.
  fingerprint_files: Optional[Callable[[str], Sequence[str]]] = None
  unavailable: str = ''  # non-empty: why this data set cannot be read yet
  classes: int = 0       # class count of a set without a builder yet

  @property
  def num_classes(self) -> int:
    return len(self.builder.CLASS_NAMES) if self.builder else self.classes


DATASETS = {
    'synthetic': DatasetSpec(synthetic.SyntheticScenes),
    'camvid': DatasetSpec(camvid.CamVid, camvid.fingerprint_files),
    'cityscapes': DatasetSpec(None, classes=19, unavailable=(
        'the Cityscapes reader is not built yet (it comes with the data sets issue); '
        'train on camvid or synthetic until then.')),
    'voc': DatasetSpec(None, classes=21, unavailable=(
        'the PASCAL VOC + SBD reader is not built yet (it comes with the data sets issue); '
        'train on camvid or synthetic until then.')),
    'ade20k': DatasetSpec(None, classes=150, unavailable=(
        'the ADE20K reader is not built yet (it comes with the data sets issue); '
        'train on camvid or synthetic until then.')),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A prepared data set and what the trainer needs to know of it."""
  builder: tfds.core.DatasetBuilder
  class_names: Tuple[str, ...]
  colors: Tuple[Tuple[int, int, int], ...]
  ignore_label: int

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def num_examples(self, split: str) -> int:
    return self.builder.info.splits[split].num_examples

  def check_split(self, split: str, field: str) -> None:
    splits = sorted(self.builder.info.splits)
    if split not in splits:
      raise UserError(f'{field}={split!r} is not a split of this data set; it has {splits}.')
    if self.num_examples(split) == 0:
      raise UserError(f'{field}={split!r} is empty.')


def _fingerprint(root: str, files: Sequence[str]) -> str:
  h = hashlib.sha256(os.path.realpath(root).encode())
  for path in files:
    try:
      st = os.stat(path)
    except FileNotFoundError:
      raise UserError(f'{path}: listed in {root} but not found.') from None
    h.update(f'{os.path.relpath(path, root)}:{st.st_size}:{st.st_mtime_ns};'.encode())
  return h.hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: str):
  """Serialises preparation between processes that share a disk (local multi-process runs)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def get_dataset(data_config) -> Dataset:
  """Prepares (once) and returns the data set named by `data_config.name`."""
  name = data_config.name
  if name not in DATASETS:
    raise UserError(f'data.name={name!r} is not one of {tuple(DATASETS)}.')
  spec = DATASETS[name]
  if spec.unavailable:
    raise UserError(f'data.name={name!r}: {spec.unavailable}')
  root = os.path.expanduser(data_config.root) if data_config.root else ''
  cache = os.path.join(os.path.expanduser(data_config.cache_dir), name)
  if spec.fingerprint_files is None:
    data_dir = os.path.join(cache, 'generated')
  elif root:
    if not os.path.isdir(root):
      raise UserError(f'data.root={data_config.root!r} is not a folder.')
    data_dir = os.path.join(cache, _fingerprint(root, spec.fingerprint_files(root)))
  else:
    data_dir = os.path.join(cache, 'downloaded')
  with _file_lock(data_dir + '.lock'):
    spec.builder(data_dir=data_dir).download_and_prepare(
        file_format='array_record',
        download_config=tfds.download.DownloadConfig(manual_dir=root or None))
  # A new builder reads the prepared copy's info, also when another process prepared it.
  builder = spec.builder(data_dir=data_dir)
  return Dataset(builder, tuple(spec.builder.CLASS_NAMES), tuple(spec.builder.COLORS),
                 spec.builder.IGNORE_LABEL)
