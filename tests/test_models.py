"""Model shapes, strides, atrous arithmetic, parameter counts and impossible settings."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from deeplab_jax.errors import UserError
from deeplab_jax.models import aspp
from deeplab_jax.models import decoder
from deeplab_jax.models import deeplab
from deeplab_jax.models import layers
from deeplab_jax.models import resnet


def tiny_config(**changes):
  config = common.get_base_config().model
  config.backbone.name = 'resnet50'
  config.width_multiplier = 0.125
  for key, value in changes.items():
    target = config
    *path, last = key.split('.')
    for p in path:
      target = target[p]
    target[last] = value
  return config


@pytest.mark.parametrize('output_stride', [8, 16, 32])
@pytest.mark.parametrize('name', ['deeplabv3', 'deeplabv3plus'])
def test_output_stride_shapes(output_stride, name):
  model = deeplab.build_model(tiny_config(output_stride=output_stride, name=name), num_classes=5)
  x = jnp.zeros((2, 64, 96, 3))
  variables = model.init(jax.random.key(0), x)
  logits = model.apply(variables, x)
  assert logits.shape == (2, 64, 96, 5) and logits.dtype == jnp.float32
  backbone = resnet.ResNet50(output_stride=output_stride, width_multiplier=0.125)
  endpoints = jax.eval_shape(lambda: backbone.init_with_output(jax.random.key(0), x)[0])
  assert endpoints['block1'].shape[1:3] == (16, 24)  # stride 4 for the decoder
  assert endpoints['features'].shape[1:3] == (64 // output_stride, 96 // output_stride)


def test_strides_and_rates_follow_the_papers():
  assert resnet.block_strides_and_rates(32) == [(1, 1), (2, 1), (2, 1), (2, 1)]
  assert resnet.block_strides_and_rates(16) == [(1, 1), (2, 1), (2, 1), (1, 2)]
  assert resnet.block_strides_and_rates(8) == [(1, 1), (2, 1), (1, 2), (1, 4)]


def test_crop_of_form_n_os_plus_one():
  model = deeplab.build_model(tiny_config(output_stride=16), num_classes=3)
  x = jnp.zeros((1, 65, 65, 3))
  endpoints = jax.eval_shape(
      lambda: model.backbone(norm=functools.partial(nn.BatchNorm, use_running_average=True))
      .init_with_output(jax.random.key(0), x)[0])
  assert endpoints['features'].shape[1:3] == (5, 5)  # (65 - 1) / 16 + 1


@pytest.mark.parametrize('rate', [1, 2, 3, 6])
def test_atrous_conv_equals_zero_inserted_kernel(rate):
  x = jax.random.normal(jax.random.key(1), (2, 17, 19, 4))
  conv = layers.ConvBN(5, 3, rate=rate, relu=False,
                       norm=functools.partial(nn.BatchNorm, use_running_average=True, epsilon=0.0))
  variables = conv.init(jax.random.key(2), x)
  out = conv.apply(variables, x)
  kernel = np.asarray(variables['params']['conv']['kernel'])
  k_eff = 3 + 2 * (rate - 1)
  dilated = np.zeros((k_eff, k_eff, 4, 5), np.float32)
  dilated[::rate, ::rate] = kernel
  pad = (k_eff - 1) // 2
  expected = jax.lax.conv_general_dilated(x, dilated, (1, 1), [(pad, pad), (pad, pad)],
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_aspp_and_decoder_shapes():
  x = jnp.ones((2, 9, 11, 32))
  module = aspp.ASPP(atrous_rates=(1, 3, 30), features=16)
  y, _ = module.init_with_output(jax.random.key(0), x, train=False)
  assert y.shape == (2, 9, 11, 16)
  params = module.init(jax.random.key(0), x, train=False)['params']
  assert set(params) == {'conv1x1', 'atrous1', 'atrous2', 'atrous3', 'image_pooling', 'projection'}
  assert params['projection']['conv']['kernel'].shape == (1, 1, 5 * 16, 16)
  low = jnp.ones((2, 33, 41, 24))
  z, _ = decoder.Decoder(low_level_features=8, features=16).init_with_output(
      jax.random.key(0), y, low)
  assert z.shape == (2, 33, 41, 16)


def _conv(cin, cout, k=1):
  return k * k * cin * cout


def test_full_size_resnet101_v3plus_parameter_count():
  """ResNet-101 (torchvision's 44,549,160 less its 1000-class fc) + ASPP + decoder + classifier."""
  k = 21
  model = deeplab.build_model(common.get_base_config().model, num_classes=k)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 513, 513, 3)))
  count = sum(x.size for x in jax.tree.leaves(variables['params']))
  backbone = 44_549_160 - (2048 * 1000 + 1000)
  bn = 2 * 256
  aspp_params = (_conv(2048, 256) + bn + 3 * (_conv(2048, 256, 3) + bn) + _conv(2048, 256) + bn
                 + _conv(5 * 256, 256) + bn)
  decoder_params = (_conv(256, 48) + 2 * 48 + _conv(256 + 48, 256, 3) + bn
                    + _conv(256, 256, 3) + bn)
  classifier = 256 * k + k
  assert count == backbone + aspp_params + decoder_params + classifier
  backbone_count = sum(x.size for x in jax.tree.leaves(variables['params']['backbone']))
  assert backbone_count == backbone


def test_bfloat16_compute_keeps_float32_parameters():
  model = deeplab.build_model(tiny_config(dtype='bfloat16'), num_classes=3)
  x = jnp.zeros((1, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  assert {p.dtype for p in jax.tree.leaves(variables['params'])} == {jnp.dtype('float32')}
  assert model.apply(variables, x).dtype == jnp.float32


@pytest.mark.parametrize('changes, message', [
    ({'output_stride': 12}, 'output_stride=12 is not one of (8, 16, 32)'),
    ({'output_stride': 4}, 'output_stride=4 is not one of (8, 16, 32)'),
    ({'aspp.atrous_rates': (6, -12, 18)}, 'has rate -12'),
    ({'backbone.name': 'resnet77'}, "model.backbone.name='resnet77' is not one of"),
    ({'backbone.multi_grid': (1, 2)}, 'multi_grid=(1, 2) needs one rate per unit'),
    ({'decoder.low_level_endpoint': 'block9'}, "low_level_endpoint='block9' is not an endpoint"),
])
def test_impossible_settings_fail_with_the_value(changes, message):
  with pytest.raises(UserError, match=None) as info:
    model = deeplab.build_model(tiny_config(**changes), num_classes=3)
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert message in str(info.value)
  assert '\n' not in str(info.value)


def test_multi_grid_rates_reach_block4():
  model = resnet.ResNet50(output_stride=16, multi_grid=(1, 2, 4), width_multiplier=0.125)
  x = jnp.zeros((1, 64, 64, 3))
  tabulated = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  assert 'block4_unit3' in tabulated
  # The rates themselves: a unit's 3x3 conv sees rate * multi_grid[u].
  rates = {}

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv) and context.module.kernel_size == (3, 3):
      rates[context.module.scope.path] = context.module.kernel_dilation
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(model.init, jax.random.key(0), x)
  block4 = {p[0]: r for p, r in rates.items() if p[0].startswith('block4')}
  assert block4 == {'block4_unit1': (2, 2), 'block4_unit2': (4, 4), 'block4_unit3': (8, 8)}
