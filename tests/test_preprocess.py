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


def test_resize_eager_and_inside_tf_data():
  op = preprocess.build('resize(40, 48)', ignore_label=IGNORE)
  check_aligned(op(coded_example(), tf.constant([0, 0], tf.int64)))
  ds = tf.data.Dataset.range(3).map(lambda i: op(coded_example(), tf.stack([i, i])))
  for out in ds.as_numpy_iterator():
    check_aligned(out)
  # Shrinking: labels are still source labels (nearest), at their image pixels.
  out = preprocess.build('resize(15, 11)', ignore_label=IGNORE)(coded_example(),
                                                                tf.constant([0, 0], tf.int64))
  image, label = np.asarray(out['image']), np.asarray(out['label'])[..., 0]
  assert image.shape == (15, 11, 3) and label.shape == (15, 11)
  assert set(np.unique(label)) <= {r * 16 + c for r in range(10) for c in range(15)}
  assert np.all(np.abs(np.round(image[..., 0] / 8.0) // 3 - label // 16) <= 1)
  assert np.all(np.abs(np.round(image[..., 1] / 5.0) // 3 - label % 16) <= 1)


def photo_example(h=20, w=24):
  rng = np.random.default_rng(0)
  image = rng.uniform(20, 235, (h, w, 3)).astype(np.float32)
  label = rng.integers(0, 5, (h, w, 1)).astype(np.int32)
  return {'image': tf.constant(image), 'label': tf.constant(label)}


JITTER = 'color_jitter(32, 0.4, 0.4, 0.1)'


def check_jittered(out, ex):
  image = np.asarray(out['image'])
  assert image.dtype == np.float32 and image.shape == (20, 24, 3)
  assert image.min() >= 0 and image.max() <= 255
  assert not np.allclose(image, np.asarray(ex['image']), atol=1)  # something changed
  np.testing.assert_array_equal(out['label'], ex['label'])  # labels untouched


def test_color_jitter_eager():
  op = preprocess.build(JITTER, ignore_label=IGNORE)
  ex = photo_example()
  out = op(ex, tf.constant([1, 2], tf.int64))
  check_jittered(out, ex)
  np.testing.assert_array_equal(out['image'], op(ex, tf.constant([1, 2], tf.int64))['image'])
  assert not np.allclose(out['image'], op(ex, tf.constant([1, 3], tf.int64))['image'])
  # Brightness alone shifts every channel of every pixel by one delta within the maximum.
  out = preprocess.build('color_jitter(32)', ignore_label=IGNORE)(ex, tf.constant([5, 5],
                                                                                 tf.int64))
  delta = np.asarray(out['image']) - np.asarray(ex['image'])
  assert np.allclose(delta, delta.flat[0], atol=1e-3) and 0 < abs(delta.flat[0]) <= 32
  # All zero: the image comes back (up to float rounding).
  same = preprocess.build('color_jitter(0, 0, 0, 0)', ignore_label=IGNORE)(
      ex, tf.constant([0, 0], tf.int64))
  np.testing.assert_allclose(same['image'], ex['image'], atol=1e-3)


def test_color_jitter_inside_tf_data():
  op = preprocess.build(JITTER, ignore_label=IGNORE)
  ex = photo_example()
  ds = tf.data.Dataset.range(8).map(lambda i: op(photo_example(), tf.stack([i, i])),
                                    num_parallel_calls=4)
  outs = list(ds.as_numpy_iterator())
  for out in outs:
    check_jittered(out, ex)
  assert len({float(out['image'].mean()) for out in outs}) == 8  # each example its own draw


def test_color_jitter_rejects_bad_ranges():
  with pytest.raises(UserError, match='color_jitter hue=0.7 is not in 0..0.5'):
    preprocess.build('color_jitter(0, 0, 0, 0.7)', ignore_label=IGNORE)
  with pytest.raises(UserError, match='color_jitter contrast=-0.1 is not in 0..1.0'):
    preprocess.build('color_jitter(0, -0.1)', ignore_label=IGNORE)


def test_train_spec_adds_color_jitter_before_normalize():
  from configs import common  # pylint: disable=g-import-not-at-top
  from deeplab_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  config = common.get_base_config().data
  assert 'color_jitter' not in input_pipeline.train_spec(config)
  config.brightness, config.hue = 16.0, 0.05
  spec = input_pipeline.train_spec(config)
  assert 'color_jitter(16.0, 0.0, 0.0, 0.05)|pad_to(' in spec
  names = [name for name, _ in preprocess.parse(spec)]
  assert names.index('color_jitter') < names.index('pad_to') < names.index('normalize')


def test_train_spec_normalizes_the_crop_last_as_if_it_normalized_first():
  """Padding with the mean colour and normalising the crop gives exactly what normalising
  the whole image and padding it with 0 gives, at a fraction of the work."""
  from configs import common  # pylint: disable=g-import-not-at-top
  from deeplab_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  config = common.get_base_config().data
  config.image_scale, config.crop_size = 0.5, (40, 48)
  fixed, random = input_pipeline.train_specs(config)
  assert fixed == 'scale(0.5)' and random.startswith('random_scale(')
  assert [name for name, _ in preprocess.parse(random)][-1] == 'normalize'
  mean, std = tuple(config.mean), tuple(config.std)
  rng = np.random.default_rng(0)
  example = {'image': tf.constant(rng.uniform(0, 255, (30, 37, 3)), tf.float32),
             'label': tf.constant(rng.integers(0, 5, (30, 37, 1)), tf.int32)}
  seed = tf.constant([1, 2], tf.int64)
  now = preprocess.build(f'pad_to(40, 48, {mean})|random_crop(40, 48)|normalize({mean}, {std})',
                         ignore_label=IGNORE)(example, seed)
  before = preprocess.build(f'normalize({mean}, {std})|pad_to(40, 48)|random_crop(40, 48)',
                            ignore_label=IGNORE)(example, seed)  # one place to crop: no draw
  np.testing.assert_array_equal(now['image'], before['image'])
  np.testing.assert_array_equal(now['label'], before['label'])
  assert np.sum(np.asarray(now['image']) == 0) >= 3 * (40 * 48 - 30 * 37)  # padding is 0


def test_pad_to_fills_each_channel():
  example = {'image': tf.ones([2, 3, 3]), 'label': tf.zeros([2, 3, 1], tf.int32)}
  out = preprocess.build('pad_to(4, 3, (10, 20, 30))', ignore_label=IGNORE)(
      example, tf.constant([0, 0], tf.int64))
  image = np.asarray(out['image'])
  assert image.shape == (4, 3, 3)
  np.testing.assert_array_equal(image[2:], np.broadcast_to([10.0, 20.0, 30.0], (2, 3, 3)))
  np.testing.assert_array_equal(image[:2], 1.0)
  assert np.all(np.asarray(out['label'])[2:] == IGNORE)


@pytest.mark.parametrize('shape,crop,margin', [((30, 44), (12, 20), 9),    # real context inside
                                               ((5, 7), (8, 8), 11),       # short, wide mirror
                                               ((1, 6), (4, 4), 3)])       # a single row
def test_context_crop_reads_the_image_around_the_label(shape, crop, margin):
  """The label is a crop of the label padded with the ignore label (as random_crop after
  pad_to); the image is the same window `margin` px wider on each side, cut from numpy's
  'reflect' mirror of the image, then filled with the fill value where pad_to would pad."""
  h, w = shape
  rows, cols = np.mgrid[0:h, 0:w]
  image = np.stack([rows, cols, np.full_like(rows, 7)], -1).astype(np.float32)
  label = (rows * 100 + cols)[..., None].astype(np.int32)
  op = preprocess.build(f'context_crop({crop[0]}, {crop[1]}, {margin}, 250.0)',
                        ignore_label=IGNORE)
  full_h, full_w = max(h, crop[0]), max(w, crop[1])
  mirrored = np.pad(image, ((margin, margin), (margin, margin), (0, 0)), mode='reflect')
  mirrored = np.pad(mirrored, ((0, full_h - h), (0, full_w - w), (0, 0)), constant_values=250)
  labels = np.pad(label[..., 0], ((0, full_h - h), (0, full_w - w)), constant_values=IGNORE)
  tops = set()
  for seed in range(6):
    out = op({'image': tf.constant(image), 'label': tf.constant(label)},
             tf.constant([seed, 3], tf.int64))
    got_image, got_label = np.asarray(out['image']), np.asarray(out['label'])[..., 0]
    assert got_image.shape == (crop[0] + 2 * margin, crop[1] + 2 * margin, 3)
    assert got_label.shape == crop
    # The window's place, from the image's mirror coordinates (unique in its centre).
    matches = [(t, l) for t in range(full_h - crop[0] + 1) for l in range(full_w - crop[1] + 1)
               if np.array_equal(labels[t:t + crop[0], l:l + crop[1]], got_label)]
    assert matches, 'the label is no window of the padded label'
    top, left = matches[0]
    tops.add((top, left))
    np.testing.assert_array_equal(
        got_image, mirrored[top:top + crop[0] + 2 * margin, left:left + crop[1] + 2 * margin])
  if shape == (30, 44):
    assert len(tops) > 1  # the window moves with the seed


def test_train_spec_gives_the_valid_unet_context():
  """configs/unet_camvid.py's crops carry 92 px of context (context_crop); `same` does not."""
  import importlib  # pylint: disable=g-import-not-at-top
  from deeplab_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from deeplab_jax.models import unet  # pylint: disable=g-import-not-at-top
  get = importlib.import_module('configs.unet_camvid').get_config
  valid, same = get(), get('same')
  assert unet.train_margin(valid.model) == 92 and unet.train_margin(same.model) == 0
  spec = input_pipeline.train_spec(valid.data, unet.train_margin(valid.model))
  assert 'context_crop(356, 468, 92' in spec and 'random_crop' not in spec
  assert spec.index('context_crop') < spec.index('flip_lr')
  assert 'random_crop(360, 480)' in input_pipeline.train_spec(same.data, 0)  # whole images
