"""An embedded synthetic scene set: textured shapes over textured backgrounds, with occlusion.

Nothing is downloaded: every example is generated from (split, index) by a seeded
random generator, so every machine builds the same set. A class is a shape with a
texture kind (checkered discs, striped boxes, dotted triangles, striped rings); the
colours, sizes, texture periods and orientations are random, so colour alone tells
nothing and a model has to learn texture and shape (a ring and a box share stripes,
and only the hole tells a ring from a disc). Later shapes occlude earlier ones.
"""

import numpy as np
import tensorflow_datasets as tfds

from deeplab_jax.data import base

CLASS_NAMES = ('background', 'disc', 'box', 'triangle', 'ring')
COLORS = ((40, 40, 40), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200))
IGNORE_LABEL = 255
IMAGE_SIZE = 96
SPLITS = {'train': (2000, 1), 'val': (200, 2)}  # split: (number of examples, seed)
_SHAPE_TEXTURE = {1: 'checker', 2: 'stripes', 3: 'dots', 4: 'stripes'}


def _texture(rng, kind, yy, xx):
  """A two-tone pattern in [0, 1] of the given kind, random period and orientation."""
  period = rng.uniform(6.0, 12.0)
  theta = rng.uniform(0, np.pi)
  u = xx * np.cos(theta) + yy * np.sin(theta)
  v = -xx * np.sin(theta) + yy * np.cos(theta)
  if kind == 'stripes':
    return (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
  if kind == 'checker':
    return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
  if kind == 'dots':
    du = (u / period) % 1.0 - 0.5
    dv = (v / period) % 1.0 - 0.5
    return (du**2 + dv**2 < 0.09).astype(np.float32)
  raise ValueError(kind)


def _smooth_noise(rng, size, cells):
  """Low-frequency colour noise: a random grid upsampled bilinearly."""
  grid = rng.uniform(0, 255, (cells + 1, cells + 1, 3))
  t = np.linspace(0, cells, size)
  i0 = np.minimum(np.floor(t).astype(int), cells - 1)
  f = (t - i0)[:, None]
  rows = grid[i0] * (1 - f[:, :, None]) + grid[i0 + 1] * f[:, :, None]
  cols = rows[:, i0] * (1 - f.T[:, :, None]) + rows[:, i0 + 1] * f.T[:, :, None]
  return cols


def _mask(rng, cls, yy, xx, size):
  cy, cx = rng.uniform(0.1 * size, 0.9 * size, 2)
  r = rng.uniform(0.12 * size, 0.25 * size)
  if cls == 1:
    return (yy - cy)**2 + (xx - cx)**2 < r**2
  if cls == 2:
    theta = rng.uniform(0, np.pi / 2)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    a, b = r, r * rng.uniform(0.6, 1.0)
    return (np.abs(u) < a) & (np.abs(v) < b)
  if cls == 3:
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    py, px = cy + 1.3 * r * np.sin(angles), cx + 1.3 * r * np.cos(angles)
    inside = np.ones_like(yy, bool)
    for k in range(3):
      y0, x0, y1, x1 = py[k], px[k], py[(k + 1) % 3], px[(k + 1) % 3]
      inside &= ((x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0)) >= 0
    return inside
  if cls == 4:
    d2 = (yy - cy)**2 + (xx - cx)**2
    return (d2 < (1.3 * r)**2) & (d2 > (0.65 * r)**2)
  raise ValueError(cls)


def generate(index: int, seed: int, size: int = IMAGE_SIZE):
  """The example `index` of the split with `seed`: (uint8 image [H, W, 3], uint8 label [H, W])."""
  rng = np.random.default_rng([seed, index])
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  image = _smooth_noise(rng, size, cells=int(rng.integers(2, 6)))
  # Background clutter: faint textured patches, so texture alone is not the class.
  t = _texture(rng, str(rng.choice(['stripes', 'checker', 'dots'])), yy, xx)
  image = image * (1 - 0.25 * t[..., None]) + 0.25 * t[..., None] * rng.uniform(0, 255, 3)
  label = np.zeros((size, size), np.uint8)
  for _ in range(int(rng.integers(2, 6))):
    cls = int(rng.integers(1, len(CLASS_NAMES)))
    mask = _mask(rng, cls, yy, xx, size)
    pattern = _texture(rng, _SHAPE_TEXTURE[cls], yy, xx)[..., None]
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = np.where(mask[..., None], c0 * (1 - pattern) + c1 * pattern, image)
    label[mask] = cls
  image = image + rng.normal(0, 8, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8), label


class SyntheticScenes(base.SegmentationBuilder):
  """TFDS builder for the synthetic scene set (no download, no manual folder)."""
  VERSION = tfds.core.Version('1.0.0')
  CLASS_NAMES = CLASS_NAMES
  COLORS = COLORS
  IGNORE_LABEL = IGNORE_LABEL

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n, seed)
            for split, (n, seed) in SPLITS.items()}

  def _generate_examples(self, split, num_examples, seed):
    for i in range(num_examples):
      image, label = generate(i, seed)
      name = f'{split}_{i:05d}'
      yield name, {'image': image, 'label': label[..., None], 'name': name}
