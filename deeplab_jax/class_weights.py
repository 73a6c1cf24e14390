r"""Median-frequency class weights of a data set's split, for config.train.class_weights.

  python -m deeplab_jax.class_weights --config=configs/v3plus_camvid.py:cpu \
      --config.data.root=../shared/data/camvid [--split=train] [--power=0.5]

Counts every labelled pixel of the split (at the stored resolution) and prints the class
names, frequencies and weights (losses.median_frequency_weights; --power=0.5 gives their square
roots), then one line to paste into a config or onto the command line:
`config.train.class_weights = (...)`.
"""

from absl import app
from absl import flags
import numpy as np
from ml_collections import config_flags

from deeplab_jax import data
from deeplab_jax import losses

FLAGS = flags.FLAGS


def count_pixels(dataset, split: str):
  """(pixels of each class, pixels of the images holding each class) over `split`."""
  dataset.check_split(split, '--split')
  k = len(dataset.class_names)
  class_pixels, image_pixels = np.zeros(k, np.int64), np.zeros(k, np.int64)
  for example in dataset.builder.as_data_source(split):
    label = np.asarray(example['label']).reshape(-1)
    counts = np.bincount(label[label < k], minlength=k)[:k]
    class_pixels += counts
    image_pixels += np.where(counts > 0, np.sum(counts), 0)
  return class_pixels, image_pixels


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.power > 0:  # before the count, which reads the whole split
    raise app.UsageError(f'--power={FLAGS.power} must be > 0.')
  dataset = data.get_dataset(FLAGS.config.data)
  class_pixels, image_pixels = count_pixels(dataset, FLAGS.split)
  weights = losses.median_frequency_weights(class_pixels, image_pixels, FLAGS.power)
  for name, c, i, w in zip(dataset.class_names, class_pixels, image_pixels, weights):
    print(f'{name:>16} {c / max(i, 1):8.4f} {w:8.4f}')
  print('config.train.class_weights = (' + ', '.join(f'{w:.4f}' for w in weights) + ')')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Experiment config.', lock_config=True)
  flags.DEFINE_string('split', 'train', 'The split to count.')
  flags.DEFINE_float('power', 1.0, 'Each weight is (median frequency / frequency) ** power.')
  flags.mark_flags_as_required(['config'])
  app.run(main)
