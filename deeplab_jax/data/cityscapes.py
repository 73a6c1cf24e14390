"""Cityscapes, fine annotations (Cordts et al. 2016): 19 train ids from the 34 label ids.

Register at https://www.cityscapes-dataset.com and download `leftImg8bit_trainvaltest.zip`
and `gtFine_trainvaltest.zip`. The data folder (`config.data.root`) holds either both zips
as downloaded (members are read straight from them; nothing is extracted) or the extracted
`leftImg8bit/<split>/<city>/*_leftImg8bit.png` and `gtFine/<split>/<city>/*_gtFine_labelIds.png`.
Labels are read from the `gtFine_labelIds` PNGs and mapped to train ids by the official
cityscapesScripts table (no need to run `createTrainIdLabelImgs.py`); label ids outside
the 19 classes become 255 (ignore). Splits: train (2,975) and val (500); the test split is
left out, as its released labels are placeholders.
"""

import collections
import functools
import os
import re
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from deeplab_jax.data import base
from deeplab_jax.data import validation
from deeplab_jax.errors import UserError

# (label id, train id, name, colour) of the 19 evaluated classes; every other id -> 255.
CLASSES = (
    (7, 0, 'road', (128, 64, 128)),
    (8, 1, 'sidewalk', (244, 35, 232)),
    (11, 2, 'building', (70, 70, 70)),
    (12, 3, 'wall', (102, 102, 156)),
    (13, 4, 'fence', (190, 153, 153)),
    (17, 5, 'pole', (153, 153, 153)),
    (19, 6, 'traffic light', (250, 170, 30)),
    (20, 7, 'traffic sign', (220, 220, 0)),
    (21, 8, 'vegetation', (107, 142, 35)),
    (22, 9, 'terrain', (152, 251, 152)),
    (23, 10, 'sky', (70, 130, 180)),
    (24, 11, 'person', (220, 20, 60)),
    (25, 12, 'rider', (255, 0, 0)),
    (26, 13, 'car', (0, 0, 142)),
    (27, 14, 'truck', (0, 0, 70)),
    (28, 15, 'bus', (0, 60, 100)),
    (31, 16, 'train', (0, 80, 100)),
    (32, 17, 'motorcycle', (0, 0, 230)),
    (33, 18, 'bicycle', (119, 11, 32)),
)
CLASS_NAMES = tuple(c[2] for c in CLASSES)
COLORS = tuple(c[3] for c in CLASSES)
IGNORE_LABEL = 255
NUM_LABEL_IDS = 34  # 0 unlabeled .. 33 bicycle; license plate (-1) is stored as 255
SPLITS = ('train', 'val')
IMAGE_ZIP = 'leftImg8bit_trainvaltest.zip'
LABEL_ZIP = 'gtFine_trainvaltest.zip'
_IMAGE_RE = re.compile(r'^leftImg8bit/([^/]+)/([^/]+)/([^/]+)_leftImg8bit\.png$')


def label_map() -> validation.LabelMap:
  """Label id -> train id (255 for the ids outside the 19 classes)."""
  table = np.full(256, -1, np.int32)
  table[:NUM_LABEL_IDS] = IGNORE_LABEL
  table[255] = IGNORE_LABEL
  for label_id, train_id, _, _ in CLASSES:
    table[label_id] = train_id
  return validation.LabelMap(table, f'a Cityscapes label id (0..{NUM_LABEL_IDS - 1}) nor 255')


def find_cityscapes_dir(root: str) -> str:
  """The folder under `root` (or `root`) with leftImg8bit/ + gtFine/ or their zips."""
  for candidate in (root, os.path.join(root, 'cityscapes')):
    if (os.path.isdir(os.path.join(candidate, 'leftImg8bit')) or
        os.path.isfile(os.path.join(candidate, IMAGE_ZIP))):
      return candidate
  raise UserError(f'data.root={root!r} holds neither leftImg8bit/ + gtFine/ nor '
                  f'{IMAGE_ZIP} + {LABEL_ZIP} (expected ROOT/leftImg8bit/train/<city>/...).')


def _label_member(split: str, city: str, stem: str) -> str:
  return f'gtFine/{split}/{city}/{stem}_gtFine_labelIds.png'


def list_pairs(city_dir: str):
  """{split: [(name, image, label)]} where image/label are paths, or zip members if zipped.

  Returns (pairs, zipped).
  """
  pairs = collections.defaultdict(list)
  if os.path.isdir(os.path.join(city_dir, 'leftImg8bit')):
    for split in SPLITS:
      split_dir = os.path.join(city_dir, 'leftImg8bit', split)
      if not os.path.isdir(split_dir) or not os.path.isdir(os.path.join(city_dir, 'gtFine', split)):
        continue  # a split without labels
      pairs[split] = []
      for city in sorted(os.listdir(split_dir)):
        for f in sorted(os.listdir(os.path.join(split_dir, city))):
          if f.endswith('_leftImg8bit.png'):
            stem = f[:-len('_leftImg8bit.png')]
            label = os.path.join(city_dir, *_label_member(split, city, stem).split('/'))
            pairs[split].append((stem, os.path.join(split_dir, city, f), label))
    return dict(pairs), False
  for zip_name in (IMAGE_ZIP, LABEL_ZIP):
    if not os.path.isfile(os.path.join(city_dir, zip_name)):
      raise UserError(f'{os.path.join(city_dir, zip_name)}: not found; Cityscapes from zips '
                      f'needs both {IMAGE_ZIP} and {LABEL_ZIP}.')
  labelled = {m.split('/')[1] for m in _zip(os.path.join(city_dir, LABEL_ZIP)).namelist()
              if m.startswith('gtFine/') and m.count('/') >= 2}
  for member in sorted(_zip(os.path.join(city_dir, IMAGE_ZIP)).namelist()):
    match = _IMAGE_RE.match(member)
    if match and match.group(1) in SPLITS and match.group(1) in labelled:
      split, city, stem = match.groups()
      pairs[split].append((stem, member, _label_member(split, city, stem)))
  return dict(pairs), True


def _zip(path: str) -> zipfile.ZipFile:
  """An open zip, shared by the reads of one version of the file."""
  st = os.stat(path)
  return _open_zip(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _open_zip(path: str, size: int, mtime_ns: int) -> zipfile.ZipFile:
  del size, mtime_ns  # keys of the cache only
  try:
    return zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise UserError(f'{path}: cannot open the zip ({e}).') from None


def _read_member(zip_path: str, member: str) -> validation.Source:
  name = f'{zip_path}:{member}'
  try:
    return name, _zip(zip_path).read(member)
  except KeyError:
    raise UserError(f'{name}: not in the zip.') from None
  except (zipfile.BadZipFile, OSError) as e:
    raise UserError(f'{name}: cannot read it from the zip ({e}).') from None


class Cityscapes(base.SegmentationBuilder):
  """TFDS builder for Cityscapes fine (19 train ids, ignore 255), from folders or zips."""
  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  CLASS_NAMES = CLASS_NAMES
  COLORS = COLORS
  IGNORE_LABEL = IGNORE_LABEL
  HOMEPAGE = 'https://www.cityscapes-dataset.com'

  def _split_generators(self, dl_manager):
    city_dir = find_cityscapes_dir(str(dl_manager.manual_dir))
    pairs, zipped = list_pairs(city_dir)
    mapping = label_map()

    def example(name, image, label):
      if zipped:
        read = lambda: validation.read_pair(
            _read_member(os.path.join(city_dir, IMAGE_ZIP), image),
            _read_member(os.path.join(city_dir, LABEL_ZIP), label), 0, IGNORE_LABEL, mapping)
      else:
        read = lambda: validation.read_pair(image, label, 0, IGNORE_LABEL, mapping)
      return name, read

    return self.split_generators(
        {split: [example(*p) for p in split_pairs] for split, split_pairs in pairs.items()},
        city_dir)


def fingerprint_files(root: str):
  """The files whose paths, sizes and times key the prepared copy of `root`."""
  city_dir = find_cityscapes_dir(root)
  pairs, zipped = list_pairs(city_dir)
  if zipped:
    return [os.path.join(city_dir, IMAGE_ZIP), os.path.join(city_dir, LABEL_ZIP)]
  return [path for split in sorted(pairs) for _, image, label in pairs[split]
          for path in (image, label)]
