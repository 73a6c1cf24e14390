r"""Images per second (and per CPU core) of the training input pipeline, full augmentation.

  python benchmarks/input_pipeline.py --config=configs/v3plus_camvid.py \
      --config.data.root=../shared/data/camvid --batches=30 [--threads=2]

Runs the trainer's own `input_pipeline.train_batches` (read, decode, random scale, crop, flip
and any photometric jitter the config sets) and times --batches batches after --warmup.
--threads caps tf.data's private thread pool (0: tf.data's default, one per core); images
per second per core divides by the cores it may use. Printed: one JSON object. Compare
`images_per_second` with benchmarks/train_step.py's to see whether the input keeps up.
"""

import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags
import tensorflow as tf

from deeplab_jax import data
from deeplab_jax.data import input_pipeline

FLAGS = flags.FLAGS


def benchmark(config, batches: int, warmup: int, threads: int = 0):
  tf.config.set_visible_devices([], 'GPU')
  if threads:
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
  cores = threads or os.cpu_count()
  dataset = data.get_dataset(config.data)
  it = input_pipeline.train_batches(dataset, config, start_step=0)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  seconds = time.perf_counter() - start
  images = batches * batch['image'].shape[0]
  return {
      'data': config.data.name, 'crop_size': list(batch['image'].shape[1:3]),
      'image_scale': config.data.image_scale,
      'scale_range': [config.data.min_scale, config.data.max_scale],
      'flip': config.data.flip, 'batch_size': int(batch['image'].shape[0]),
      'images': images, 'seconds': seconds, 'cores': cores,
      'images_per_second': images / seconds, 'images_per_second_per_core': images / seconds / cores,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  print(json.dumps(benchmark(FLAGS.config, FLAGS.batches, FLAGS.warmup, FLAGS.threads),
                   indent=1))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Experiment config.', lock_config=True)
  flags.DEFINE_integer('batches', 30, 'Timed batches.')
  flags.DEFINE_integer('warmup', 3, 'Untimed batches first (fills the prefetch).')
  flags.DEFINE_integer('threads', 0, 'tf.data threads (0: one per core).')
  flags.mark_flags_as_required(['config'])
  app.run(main)
