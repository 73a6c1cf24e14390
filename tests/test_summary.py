"""`python -m deeplab_jax.summary`: parameters, multiply-adds, receptive field, ASPP taps."""

import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from deeplab_jax import summary
from deeplab_jax.models import registry
from deeplab_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, arg=None):
  return importlib.import_module(f'configs.{name}').get_config(arg)


def test_v3plus_xception65_multiply_adds_match_the_model_zoo():
  result = summary.summarize(_config('v3plus_cityscapes'), (513, 513), with_receptive_field=False)
  assert result['backbone'] == 'xception65' and result['output_stride'] == 16
  assert abs(result['macs'] / 54.17e9 - 1) < 0.02, result['macs']


@pytest.mark.parametrize('arg, params', [
    ('resnet50', 39_638_869), ('resnet101', 58_630_997),
    ('resnet50,aux', 42_004_074), ('resnet101,aux', 60_996_202)])
def test_torchvision_deeplabv3_parameter_counts_are_exact(arg, params):
  result = summary.summarize(_config('v3_torchvision', arg), with_receptive_field=False)
  assert result['num_classes'] == 21
  assert result['params'] == params


def test_multiply_adds_count_convolutions_by_hand():
  """A one-conv-per-branch model counted independently: v2's ASPP-L on VGG at OS8."""
  config = _config('v1_voc')
  result = summary.summarize(config, (65, 65), with_receptive_field=False)
  # VGG-16 convs at 65, 33, 17, 9, 9 (3x3 max pools with padding 1 round up), fc6, fc7, fc8.
  sizes = [65, 33, 17, 9, 9]
  channels = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
              (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
  group = [0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
  macs = sum(sizes[g] ** 2 * 9 * cin * cout for g, (cin, cout) in zip(group, channels))
  macs += 9 ** 2 * (9 * 512 * 1024 + 1024 * 1024 + 1024 * 21)
  assert result['macs'] == macs


def _taps_brute_force(h, w, rate):
  counts = np.zeros((h, w))
  for i in range(h):
    for j in range(w):
      counts[i, j] = sum(0 <= i + a * rate < h and 0 <= j + b * rate < w
                         for a in (-1, 0, 1) for b in (-1, 0, 1))
  return counts


@pytest.mark.parametrize('h, w, rate', [(33, 33, 6), (33, 33, 18), (65, 65, 24), (17, 29, 12),
                                        (9, 9, 1)])
def test_aspp_taps_inside_the_feature_map(h, w, rate):
  counts = _taps_brute_force(h, w, rate)
  got = summary.aspp_taps((h, w), rate)
  assert got['centre_taps'] == counts[h // 2, w // 2]
  assert got['mean_taps'] == pytest.approx(counts.mean(), abs=1e-3)


def test_a_large_rate_degenerates_to_the_centre_tap():
  result = summary.summarize(_config('v3_voc'), (513, 513), with_receptive_field=False)
  assert result['aspp_feature_size'] == [33, 33]
  assert [t['centre_taps'] for t in result['aspp_taps']] == [9, 9, 1]


def _chain_field(layers):
  """Receptive field of a plain chain of (kernel, stride, rate) layers."""
  field, jump = 1, 1
  for kernel, stride, rate in layers:
    field += (kernel - 1) * rate * jump
    jump *= stride
  return field


def test_receptive_field_of_largefov_matches_the_chain_arithmetic():
  chain = []
  for group, (convs, pool_stride, rate) in enumerate(
      [(2, 2, 1), (2, 2, 1), (3, 2, 1), (3, 1, 1), (3, 1, 2)]):
    chain += [(3, 1, rate)] * convs + [(3, pool_stride, 1)]
  chain += [(3, 1, 12), (1, 1, 1), (1, 1, 1)]  # fc6 at rate 12, fc7, classifier
  assert _chain_field(chain) == 419
  config = _config('v1_voc')
  assert summary.receptive_field(config.model) == (419, False)
  # A rate whose taps fall outside a small input must not shrink the field: fc6 at rate 24.
  config.model.backbone.fc6_rate = 24
  assert summary.receptive_field(config.model) == (419 - 2 * 12 * 8 + 2 * 24 * 8, False)


def test_receptive_field_of_a_resnet_v3_matches_the_chain_arithmetic():
  config = common.get_base_config()
  config.model.name = 'deeplabv3'
  config.model.backbone.name = 'resnet50'
  config.model.backbone.units = (1, 1, 1, 1)
  config.model.backbone.multi_grid = (1,)
  config.model.aspp.atrous_rates = (2, 4, 6)
  # Stem 7x7/2, max pool 3x3/2, one 3x3 per unit (strides 1, 2, 2, then rate 2), ASPP rate 6.
  chain = [(7, 2, 1), (3, 2, 1), (3, 1, 1), (3, 2, 1), (3, 2, 1), (3, 1, 2), (3, 1, 6)]
  assert summary.receptive_field(config.model) == (_chain_field(chain), False)
  assert _chain_field(chain) == 299
  # A field larger than the largest input tried is reported as a lower bound.
  assert summary.receptive_field(config.model, max_size=257) == (257, True)


def test_json_output_and_bad_crop():
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  out = subprocess.run(
      [sys.executable, '-m', 'deeplab_jax.summary', '--config=configs/v3plus_voc.py:smoke',
       '--crop=129,129', '--json'], cwd=ROOT, env=env, capture_output=True, text=True,
      check=True)
  result = json.loads(out.stdout)
  # The command's JSON is the library's summary: parameters counted here from the model's
  # own variables, the rest as summarize() and receptive_field() give them.
  config = _config('v3plus_voc', 'smoke')
  model = registry.build_model(config.model, num_classes=21)
  variables = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(0)}, jnp.zeros((1, 129, 129, 3)),
      train=False))
  assert result['crop'] == [129, 129] and result['num_classes'] == 21
  assert result['params'] == sum(x.size for x in jax.tree.leaves(variables['params']))
  direct = summary.summarize(config, (129, 129), with_receptive_field=False)
  assert result['macs'] == direct['macs'] and result['aspp_taps'] == direct['aspp_taps']
  assert [result['receptive_field'], result['receptive_field_is_lower_bound']] == list(
      summary.receptive_field(config.model))
  bad = subprocess.run(
      [sys.executable, '-m', 'deeplab_jax.summary', '--config=configs/v3plus_voc.py:smoke',
       '--crop=129'], cwd=ROOT, env=env, capture_output=True, text=True)
  assert bad.returncode != 0 and "--crop='129' must be two integers H,W" in bad.stderr
  with pytest.raises(UserError, match='must be positive'):
    summary.parse_crop('0,5')
