"""Data sets by name, and their prepared (TFDS array_record) copies.

A prepared copy lives under `config.data.cache_dir/<name>/<fingerprint>`, where the
fingerprint hashes the data folder's real path, the path, size and modification time
of every file it lists, and the settings that change what is prepared
(`data.skip_bad_examples`, and `data.ignore_label` for 'folder'): a copy prepared from
one folder, or with other settings, never stands in for another, and an edited file is
prepared again.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import os
from typing import Callable, Optional, Sequence, Tuple, Type

import tensorflow_datasets as tfds

from deeplab_jax.data import ade20k
from deeplab_jax.data import camvid
from deeplab_jax.data import cityscapes
from deeplab_jax.data import folder
from deeplab_jax.data import synthetic
from deeplab_jax.data import voc
from deeplab_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  builder: Type[tfds.core.GeneratorBasedBuilder]
  # Files that key the prepared copy of a data folder; None for generated sets.
  fingerprint_files: Optional[Callable[[str], Sequence[str]]] = None
  # (root, ignore_label) -> (class names, colours), for sets whose classes come from the
  # folder; their builder takes `ignore_label=data.ignore_label`.
  folder_classes: Optional[Callable[[str, int], Tuple[Tuple[str, ...], tuple]]] = None
  needs_root: str = ''   # non-empty: what data.root must hold (a set that is never downloaded)

  @property
  def num_classes(self) -> int:
    """The class count, or 0 where it depends on the data folder (see `num_classes`)."""
    return len(self.builder.CLASS_NAMES)


DATASETS = {
    'synthetic': DatasetSpec(synthetic.SyntheticScenes),
    'camvid': DatasetSpec(camvid.CamVid, camvid.fingerprint_files),
    'cityscapes': DatasetSpec(cityscapes.Cityscapes, cityscapes.fingerprint_files, needs_root=(
        f'the folder with leftImg8bit/ + gtFine/ or {cityscapes.IMAGE_ZIP} + '
        f'{cityscapes.LABEL_ZIP} (Cityscapes needs a login to download)')),
    'voc': DatasetSpec(voc.Voc, voc.fingerprint_files, needs_root=(
        'the folder holding VOCdevkit/ (and benchmark_RELEASE/ for train_aug)')),
    'ade20k': DatasetSpec(ade20k.Ade20k, ade20k.fingerprint_files, needs_root=(
        'the ADEChallengeData2016/ folder')),
    'folder': DatasetSpec(folder.Folder, folder.fingerprint_files,
                          folder_classes=folder.read_classes, needs_root=(
                              'your folder with images/<split>/ and labels/<split>/')),
}


def num_classes(data_config) -> int:
  """The class count of `data_config.name`; for 'folder' it is read from data.root."""
  spec = _spec(data_config.name)
  if spec.folder_classes is None:
    return spec.num_classes
  root = _root(data_config, spec)
  return len(spec.folder_classes(root, data_config.ignore_label)[0])


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
    """A split, or splits joined by '+' (TFDS reads `train+val` as one), each of the data set."""
    splits = sorted(self.builder.info.splits)
    unknown = [part for part in split.split('+') if part not in splits]
    if unknown:
      which = f'{field}={split!r}' + (f': {unknown[0]!r}' if unknown[0] != split else '')
      raise UserError(f'{which} is not a split of this data set; it has {splits} (join '
                      'several with "+", as in "train+val").')
    if self.num_examples(split) == 0:
      raise UserError(f'{field}={split!r} is empty.')


def _fingerprint(root: str, files: Sequence[str], settings: str, allow_missing: bool) -> str:
  h = hashlib.sha256(f'{os.path.realpath(root)};{settings};'.encode())
  for path in files:
    try:
      st = os.stat(path)
      stamp = f'{st.st_size}:{st.st_mtime_ns}'
    except FileNotFoundError:
      if not allow_missing:
        raise UserError(f'{path}: listed in {root} but not found.') from None
      stamp = 'missing'  # skipped when prepared
    h.update(f'{os.path.relpath(path, root)}:{stamp};'.encode())
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


def _spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise UserError(f'data.name={name!r} is not one of {tuple(DATASETS)}.')
  return DATASETS[name]


def _root(data_config, spec: DatasetSpec) -> str:
  root = os.path.expanduser(data_config.root) if data_config.root else ''
  if not root and spec.needs_root:
    raise UserError(f'data.name={data_config.name!r} needs data.root: {spec.needs_root}.')
  if root and not os.path.isdir(root):
    raise UserError(f'data.root={data_config.root!r} is not a folder.')
  return root


def get_dataset(data_config) -> Dataset:
  """Prepares (once) and returns the data set named by `data_config.name`."""
  name = data_config.name
  spec = _spec(name)
  cache = os.path.join(os.path.expanduser(data_config.cache_dir), name)
  skip = bool(data_config.get('skip_bad_examples', False))
  kwargs = {'skip_bad_examples': skip}
  settings = f'skip_bad_examples={skip}'
  if spec.folder_classes is not None:
    kwargs['ignore_label'] = folder.check_ignore_label(data_config.ignore_label)
    settings += f',ignore_label={kwargs["ignore_label"]}'
  root = ''
  if spec.fingerprint_files is None:
    data_dir = os.path.join(cache, 'generated')
  else:
    root = _root(data_config, spec)
    if root:
      data_dir = os.path.join(cache, _fingerprint(root, spec.fingerprint_files(root), settings,
                                                  allow_missing=skip))
    else:
      data_dir = os.path.join(cache, 'downloaded-skip' if skip else 'downloaded')
  with _file_lock(data_dir + '.lock'):
    spec.builder(data_dir=data_dir, **kwargs).download_and_prepare(
        file_format='array_record',
        download_config=tfds.download.DownloadConfig(manual_dir=root or None))
  # A new builder reads the prepared copy's info, also when another process prepared it.
  builder = spec.builder(data_dir=data_dir, **kwargs)
  class_names, colors, ignore_label = builder.classes()
  return Dataset(builder, class_names, colors, ignore_label)
