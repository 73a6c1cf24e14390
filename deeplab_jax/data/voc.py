"""PASCAL VOC 2012 segmentation (Everingham et al. 2010), with SBD (Hariharan et al. 2011).

The data folder (`config.data.root`) holds `VOCdevkit/VOC2012/` as extracted from
`VOCtrainval_11-May-2012.tar` (`JPEGImages/`, `SegmentationClass/`,
`ImageSets/Segmentation/<split>.txt`), and optionally `benchmark_RELEASE/` as extracted from
SBD's `benchmark.tgz` (`dataset/{img,cls,train.txt,val.txt}`). Every list with labels is a
split (train 1,464, val 1,449, trainval). Labels are palette PNGs read as palette indices:
0 background, 1..20 the classes, 255 (object boundaries and difficult regions) ignored.
With SBD present, the `train_aug` split is SBD train + SBD val + VOC train less every VOC
val image, each image once, with VOC's own label where it has one and SBD's
`cls/<id>.mat` (GTcls.Segmentation) otherwise: 10,582 images on the full data.
"""

import os

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from deeplab_jax.data import base
from deeplab_jax.data import validation
from deeplab_jax.errors import UserError

CLASS_NAMES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
               'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person',
               'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')
COLORS = base.bitwise_palette(len(CLASS_NAMES))
IGNORE_LABEL = 255
TRAIN_AUG = 'train_aug'


def find_voc_dir(root: str) -> str:
  """The VOC2012 folder (holding JPEGImages/) under `root`, with a clear error if absent."""
  for candidate in (os.path.join(root, 'VOCdevkit', 'VOC2012'), os.path.join(root, 'VOC2012'),
                    root):
    if os.path.isdir(os.path.join(candidate, 'JPEGImages')):
      return candidate
  raise UserError(f'data.root={root!r} holds no VOCdevkit/VOC2012/ folder with JPEGImages/ '
                  '(expected ROOT/VOCdevkit/VOC2012/JPEGImages, ...).')


def find_sbd_dir(root: str):
  """SBD's `benchmark_RELEASE/dataset` folder under `root`, or None."""
  sbd = os.path.join(root, 'benchmark_RELEASE', 'dataset')
  return sbd if os.path.isdir(os.path.join(sbd, 'cls')) else None


def read_ids(list_path: str):
  """The image ids of a list file, one per line."""
  try:
    with open(list_path) as f:
      return [line.split()[0] for line in f if line.strip()]
  except OSError as e:
    raise UserError(f'{list_path}: cannot read the list ({e}).') from None


def _voc_lists(voc_dir: str):
  list_dir = os.path.join(voc_dir, 'ImageSets', 'Segmentation')
  if not os.path.isdir(list_dir):
    raise UserError(f'{list_dir}: not found; VOC segmentation needs its <split>.txt lists.')
  return {f[:-4]: os.path.join(list_dir, f) for f in sorted(os.listdir(list_dir))
          if f.endswith('.txt')}


def list_pairs(root: str):
  """{split: [(id, image path, label path)]}; SBD labels are `.mat` files."""
  voc_dir = find_voc_dir(root)
  voc_label = lambda i: os.path.join(voc_dir, 'SegmentationClass', f'{i}.png')
  voc_image = lambda i: os.path.join(voc_dir, 'JPEGImages', f'{i}.jpg')
  ids = {split: read_ids(path) for split, path in _voc_lists(voc_dir).items()}
  # A list none of whose labels exist (test) is not a segmentation split here.
  pairs = {split: [(i, voc_image(i), voc_label(i)) for i in split_ids]
           for split, split_ids in ids.items()
           if not split_ids or any(os.path.exists(voc_label(i)) for i in split_ids)}
  sbd_dir = find_sbd_dir(root)
  if sbd_dir:
    if 'val' not in ids:
      raise UserError(f'{voc_dir}: train_aug leaves out VOC val, but '
                      'ImageSets/Segmentation/val.txt is missing.')
    sbd_ids = [i for s in ('train', 'val') for i in read_ids(os.path.join(sbd_dir, f'{s}.txt'))]
    val = set(ids['val'])
    members = sorted(set(sbd_ids + ids.get('train', [])) - val)
    pairs[TRAIN_AUG] = []
    for i in members:
      image = voc_image(i)
      if not os.path.exists(image):
        image = os.path.join(sbd_dir, 'img', f'{i}.jpg')
      label = voc_label(i)
      if not os.path.exists(label):
        label = os.path.join(sbd_dir, 'cls', f'{i}.mat')
      pairs[TRAIN_AUG].append((i, image, label))
  return pairs


def read_sbd_label(path: str) -> np.ndarray:
  """GTcls.Segmentation of an SBD `cls/<id>.mat` file."""
  try:
    mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    return np.asarray(mat['GTcls'].Segmentation)
  except FileNotFoundError:
    raise UserError(f'{path}: file not found.') from None
  except Exception as e:  # scipy raises many types for corrupt or unexpected files.
    raise UserError(f'{path}: cannot read GTcls.Segmentation ({type(e).__name__}: {e}).') from None


def read_pair(image_path: str, label_path: str):
  """(uint8 RGB image, uint8 label of palette indices 0..20 and 255)."""
  label_map = validation.LabelMap.identity(len(CLASS_NAMES), IGNORE_LABEL)
  if not label_path.endswith('.mat'):
    return validation.read_pair(image_path, label_path, len(CLASS_NAMES), IGNORE_LABEL)
  return validation.check_pair(validation.read_image(image_path, 'RGB'),
                               read_sbd_label(label_path), image_path, label_path, label_map)


class Voc(base.SegmentationBuilder):
  """TFDS builder for PASCAL VOC 2012 (21 classes, ignore 255), plus train_aug with SBD."""
  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  CLASS_NAMES = CLASS_NAMES
  COLORS = COLORS
  IGNORE_LABEL = IGNORE_LABEL
  HOMEPAGE = 'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/'

  def _split_generators(self, dl_manager):
    root = str(dl_manager.manual_dir)
    example = lambda i, image, label: (i, lambda: read_pair(image, label))
    return self.split_generators(
        {split: [example(*p) for p in split_pairs]
         for split, split_pairs in list_pairs(root).items()}, find_voc_dir(root))


def fingerprint_files(root: str):
  """The files whose paths, sizes and times key the prepared copy of `root`."""
  voc_dir = find_voc_dir(root)
  files = list(_voc_lists(voc_dir).values())
  sbd_dir = find_sbd_dir(root)
  if sbd_dir:
    files += [os.path.join(sbd_dir, f'{s}.txt') for s in ('train', 'val')]
  pairs = list_pairs(root)
  seen = set()
  for split in sorted(pairs):
    for _, image, label in pairs[split]:
      for path in (image, label):
        if path not in seen:
          seen.add(path)
          files.append(path)
  return files
