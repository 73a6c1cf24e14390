"""Joint image/label ops share one random draw, eagerly and inside tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_jax.data import preprocess
from deeplab_jax.errors import UserError

SPEC = 'random_scale(0.5, 2.0)|pad_to(40, 48)|random_crop(40, 48)|flip_lr'
IGNORE = 255


def coded_example(h=30, w=44):
  """An image whose channels encode (row, column, 1) and a label that encodes the (row band,
  column band) of each pixel: after any joint geometric op, a pixel's label must still match
  its image's codes.
  """
  rows, cols = np.mgrid[0:h, 0:w]
  image = np.stack([rows * 8.0, cols * 5.0, np.full_like(rows, 200.0)], -1).astype(np.float32)
  label = ((rows // 3) * 16 + cols // 3)[..., None].astype(np.int32)
  return {'image': tf.constant(image), 'label': tf.constant(label)}


def check_aligned(out):
  image, label = np.asarray(out['image']), np.asarray(out['label'])[..., 0]
  assert image.shape == (40, 48, 3) and label.shape == (40, 48)
  real = image[..., 2] > 100  # pixels from the image, not padding
  padded = image[..., 2] == 0
  assert np.all(label[padded] == IGNORE)
  # Nearest-neighbour labels: the row and column bands of each real pixel agree with the
  # image's codes up to the bilinear blur of one source pixel.
  rows_from_image = np.round(image[..., 0][real] / 8.0)
  cols_from_image = np.round(image[..., 1][real] / 5.0)
  assert np.all(np.abs(rows_from_image // 3 - label[real] // 16) <= 1)
  assert np.all(np.abs(cols_from_image // 3 - label[real] % 16) <= 1)
  valid = {r * 16 + c for r in range(10) for c in range(15)} | {IGNORE}
  assert set(np.unique(label)) <= valid  # no interpolated label values


@pytest.mark.parametrize('seed', range(8))
def test_joint_ops_eager(seed):
  op = preprocess.build(SPEC, ignore_label=IGNORE)
  out = op(coded_example(), tf.constant([seed, 7], tf.int64))
  check_aligned(out)
  again = op(coded_example(), tf.constant([seed, 7], tf.int64))
  np.testing.assert_array_equal(out['image'], again['image'])  # stateless: same seed, same draw


def test_joint_ops_inside_tf_data():
  op = preprocess.build(SPEC, ignore_label=IGNORE)
  ds = tf.data.Dataset.range(16).map(
      lambda i: op(coded_example(), tf.stack([tf.constant(3, tf.int64), i])),
      num_parallel_calls=4)
  outs = list(ds.as_numpy_iterator())
  for out in outs:
    check_aligned(out)
  columns = [out['image'][0, :, 1][out['image'][0, :, 2] > 100] for out in outs]
  flips = [c[0] > c[-1] for c in columns]
  assert any(flips) and not all(flips)  # both flipped and unflipped draws happen


def test_flip_moves_image_and_label_together():
  ex = coded_example()
  ex['label'] = tf.cast(ex['image'][..., 1:2] // 5, tf.int32)  # label = column index
  op = preprocess.build('flip_lr(1.0)', ignore_label=IGNORE)
  out = op(ex, tf.constant([0, 0], tf.int64))
  np.testing.assert_array_equal(np.asarray(out['image'])[..., 1] // 5,
                                np.asarray(out['label'])[..., 0])
  assert np.asarray(out['label'])[0, 0, 0] == 43


def test_unknown_op_names_it():
  with pytest.raises(UserError, match="'rotate' in 'normalize|rotate\\(3\\)' is not one of"):
    preprocess.parse('normalize|rotate(3)')
