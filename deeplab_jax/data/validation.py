"""Reading an image/label pair with one-line errors that name the file and the bad value."""

import numpy as np
from PIL import Image

from deeplab_jax.errors import UserError


def read_image(path: str, mode: str) -> np.ndarray:
  try:
    with Image.open(path) as im:
      im.load()
      return np.asarray(im.convert(mode) if mode == 'RGB' else im)
  except FileNotFoundError:
    raise UserError(f'{path}: file not found.') from None
  except Exception as e:  # PIL raises many types for corrupt or truncated files.
    raise UserError(f'{path}: cannot decode image ({e}).') from None


def read_pair(image_path: str, label_path: str, num_classes: int, ignore_label: int):
  """(uint8 RGB image [H, W, 3], uint8 label [H, W]) after checking sizes and label values."""
  image = read_image(image_path, 'RGB')
  label = read_image(label_path, 'L')
  if label.ndim != 2:
    raise UserError(f'{label_path}: a label must be a single-channel PNG, got shape {label.shape}.')
  if label.shape != image.shape[:2]:
    raise UserError(f'{label_path}: label size {label.shape} differs from image size '
                     f'{image.shape[:2]} of {image_path}.')
  values = np.unique(label)
  bad = values[(values >= num_classes) & (values != ignore_label)]
  if bad.size:
    raise UserError(f'{label_path}: label value {int(bad[0])} is neither a class '
                     f'(0..{num_classes - 1}) nor the ignore label {ignore_label}.')
  return image, label.astype(np.uint8)
