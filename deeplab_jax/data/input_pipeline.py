"""tf.data input: a deterministic global example order, read per host, batched per host.

The training stream is a function of (seed, step) alone: epoch e visits the examples in
the permutation drawn from (seed, e), global batch s holds stream positions
[s * B, (s + 1) * B), and process p reads only its rows [p * B/P, (p + 1) * B/P) of each
batch from the prepared data source. Each example's augmentation is drawn from
(seed, stream position). So a resumed run sees exactly the batches an uninterrupted run
would have, and 1 process or N processes train on the same global batches.

Evaluation splits the examples into one contiguous slice per host and pads every host to
the same number of batches with masked examples: nothing is dropped.
"""

import functools
import math
import os
from typing import Dict, Iterator, List, Tuple

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from deeplab_jax.data import Dataset
from deeplab_jax.data import preprocess
from deeplab_jax.errors import UserError
from deeplab_jax.models import unet

Batch = Dict[str, np.ndarray]
_ENCODED = {'image': tfds.decode.SkipDecoding(), 'label': tfds.decode.SkipDecoding()}


def train_specs(data_config, margin: int = 0) -> Tuple[str, str]:
  """Training preprocessing as (fixed, random) specs: the fixed part (`image_scale`) is the
  same at every epoch, so `data.in_memory` applies it once; the random part follows it.
  `margin` > 0 gives each crop's image that many pixels of context on every side
  (`context_crop`; the valid U-Net's, models/unet.py `train_margin`).

  The image is normalised last, after the crop and the flip, so that the per-pixel work is
  done on the crop only; the padding is filled with the mean colour, which normalises to
  exactly 0, as if the image had been normalised first and padded with 0.
  """
  c = data_config
  h, w = c.crop_size
  fixed = [f'scale({c.image_scale})'] if c.image_scale != 1.0 else []
  ops = []
  if (c.min_scale, c.max_scale) != (1.0, 1.0):
    ops.append(f'random_scale({c.min_scale}, {c.max_scale})')
  jitter = (c.brightness, c.contrast, c.saturation, c.hue)
  if any(jitter):
    ops.append(f'color_jitter{tuple(float(x) for x in jitter)}')
  if margin:
    ops.append(f'context_crop({h}, {w}, {margin}, {tuple(c.mean)})')
  else:
    ops += [f'pad_to({h}, {w}, {tuple(c.mean)})', f'random_crop({h}, {w})']
  if c.flip:
    ops.append('flip_lr')
  ops.append(f'normalize({tuple(c.mean)}, {tuple(c.std)})')
  return '|'.join(fixed), '|'.join(ops)


def train_spec(data_config, margin: int = 0) -> str:
  """The whole preprocessing spec of training, from the config's augmentation fields."""
  return '|'.join(filter(None, train_specs(data_config, margin)))


def eval_spec(config) -> str:
  h, w = config.eval.image_size
  return f'normalize({tuple(config.data.mean)}, {tuple(config.data.std)})|pad_to({h}, {w})'


def _decode(image_bytes, label_bytes):
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  label = tf.io.decode_png(label_bytes, channels=1)
  return {'image': tf.cast(image, tf.float32), 'label': tf.cast(label, tf.int32)}


def _local_batch_size(global_batch: int, field: str) -> int:
  if global_batch % jax.process_count():
    raise UserError(f'{field}={global_batch} is not divisible by the process count '
                    f'{jax.process_count()}.')
  return global_batch // jax.process_count()


def train_batches(dataset: Dataset, config, start_step: int) -> Iterator[Batch]:
  """Host-local training batches {'image', 'label'} for steps start_step, start_step + 1, ..."""
  split = config.data.train_split
  dataset.check_split(split, 'data.train_split')
  source = dataset.builder.as_data_source(split, decoders=_ENCODED)
  n, seed = len(source), config.seed
  global_batch = config.train.batch_size
  local_batch = _local_batch_size(global_batch, 'train.batch_size')
  process = jax.process_index()

  @functools.lru_cache(maxsize=2)
  def permutation(epoch):
    return np.random.default_rng([seed, epoch]).permutation(n)

  fixed_spec, random_spec = train_specs(config.data, unet.train_margin(config.model))
  fixed = preprocess.build(fixed_spec, ignore_label=dataset.ignore_label)
  augment = preprocess.build(random_spec, ignore_label=dataset.ignore_label)

  def decode(image_bytes, label_bytes):  # the fixed ops draw nothing: any seed
    return fixed(_decode(image_bytes, label_bytes), tf.zeros([2], tf.int64))

  examples = (_decode_split(source, decode, bool(fixed_spec), split)
              if config.data.in_memory else None)

  def fetch(i):
    step, row = divmod(int(i), local_batch)
    position = step * global_batch + process * local_batch + row
    epoch, k = divmod(position, n)
    index = int(permutation(epoch)[k])
    if examples is not None:
      return (*examples[index], np.int64(position))
    example = source[index]
    return example['image'], example['label'], np.int64(position)

  def process_example(image, label, position):
    if examples is None:
      example = decode(image, label)
    else:
      example = {'image': tf.ensure_shape(tf.cast(image, tf.float32), [None, None, 3]),
                 'label': tf.ensure_shape(tf.cast(label, tf.int32), [None, None, 1])}
    example = augment(example, tf.stack([tf.constant(seed, tf.int64), position]))
    return {'image': example['image'], 'label': example['label'][..., 0]}

  if examples is None:
    types = (tf.string, tf.string, tf.int64)
  else:
    types = (tf.as_dtype(examples[0][0].dtype), tf.uint8, tf.int64)
  ds = tf.data.Dataset.range(start_step * local_batch, 2**62)
  ds = ds.map(lambda i: tf.numpy_function(fetch, [i], types))
  ds = ds.map(process_example, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(2)
  return ds.as_numpy_iterator()


def _decode_split(source, decode, resized: bool,
                  split: str) -> List[Tuple[np.ndarray, np.ndarray]]:
  """Every (image, label) of a split through `decode` (`data.in_memory`): images uint8, or
  float32 where the fixed ops resized them; labels uint8. Stops with an error before filling
  more than half of the machine's memory."""
  n = len(source)

  def read(k):
    example = source[int(k)]
    return example['image'], example['label']

  def stored(image_bytes, label_bytes):
    example = decode(image_bytes, label_bytes)
    image = example['image'] if resized else tf.cast(example['image'], tf.uint8)  # exact
    return image, tf.cast(example['label'], tf.uint8)

  ds = tf.data.Dataset.range(n)
  ds = ds.map(lambda k: tf.numpy_function(read, [k], (tf.string, tf.string)))
  ds = ds.map(stored, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  limit = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2
  examples, total = [], 0
  for image, label in ds.as_numpy_iterator():
    examples.append((image, label))
    total += image.nbytes + label.nbytes
    if total / len(examples) * n > limit:
      raise UserError(
          f'data.in_memory=True: split {split!r} ({n} examples) needs about '
          f'{total / len(examples) * n / 2**30:.1f} GiB decoded, more than half of this '
          f'machine\'s {2 * limit / 2**30:.1f} GiB; set data.in_memory=False.')
  logging.info('data.in_memory: split %r decoded, %d examples, %.2f GiB.', split, n,
               total / 2**30)
  return examples


def eval_batches(dataset: Dataset, config, split: str) -> Tuple[Iterator[Batch], int]:
  """Host-local eval batches {'image', 'label', 'mask', 'size', 'index'} and their number (the
  same on every host); 'size' is each image's (height, width) before padding, 'index' its
  place in the split."""
  dataset.check_split(split, 'eval.split')
  source = dataset.builder.as_data_source(split, decoders=_ENCODED)
  n = len(source)
  local_batch = _local_batch_size(config.eval.batch_size, 'eval.batch_size')
  per_host = math.ceil(n / jax.process_count())
  num_batches = math.ceil(per_host / local_batch)
  first = jax.process_index() * per_host
  height, width = config.eval.image_size

  def fetch(k):
    index = first + int(k)
    valid = int(k) < per_host and index < n
    example = source[min(index, n - 1)]
    return (example['image'], example['label'], example['name'], valid,
            np.int64(min(index, n - 1)))

  pad = preprocess.build(eval_spec(config), ignore_label=dataset.ignore_label)

  def process_example(image_bytes, label_bytes, name, valid, index):
    example = _decode(image_bytes, label_bytes)
    size = tf.shape(example['image'])[:2]
    check = tf.debugging.assert_less_equal(
        size, tf.constant([height, width]),
        message=tf.strings.format('eval image {} is larger than eval.image_size', name))
    with tf.control_dependencies([check]):
      example = pad(example, tf.constant([0, 0], tf.int64))
    return {'image': example['image'], 'label': example['label'][..., 0], 'mask': valid,
            'size': tf.cast(size, tf.int32), 'index': tf.cast(index, tf.int32)}

  ds = tf.data.Dataset.range(num_batches * local_batch)
  ds = ds.map(lambda k: tf.numpy_function(
      fetch, [k], (tf.string, tf.string, tf.string, tf.bool, tf.int64)))
  ds = ds.map(process_example, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch).prefetch(2)

  def iterate():
    try:
      yield from ds.as_numpy_iterator()
    except tf.errors.InvalidArgumentError as e:
      if 'eval.image_size' in e.message:
        first_line = next(l for l in e.message.splitlines() if 'eval.image_size' in l)
        raise UserError(f'{first_line.strip()} {tuple(config.eval.image_size)}; raise '
                        'eval.image_size to the largest image of the split.') from None
      raise
  return iterate(), num_batches
