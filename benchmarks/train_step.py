r"""Times deeplab_jax's training step: throughput, compile time, FLOPs, utilisation, memory.

  python benchmarks/train_step.py --config=configs/v3plus_voc.py:resnet101 \
      --config.train.batch_size=16 --config.model.dtype=bfloat16 --steps=20 [--peak_tflops=X]

The step is the trainer's own (`steps.make_train_step`, jitted with the same shardings over
`config.mesh`) on a random batch of `data.crop_size` crops, so the figure is the model's and
the optimiser's, without the input pipeline (benchmarks/input_pipeline.py times that). Printed:
one JSON object with

  images_per_second   global batch / median step time
  step_seconds        median wall time of --steps steps after --warmup steps
  compile_seconds     lowering + XLA compilation of the step
  flops_per_step      XLA's cost analysis of the compiled step (all devices)
  tflops_per_second   achieved: flops_per_step / step_seconds
  utilization         tflops_per_second / (--peak_tflops x devices) (null without a peak)
  peak_memory_bytes   the device's peak bytes in use where the backend reports it (GPU, TPU),
                      else XLA's compiled memory analysis (arguments + outputs + temporaries
                      - aliased), per device; memory_source says which

--peak_tflops: one accelerator's peak for the step's dtype, e.g. measured with
`benchmarks/peak.py`. Data-set fields are not read (no data is loaded); data.name only fixes the
class count, and --num_classes fixes it without importing TensorFlow: with it the benchmark
needs only JAX, flax, optax, absl and ml_collections (an accelerator image without TensorFlow).
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from deeplab_jax import host_memory
from deeplab_jax import optim
from deeplab_jax import sharding
from deeplab_jax import steps
from deeplab_jax import xla_flags
from deeplab_jax.models import registry
from deeplab_jax.models import unet

FLAGS = flags.FLAGS


def memory(compiled):
  """(peak bytes per device, source)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device memory_stats peak_bytes_in_use'
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None, 'unavailable'
  total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes +
           analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  return int(total), 'XLA compiled memory_analysis (arguments + outputs + temporaries - aliased)'


def flops_of(compiled):
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def dataset_classes(name: str) -> int:
  """The class count of data set `name` (21 where it depends on a folder). Imports the data
  sets, and so TensorFlow: pass --num_classes where TensorFlow is not installed."""
  from deeplab_jax import data  # pylint: disable=g-import-not-at-top
  spec = data.DATASETS.get(name)
  return spec.num_classes if spec and spec.num_classes else 21


def setup(config, num_classes: int = 0) -> dict:
  """The trainer's jitted step for `config`, compiled, with a state and a random batch."""
  steps.validate_config(config)
  mesh = sharding.make_mesh(config.mesh)
  batch_size = config.train.batch_size
  sharding.check_batch_size(mesh, batch_size, 'train.batch_size')
  num_classes = num_classes or dataset_classes(config.data.name)
  model = registry.build_model(config.model, num_classes)
  schedule = optim.learning_rate_schedule(config.optim, config.train.num_steps)
  tx = optim.make_optimizer(config.optim, config.train.num_steps,
                           freeze_batch_norm=config.model.freeze_batch_norm_params)
  rng = jax.random.key(config.seed)
  init, _, state_shardings = steps.create_train_state(model, tx, config, mesh, rng)
  state = init(rng)
  h, w = config.data.crop_size
  margin = unet.train_margin(config.model)  # the valid U-Net's crops carry context
  gen = np.random.default_rng(0)
  batch = sharding.to_global(mesh, {
      'image': gen.normal(size=(batch_size, h + 2 * margin, w + 2 * margin, 3)).astype(
          np.float32),
      'label': gen.integers(0, num_classes, (batch_size, h, w)).astype(np.int32)})
  step_fn = jax.jit(steps.make_train_step(model, tx, schedule, 255,
                                         config.train.top_k_percent_pixels,
                                         config.train.hard_example_mining_step,
                                         steps.class_weights(config, num_classes),
                                         ema_decay=config.optim.ema_decay,
                                         dual_task=steps.dual_task_loss(config)),
                    in_shardings=(state_shardings, None, sharding.replicated(mesh)),
                    out_shardings=(state_shardings, sharding.replicated(mesh)),
                    donate_argnums=0)
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch, rng).compile()
  compile_seconds = time.perf_counter() - start
  return dict(compiled=compiled, state=state, batch=batch, rng=rng, num_classes=num_classes,
              compile_seconds=compile_seconds, num_devices=mesh.devices.size)


def benchmark(config, steps: int, warmup: int, peak_tflops: float = 0.0, num_classes: int = 0):
  """Compiles and times the train step of `config`; returns the result dict."""
  if steps < 1:
    raise ValueError(f'steps={steps} must be at least 1.')
  parts = setup(config, num_classes)
  compiled, state, batch, rng = parts['compiled'], parts['state'], parts['batch'], parts['rng']
  num_classes, compile_seconds = parts['num_classes'], parts['compile_seconds']
  h, w = config.data.crop_size
  batch_size = config.train.batch_size
  for _ in range(warmup):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_seconds = statistics.median(times)
  # XLA's cost analysis counts one device's partition of the program: the step's FLOPs are
  # that times the devices (each runs the same partition on its shard of the batch).
  num_devices = parts['num_devices']
  flops = flops_of(compiled)
  flops = flops * num_devices if flops else None
  tflops = flops / step_seconds / 1e12 if flops else None
  peak_bytes, memory_source = memory(compiled)
  return {
      'model': f'{config.model.name}/{config.model.backbone.name}',
      'output_stride': config.model.output_stride, 'crop_size': [h, w],
      'batch_size': batch_size, 'dtype': config.model.dtype, 'num_classes': num_classes,
      'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind,
      'num_devices': jax.device_count(), 'steps': steps,
      'images_per_second': batch_size / step_seconds,
      'step_seconds': step_seconds,
      'step_seconds_min': min(times), 'step_seconds_max': max(times),
      'compile_seconds': compile_seconds,
      'flops_per_step': flops,
      'tflops_per_second': tflops,
      'peak_tflops': peak_tflops or None,
      'utilization': tflops / (peak_tflops * num_devices) if tflops and peak_tflops else None,
      'peak_memory_bytes': peak_bytes, 'memory_source': memory_source,
      'loss': float(metrics['loss']),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  host_memory.configure(FLAGS.retain_host_memory or FLAGS.config.retain_host_memory)  # as main
  print(json.dumps(benchmark(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.peak_tflops,
                             FLAGS.num_classes), indent=1))


if __name__ == '__main__':
  xla_flags.configure_cpu()  # as deeplab_jax.main does, before JAX starts a backend
  config_flags.DEFINE_config_file('config', None, 'Experiment config.', lock_config=True)
  flags.DEFINE_integer('steps', 20, 'Timed steps (at least 1).')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
  flags.DEFINE_float('peak_tflops', 0.0, 'Peak TFLOP/s for utilisation (0: unknown).')
  flags.DEFINE_integer('num_classes', 0, 'Class count (0: the data set\'s, else 21).')
  flags.DEFINE_enum('retain_host_memory', None, ['auto', 'true', 'false'],
                    'As deeplab_jax.main\'s flag (default: the config\'s).')
  flags.mark_flags_as_required(['config'])
  app.run(main)
