r"""FastFCN's claim, side by side: ResNet-50 + JPU + ASPP head against dilated ResNet-50 at output
stride 8 + the same head, on one machine in one run.

  python benchmarks/jpu.py [--crop=512] [--batch=1] [--train_batch=2] [--steps=5] \
      [--width=1.0] [--dtype=float32] [--depthwise_taps=false]

Both networks are configs/fastfcn_ade20k.py's (150 classes, the deep stem, ASPP at rates 12, 24
and 36 on stride-8 features, its extra 3x3 conv), without the auxiliary head: `jpu` as the
config builds it (undilated, output stride 32, JPU up to stride 8), `dilated` with JPU off and
the backbone at output stride 8 (block3 at rate 2, block4 at rate 4, as the official code's
dilated ResNet). Printed: one JSON object with, for each, the multiply-adds of one image
(deeplab_jax.summary's count), parameters, the median inference time of a jitted forward pass
at --batch (FastFCN's FPS protocol: batch 1, 512 x 512, eval mode), the trainer's own step at
--train_batch (benchmarks/train_step.py) and its memory (the device's peak where the backend
reports it, else XLA's memory analysis of the compiled step); and the ratios dilated / jpu.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import fastfcn_ade20k
from deeplab_jax import host_memory
from deeplab_jax import summary
from deeplab_jax import xla_flags
from deeplab_jax.models import cpu_kernels
from deeplab_jax.models import registry
import train_step

FLAGS = flags.FLAGS
NUM_CLASSES = 150


def configs(crop: int, train_batch: int, width: float, dtype: str, units=()):
  """{'jpu': config, 'dilated': config}, identical but for the neck and the output stride."""
  out = {}
  for name in ('jpu', 'dilated'):
    config = fastfcn_ade20k.get_config()
    config.model.aux_head.endpoint = ''  # a training-only head: not part of the comparison
    config.optim.lr_multipliers = ()  # one rate: the dilated side has no JPU to name
    config.model.width_multiplier = width
    config.model.dtype = dtype
    if units:  # a shallow dry run
      config.model.backbone.units = tuple(units)
      config.model.backbone.multi_grid = (1,) * units[-1]
    config.data.crop_size = (crop, crop)
    config.train.batch_size = train_batch
    if name == 'dilated':
      config.model.neck = 'none'
      config.model.output_stride = 8
    out[name] = config
  return out


def forward_seconds(config, batch: int, steps: int) -> float:
  """Median wall time of a jitted inference forward pass (compiled and run once before)."""
  model = registry.build_model(config.model, NUM_CLASSES)
  h, w = config.data.crop_size
  images = jnp.asarray(np.random.default_rng(0).normal(size=(batch, h, w, 3)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), images[:1])
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  jax.block_until_ready(forward(variables, images))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(forward(variables, images))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def compare(crop: int, batch: int, train_batch: int, steps: int, width: float = 1.0,
            dtype: str = 'float32', units=()) -> dict:
  result = {'crop': crop, 'batch': batch, 'train_batch': train_batch, 'width': width,
            'dtype': dtype, 'device': str(jax.devices()[0].device_kind)}
  if units:
    result['units'] = list(units)
  for name, config in configs(crop, train_batch, width, dtype, units).items():
    model = registry.build_model(config.model, NUM_CLASSES)
    macs, by_module = summary.count_macs(model, (crop, crop))
    step = train_step.benchmark(config, steps=steps, warmup=1, num_classes=NUM_CLASSES)
    result[name] = {
        'macs': macs, 'macs_by_module': by_module,
        'params': summary.count_params(model, (crop, crop)),
        'forward_seconds': forward_seconds(config, batch, steps),
        'train_step_seconds': step['step_seconds'],
        'peak_memory_bytes': step['peak_memory_bytes'], 'memory_source': step['memory_source'],
    }
  jpu, dilated = result['jpu'], result['dilated']
  result['dilated_over_jpu'] = {
      key: dilated[key] / jpu[key] for key in ('macs', 'forward_seconds', 'train_step_seconds',
                                               'peak_memory_bytes') if jpu[key]}
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  host_memory.configure('auto')  # as deeplab_jax.main does on the CPU
  cpu_kernels.DEPTHWISE_TAPS = FLAGS.depthwise_taps
  print(json.dumps(compare(FLAGS.crop, FLAGS.batch, FLAGS.train_batch, FLAGS.steps, FLAGS.width,
                           FLAGS.dtype, tuple(int(u) for u in FLAGS.units)), indent=1))


if __name__ == '__main__':
  xla_flags.configure_cpu()
  flags.DEFINE_integer('crop', 512, 'Square input size.')
  flags.DEFINE_integer('batch', 1, 'Images per forward pass (FastFCN timed batch 1).')
  flags.DEFINE_integer('train_batch', 2, 'Images per training step.')
  flags.DEFINE_integer('steps', 5, 'Timed runs of each (after one untimed).')
  flags.DEFINE_float('width', 1.0, 'model.width_multiplier (below 1: a narrow dry run).')
  flags.DEFINE_list('units', [], 'ResNet units per block (empty: ResNet-50\'s 3,4,6,3); '
                    '1,1,1,1 with --width: a quick dry run.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'model.dtype.')
  flags.DEFINE_bool('depthwise_taps', True, 'On the CPU, depthwise convs as sums of taps '
                    '(models/cpu_kernels.py); false: XLA\'s grouped convolution.')
  app.run(main)
