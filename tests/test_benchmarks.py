"""The benchmark scripts run and report what benchmarks/RESULTS.md quotes (no timing targets)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import quickstart
from deeplab_jax import summary

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import crf as crf_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
import input_pipeline as input_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
import profile_step  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_train_step_benchmark_counts_the_steps_flops_and_memory(cache_dir):
  """XLA's FLOPs of a train step (over all 8 forced devices) against the multiply-adds that
  deeplab_jax.summary counts layer by layer: forward 2 FLOPs a multiply-add, backward twice
  the forward, so 6 x MACs x batch, less the taps XLA skips at borders (measured 0.86).
  Memory: at least the float32 parameters and their momentum."""
  config = quickstart.get_config('smoke')
  config.data.cache_dir = cache_dir
  result = train_step.benchmark(config, steps=2, warmup=1, peak_tflops=1.0)
  assert result['num_classes'] == 5 and result['num_devices'] == 8
  counted = summary.summarize(config, tuple(config.data.crop_size), with_receptive_field=False)
  ratio = result['flops_per_step'] / (6 * counted['macs'] * config.train.batch_size)
  assert 0.6 < ratio < 1.3, ratio
  assert result['peak_memory_bytes'] >= 2 * 4 * counted['params']
  with pytest.raises(ValueError, match='steps=0'):
    train_step.benchmark(config, steps=0, warmup=0)


@pytest.mark.parametrize('script, args', [
    ('train_step.py', ['--config=configs/quickstart.py:smoke', '--num_classes=5', '--steps=1',
                       '--warmup=0']),
    ('jpu.py', ['--crop=33', '--width=0.0625', '--units=1,1,1,1', '--train_batch=8',
                '--steps=1'])])
def test_gpu_benchmarks_need_no_tensorflow(subprocess_env, script, args):
  """The lent GPU machine has JAX, flax and optax but no TensorFlow, TFDS or clu, and
  TensorFlow is too large to carry there: the step benchmark (with --num_classes) and the JPU
  comparison must run without them. The JPU comparison's figures are checked here too."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  blocked = ('tensorflow', 'tensorflow_datasets', 'clu')
  code = ('import runpy, sys\n'
          f'sys.modules.update(dict.fromkeys({blocked!r}))\n'  # None: importing them fails
          f'sys.argv = {[script] + args!r}\n'
          'try:\n'
          f'  runpy.run_path("benchmarks/{script}", run_name="__main__")\n'
          'except SystemExit as e:\n'  # absl's app.run ends with sys.exit
          '  assert not e.code, e.code\n')
  out = subprocess.run([sys.executable, '-c', code], cwd=root, env=subprocess_env(),
                       capture_output=True, text=True, check=False, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout[out.stdout.index('{'):out.stdout.rindex('}') + 1])
  if script == 'train_step.py':
    assert result['num_classes'] == 5 and result['step_seconds'] > 0
    return
  # The JPU comparison: the dilated side has the JPU side's parameters less JPU's own, and
  # more multiply-adds in its backbone (blocks 3 and 4 at stride 8, not 16 and 32).
  import jpu as jpu_benchmark  # pylint: disable=g-import-not-at-top
  jpu, dilated = result['jpu'], result['dilated']
  config = jpu_benchmark.configs(33, 8, 0.0625, 'float32', (1, 1, 1, 1))['jpu']
  jpu_params = summary.count_params_by_module(
      jpu_benchmark.registry.build_model(config.model, 150), (33, 33))['jpu']
  assert dilated['params'] == jpu['params'] - jpu_params
  assert dilated['macs_by_module']['backbone'] > 1.5 * jpu['macs_by_module']['backbone']
  assert 'jpu' in jpu['macs_by_module'] and 'jpu' not in dilated['macs_by_module']
  for side in (jpu, dilated):
    assert side['forward_seconds'] > 0 and side['train_step_seconds'] > 0
    assert side['peak_memory_bytes'] > 4 * side['params']
  assert result['dilated_over_jpu']['macs'] == pytest.approx(dilated['macs'] / jpu['macs'])


def test_input_pipeline_benchmark_counts_images(cache_dir):
  config = quickstart.get_config('smoke')
  config.data.cache_dir = cache_dir
  result = input_benchmark.benchmark(config, batches=3, warmup=1)
  assert result['images'] == 3 * config.train.batch_size
  assert result['crop_size'] == list(config.data.crop_size)
  assert result['cores'] == os.cpu_count()  # per-core figures are over every core


def test_profile_names_the_layers_that_take_the_time(cache_dir):
  config = quickstart.get_config('smoke')
  config.data.cache_dir = cache_dir
  result = profile_step.report(config, steps=1, top=1000)
  layers = [row['layer'] for row in result['top_layers']]
  assert any(layer.startswith('backbone/') and layer.endswith('(backward)') for layer in layers)
  assert any(layer.startswith('aspp/') for layer in layers)
  assert profile_step.layer_of(
      'jit(train_step)/transpose(jvp(DeepLab))/aspp/atrous3/conv/dot_general') == (
          'aspp/atrous3/conv (backward)')


def test_crf_benchmark_times_each_stage():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
  log_probs = crf_benchmark.noisy_unary(rng.integers(0, 5, (20, 24)), 5, rng)
  p = dict(w1=4.0, s_alpha=67.0, s_beta=3.0, w2=3.0, s_gamma=3.0, iterations=10)
  result = crf_benchmark.stage_milliseconds(image, log_probs, p, repeats=1)
  # Position (2) and colour (3) make a 5-d lattice: blurred along its 6 axes.
  assert set(result) == {'splat', 'blur (6 axes)', 'slice', 'smoothness rows',
                         'smoothness columns', 'update', 'sum'}
