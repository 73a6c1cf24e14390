"""ADE20K SceneParsing (Zhou et al. 2017): the 150-class MIT Scene Parsing Benchmark.

The data folder (`config.data.root`) is `ADEChallengeData2016/` as extracted from
`ADEChallengeData2016.zip` (or the folder holding it): `images/{training,validation}/*.jpg`,
`annotations/{training,validation}/*.png` and `objectInfo150.txt`. The splits are `train`
(20,210) and `val` (2,000). Labels are 8-bit PNGs with 0 = "other" and 1..150 the classes
of objectInfo150.txt; here class k is stored value k + 1, and 0 becomes the ignore label
255, so "other" pixels are neither trained on nor scored. Class names are the first name
of each objectInfo150.txt row.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from deeplab_jax.data import base
from deeplab_jax.data import validation
from deeplab_jax.errors import UserError

CLASS_NAMES = ('wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane',
               'grass', 'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain',
               'plant', 'curtain', 'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house',
               'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk', 'rock',
               'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column',
               'signboard', 'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper',
               'fireplace', 'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case',
               'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
               'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop',
               'stove', 'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar',
               'arcade machine', 'hovel', 'bus', 'towel', 'light', 'truck', 'tower', 'chandelier',
               'awning', 'streetlight', 'booth', 'television', 'airplane', 'dirt track', 'apparel',
               'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
               'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer',
               'plaything', 'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent',
               'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name',
               'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket',
               'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan',
               'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower', 'radiator',
               'glass', 'clock', 'flag')
COLORS = base.bitwise_palette(len(CLASS_NAMES) + 1)[1:]
IGNORE_LABEL = 255
SPLITS = {'train': 'training', 'val': 'validation'}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def find_ade_dir(root: str) -> str:
  """The ADEChallengeData2016 folder (`root` or under it), with a clear error if absent."""
  for candidate in (root, os.path.join(root, 'ADEChallengeData2016')):
    if os.path.isdir(os.path.join(candidate, 'images')):
      return candidate
  raise UserError(f'data.root={root!r} holds no ADEChallengeData2016/ folder with images/ and '
                  'annotations/ (expected ROOT/images/training, ROOT/annotations/training, ...).')


def read_class_names(path: str):
  """The 150 class names of objectInfo150.txt (the first name of each row)."""
  try:
    with open(path) as f:
      rows = [line.rstrip('\n').split('\t') for line in f if line.strip()]
  except OSError as e:
    raise UserError(f'{path}: cannot read it ({e}).') from None
  rows = rows[1:] if rows and rows[0][0].strip() == 'Idx' else rows
  if len(rows) != len(CLASS_NAMES) or any(len(r) != 5 for r in rows):
    raise UserError(f'{path}: expected {len(CLASS_NAMES)} rows of "Idx Ratio Train Val Name" '
                    f'separated by tabs, got {len(rows)} rows.')
  return tuple(r[4].split(',')[0].strip() for r in rows)


def label_map() -> validation.LabelMap:
  """Stored 0 ("other") -> 255, 1..150 -> classes 0..149."""
  table = np.full(256, -1, np.int32)
  table[0] = IGNORE_LABEL
  table[1:len(CLASS_NAMES) + 1] = np.arange(len(CLASS_NAMES))
  return validation.LabelMap(table, f'0 (other) nor a class (1..{len(CLASS_NAMES)})')


def list_pairs(ade_dir: str):
  """{split: [(name, image path, label path)]} of the splits whose images folder exists."""
  pairs = {}
  for split, folder in SPLITS.items():
    image_dir = os.path.join(ade_dir, 'images', folder)
    if os.path.isdir(image_dir):
      pairs[split] = [
          (os.path.splitext(f)[0], os.path.join(image_dir, f),
           os.path.join(ade_dir, 'annotations', folder, os.path.splitext(f)[0] + '.png'))
          for f in sorted(os.listdir(image_dir)) if f.lower().endswith(IMAGE_EXTENSIONS)]
  return pairs


class Ade20k(base.SegmentationBuilder):
  """TFDS builder for ADE20K SceneParsing (150 classes, "other" -> ignore 255)."""
  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  CLASS_NAMES = CLASS_NAMES
  COLORS = COLORS
  IGNORE_LABEL = IGNORE_LABEL
  HOMEPAGE = 'http://sceneparsing.csail.mit.edu'

  def _split_generators(self, dl_manager):
    ade_dir = find_ade_dir(str(dl_manager.manual_dir))
    info_path = os.path.join(ade_dir, 'objectInfo150.txt')
    if os.path.exists(info_path):
      self.info.metadata['class_names'] = list(read_class_names(info_path))
    mapping = label_map()
    example = lambda name, image, label: (
        name, lambda: validation.read_pair(image, label, 0, IGNORE_LABEL, mapping))
    pairs = list_pairs(ade_dir)
    if not pairs:
      raise UserError(f'{ade_dir}: no images/training or images/validation folder.')
    return self.split_generators(
        {split: [example(*p) for p in split_pairs] for split, split_pairs in pairs.items()},
        ade_dir)


def fingerprint_files(root: str):
  """The files whose paths, sizes and times key the prepared copy of `root`."""
  ade_dir = find_ade_dir(root)
  info_path = os.path.join(ade_dir, 'objectInfo150.txt')
  pairs = list_pairs(ade_dir)
  return ([info_path] if os.path.exists(info_path) else []) + [
      path for split in sorted(pairs) for _, image, label in pairs[split]
      for path in (image, label)]
