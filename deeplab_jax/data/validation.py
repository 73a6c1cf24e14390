"""Reading an image/label pair with one-line errors that name the file and the bad value.

A source is a path, or a `(name, bytes)` pair for a member read from an archive; the
name is what errors show.
"""

import dataclasses
import io
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image

from deeplab_jax.errors import UserError

Source = Union[str, Tuple[str, bytes]]


@dataclasses.dataclass(frozen=True)
class LabelMap:
  """Stored label value -> class id or ignore label (-1: not a valid stored value)."""
  table: np.ndarray  # int32 [256]
  valid: str         # the valid stored values, for errors: 'a class (0..10) nor ...'

  @classmethod
  def identity(cls, num_classes: int, ignore_label: int) -> 'LabelMap':
    """Labels stored as class ids 0..num_classes - 1 and the ignore label."""
    table = np.full(256, -1, np.int32)
    table[:num_classes] = np.arange(num_classes)
    table[ignore_label] = ignore_label
    return cls(table, f'a class (0..{num_classes - 1}) nor the ignore label {ignore_label}')

  def apply(self, label: np.ndarray, name: str) -> np.ndarray:
    if label.dtype.kind not in 'ui':  # 1-bit PNGs decode as bool
      label = label.astype(np.int64)
    values = np.unique(label)
    bad = values[(values < 0) | (values > 255)]
    if not bad.size:
      bad = values[self.table[values] < 0]
    if bad.size:
      raise UserError(f'{name}: label value {int(bad[0])} is neither {self.valid}.')
    return self.table[label].astype(np.uint8)


def source_name(source: Source) -> str:
  return source if isinstance(source, str) else source[0]


def read_image(source: Source, mode: str) -> np.ndarray:
  """The decoded image: RGB for mode 'RGB', else the stored values (palette indices for 'P')."""
  name = source_name(source)
  try:
    with Image.open(source if isinstance(source, str) else io.BytesIO(source[1])) as im:
      im.load()
      return np.asarray(im.convert(mode) if mode == 'RGB' else im)
  except FileNotFoundError:
    raise UserError(f'{name}: file not found.') from None
  except Exception as e:  # PIL raises many types for corrupt or truncated files.
    raise UserError(f'{name}: cannot decode image ({e}).') from None


def check_pair(image: np.ndarray, label: np.ndarray, image_name: str, label_name: str,
               label_map: LabelMap) -> Tuple[np.ndarray, np.ndarray]:
  """(image, mapped uint8 label) after checking the label's shape, size and values."""
  if label.ndim != 2:
    raise UserError(f'{label_name}: a label must be a single-channel PNG, got shape '
                    f'{label.shape}.')
  if label.shape != image.shape[:2]:
    raise UserError(f'{label_name}: label size {label.shape} differs from image size '
                    f'{image.shape[:2]} of {image_name}.')
  return image, label_map.apply(label, label_name)


def read_pair(image: Source, label: Source, num_classes: int, ignore_label: int,
              label_map: Optional[LabelMap] = None):
  """(uint8 RGB image [H, W, 3], uint8 label [H, W]) after checking sizes and label values.

  `label_map` (default: identity over num_classes) maps stored values to class ids.
  """
  label_map = label_map or LabelMap.identity(num_classes, ignore_label)
  return check_pair(read_image(image, 'RGB'), read_image(label, 'L'), source_name(image),
                    source_name(label), label_map)
