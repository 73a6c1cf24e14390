"""Your own data: images and label PNGs in one folder per split.

The data folder (`config.data.root`) holds

  images/<split>/.../<stem>.jpg|.jpeg|.png   RGB images, nested folders allowed
  labels/<split>/.../<stem>.png              8-bit single-channel (or palette) PNGs of
                                             class ids, same relative folder and stem
  classes.txt                                optional: one class per line, `name` or
                                             `name R G B`; line k is class k - 1

Every folder under `images/` is a split. Label values are class ids 0..K-1 or the ignore
label (`config.data.ignore_label`, 255 by default). Without classes.txt the classes are
class_0..class_{K-1}, with K = 1 + the largest label value other than the ignore label.
"""

import os
from typing import Tuple

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from deeplab_jax.data import base
from deeplab_jax.data import validation
from deeplab_jax.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
Color = Tuple[int, int, int]
CLASSES_FILE = 'classes.txt'


def find_folder(root: str) -> str:
  if not os.path.isdir(os.path.join(root, 'images')):
    raise UserError(f'data.root={root!r} holds no images/ folder (expected ROOT/images/<split>/ '
                    'and ROOT/labels/<split>/).')
  return root


def check_ignore_label(ignore_label) -> int:
  if not isinstance(ignore_label, (int, np.integer)) or not 0 <= ignore_label <= 255:
    raise UserError(f'data.ignore_label={ignore_label!r} is not an integer in 0..255.')
  return int(ignore_label)


def list_pairs(root: str):
  """{split: [(name, image path, label path)]}; name is the relative path without extension."""
  image_root = os.path.join(find_folder(root), 'images')
  pairs = {}
  for split in sorted(os.listdir(image_root)):
    split_dir = os.path.join(image_root, split)
    if not os.path.isdir(split_dir):
      continue
    pairs[split], seen = [], {}
    for folder, dirs, files in os.walk(split_dir):
      dirs.sort()
      for f in sorted(files):
        if not f.lower().endswith(IMAGE_EXTENSIONS):
          continue
        image = os.path.join(folder, f)
        name = os.path.splitext(os.path.relpath(image, split_dir))[0].replace(os.sep, '/')
        if name in seen:
          raise UserError(f'{image}: has the same stem as {seen[name]}, so both would take '
                          'one label file; rename one.')
        seen[name] = image
        label = os.path.join(root, 'labels', split, *name.split('/')) + '.png'
        pairs[split].append((name, image, label))
  return pairs


def _read_classes_file(path: str):
  names, colors = [], []
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      color = None
      if len(parts) >= 4 and all(p.lstrip('-').isdigit() for p in parts[-3:]):
        color = tuple(int(p) for p in parts[-3:])
        if not all(0 <= c <= 255 for c in color):
          raise UserError(f'{path}:{line_number}: colour {color} is not three values in 0..255.')
        parts = parts[:-3]
      names.append(' '.join(parts))
      colors.append(color)
  if not names:
    raise UserError(f'{path}: lists no classes (expected one `name` or `name R G B` a line).')
  palette = base.bitwise_palette(len(names))
  return names, [c or palette[i] for i, c in enumerate(colors)]


def _largest_label(root: str, ignore_label: int) -> int:
  """The largest label value other than the ignore label over every readable label file."""
  largest = -1
  for split_pairs in list_pairs(root).values():
    for _, _, label_path in split_pairs:
      try:
        with Image.open(label_path) as im:
          values = np.unique(np.asarray(im))
      except Exception:  # an unreadable label is reported (or skipped) when it is prepared
        continue
      values = values[values != ignore_label]
      if values.size:
        largest = max(largest, int(values.max()))
  return largest


def read_classes(root: str, ignore_label: int) -> Tuple[Tuple[str, ...], Tuple[Color, ...]]:
  """(class names, colours) of the folder: from classes.txt, else from the label values.

  Without classes.txt this reads every label file once.
  """
  ignore_label = check_ignore_label(ignore_label)
  path = os.path.join(find_folder(root), CLASSES_FILE)
  if os.path.exists(path):
    names, colors = _read_classes_file(path)
    where = path
  else:
    count = _largest_label(root, ignore_label) + 1
    if count == 0:
      raise UserError(f'{os.path.join(root, "labels")}: no readable label file holds a value other '
                      f'than the ignore label {ignore_label}, so there are no classes.')
    names = [f'class_{k}' for k in range(count)]
    colors = base.bitwise_palette(count)
    where = f'the labels of {root}'
  if ignore_label < len(names):
    raise UserError(f'data.ignore_label={ignore_label} is one of the {len(names)} classes of '
                    f'{where}; set it above them (255 is usual).')
  return tuple(names), tuple(tuple(c) for c in colors)


class Folder(base.SegmentationBuilder):
  """TFDS builder for a folder of your own images and labels; classes come from the folder."""
  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

  def __init__(self, *, ignore_label: int = 255, **kwargs):
    self.ignore_label = check_ignore_label(ignore_label)
    super().__init__(**kwargs)
    self._original_state['ignore_label'] = self.ignore_label  # for pickling

  def _split_generators(self, dl_manager):
    root = find_folder(str(dl_manager.manual_dir))
    names, colors = read_classes(root, self.ignore_label)
    self.info.metadata.update(class_names=list(names), colors=[list(c) for c in colors],
                              ignore_label=self.ignore_label)
    label_map = validation.LabelMap.identity(len(names), self.ignore_label)
    example = lambda name, image, label: (
        name, lambda: validation.read_pair(image, label, len(names), self.ignore_label,
                                           label_map))
    return self.split_generators(
        {split: [example(*p) for p in split_pairs]
         for split, split_pairs in list_pairs(root).items()}, os.path.join(root, 'images'))


def fingerprint_files(root: str):
  """The files whose paths, sizes and times key the prepared copy of `root`."""
  classes = os.path.join(find_folder(root), CLASSES_FILE)
  pairs = list_pairs(root)
  return ([classes] if os.path.exists(classes) else []) + [
      path for split in sorted(pairs) for _, image, label in pairs[split]
      for path in (image, label)]
