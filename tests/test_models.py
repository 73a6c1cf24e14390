"""Model shapes, strides, atrous arithmetic, parameter counts and impossible settings; the model
at another output stride; frozen BatchNorm. The CPU kernels: tests/test_cpu_kernels.py."""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from deeplab_jax import optim
from deeplab_jax import steps
from deeplab_jax.errors import UserError
from deeplab_jax.models import aspp
from deeplab_jax.models import cpu_kernels
from deeplab_jax.models import decoder
from deeplab_jax.models import deeplab
from deeplab_jax.models import layers
from deeplab_jax.models import mobilenet
from deeplab_jax.models import registry
from deeplab_jax.models import resnet
from deeplab_jax.models import strides
from deeplab_jax.models import vgg
from deeplab_jax.models import xception


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
  model = registry.build_model(tiny_config(output_stride=output_stride, name=name), num_classes=5)
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
  model = registry.build_model(tiny_config(output_stride=16), num_classes=3)
  x = jnp.zeros((1, 65, 65, 3))
  endpoints = jax.eval_shape(
      lambda: model.backbone(norm=functools.partial(nn.BatchNorm, use_running_average=True))
      .init_with_output(jax.random.key(0), x)[0])
  assert endpoints['features'].shape[1:3] == (5, 5)  # (65 - 1) / 16 + 1


@pytest.mark.parametrize('cpu_kernels_on', [False, True])
@pytest.mark.parametrize('rate', [1, 2, 3, 6, 12, 24])  # 12, 24: taps read only padding
def test_atrous_conv_equals_zero_inserted_kernel(rate, cpu_kernels_on):
  x = jax.random.normal(jax.random.key(1), (2, 17, 19, 4))
  conv = layers.ConvBN(5, 3, rate=rate, relu=False,
                       norm=functools.partial(nn.BatchNorm, use_running_average=True, epsilon=0.0))
  variables = conv.init(jax.random.key(2), x)
  with cpu_kernels.allowed(cpu_kernels_on):
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
  model = registry.build_model(common.get_base_config().model, num_classes=k)
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
  model = registry.build_model(tiny_config(dtype='bfloat16'), num_classes=3)
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
    model = registry.build_model(tiny_config(**changes), num_classes=3)
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


# --------------------------------------------------------------------------- the whole family


def family_config(backbone, **changes):
  config = tiny_config(**{'backbone.name': backbone, **changes})
  if not backbone.startswith('resnet') and 'backbone.multi_grid' not in changes:
    config.backbone.multi_grid = (1, 1, 1) if backbone.startswith('xception') else ()
  return config


def _endpoints(model_config, x):
  model = registry.build_model(model_config, num_classes=3)
  backbone = model.backbone(norm=layers.DEFAULT_NORM)
  return jax.eval_shape(lambda: backbone.init_with_output(jax.random.key(0), x)[0]), model


@pytest.mark.parametrize('output_stride', [8, 16, 32])
@pytest.mark.parametrize('backbone, layout', [
    ('resnet50', 'deeplab'), ('resnet50', 'torchvision'), ('resnet50', 'tfslim'),
    ('xception65', ''), ('xception71', ''), ('vgg16', ''), ('mobilenetv2', '')])
def test_every_backbone_has_its_output_stride_and_stride4_endpoint(backbone, layout,
                                                                   output_stride):
  changes = {'output_stride': output_stride}
  if layout:
    changes['backbone.layout'] = layout
  config = family_config(backbone, **changes)
  x = jnp.zeros((1, 64, 96, 3))
  endpoints, model = _endpoints(config, x)
  assert endpoints['features'].shape[1:3] == (64 // output_stride, 96 // output_stride)
  assert endpoints[model.low_level_endpoint].shape[1:3] == (16, 24)
  logits = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x)[0])
  assert logits.shape == (1, 64, 96, 3)


def _conv_rates(module, x, method=None, **kwargs):
  """{module path: (strides, kernel_dilation)} of every 3x3 conv the module runs."""
  found = {}

  def interceptor(next_fun, args, kw, context):
    m = context.module
    if isinstance(m, nn.Conv) and m.kernel_size == (3, 3) and context.method_name == '__call__':
      found['/'.join(m.scope.path)] = (m.strides, m.kernel_dilation)
    return next_fun(*args, **kw)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda: module.init_with_output(jax.random.key(0), x, **kwargs))
  return found


def test_resnet_layouts_place_strides_and_rates():
  # torchvision, OS8: layer3/layer4 dilated, their first unit at the previous rate.
  plan = resnet.unit_strides_and_rates((3, 4, 6, 3), 8, 'torchvision')
  assert plan[1] == [(2, 1), (1, 1), (1, 1), (1, 1)]
  assert plan[2] == [(1, 1)] + [(1, 2)] * 5
  assert plan[3] == [(1, 2), (1, 4), (1, 4)]
  # TF-slim, OS16: the stride on the last unit of blocks 1-3; block3's is removed.
  plan = resnet.unit_strides_and_rates((3, 4, 6, 3), 16, 'tfslim')
  assert plan[0] == [(1, 1), (1, 1), (2, 1)]
  assert plan[1] == [(1, 1)] * 3 + [(2, 1)]
  assert plan[2] == [(1, 1)] * 6
  assert plan[3] == [(1, 2)] * 3
  # The v3 paper's description: the whole dilated block at its rate.
  plan = resnet.unit_strides_and_rates((3, 4, 6, 3), 8, 'deeplab')
  assert plan[2] == [(1, 2)] * 6 and plan[3] == [(1, 4)] * 3
  # In the tfslim layout a strided unit with an identity shortcut subsamples it (no conv).
  model = resnet.ResNet50(output_stride=32, layout='tfslim', width_multiplier=0.125)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params']
  assert 'shortcut' in params['block1_unit1'] and 'shortcut' not in params['block1_unit3']
  endpoints = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)))[0])
  assert endpoints['block1'].shape[1:3] == (8, 8)  # stride 8 after block1's last unit
  assert endpoints['block1_unit2'].shape[1:3] == (16, 16)


def test_resnet50_parameters_match_torchvision_for_every_layout():
  for layout in resnet.LAYOUTS:
    model = resnet.ResNet50(layout=layout)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params']
    assert sum(x.size for x in jax.tree.leaves(params)) == 25_557_032 - (2048 * 1000 + 1000)


def test_xception_separable_convs_strides_and_rates():
  model = xception.Xception65(output_stride=16)
  x = jnp.zeros((1, 65, 65, 3))
  convs = _conv_rates(model, x)
  depthwise = {k: v for k, v in convs.items() if k.endswith('depthwise')}
  assert len(depthwise) == 3 * (3 + 16 + 2)  # 65 layers = 63 separable + 2 entry convs
  assert depthwise['entry_block1/sepconv3/depthwise'] == ((2, 2), (1, 1))
  assert depthwise['entry_block1/sepconv1/depthwise'] == ((1, 1), (1, 1))
  # OS16: exit_block1's stride is removed, and what follows runs at rate 2.
  assert depthwise['exit_block1/sepconv3/depthwise'] == ((1, 1), (1, 1))
  assert depthwise['exit_block2/sepconv1/depthwise'] == ((1, 1), (2, 2))
  convs8 = _conv_rates(xception.Xception65(output_stride=8), x)
  assert convs8['middle_unit1/sepconv1/depthwise'] == ((1, 1), (2, 2))
  assert convs8['exit_block2/sepconv3/depthwise'] == ((1, 1), (4, 4))
  params = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  sep = params['middle_unit1']['sepconv1']
  assert sep['depthwise']['kernel'].shape == (3, 3, 1, 728)
  assert sep['pointwise']['kernel'].shape == (1, 1, 728, 728)
  assert set(sep) == {'depthwise', 'depthwise_bn', 'pointwise', 'pointwise_bn'}
  assert len([k for k in params if k.startswith('entry_block')]) == 3
  assert len([k for k in jax.eval_shape(xception.Xception71().init, jax.random.key(0), x)
              ['params'] if k.startswith('entry_block')]) == 5


def test_vgg16_largefov_layout_and_parameters():
  model = vgg.VGG16(output_stride=8)
  x = jnp.zeros((1, 65, 65, 3))
  convs = _conv_rates(model, x)
  assert convs['conv4_3'][1] == (1, 1) and convs['conv5_1'][1] == (2, 2)
  assert convs['fc6'][1] == (12, 12)
  params = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  assert params['fc6']['kernel'].shape == (3, 3, 512, 1024)
  assert params['fc7']['kernel'].shape == (1, 1, 1024, 1024)
  # torchvision's vgg16 (138,357,544) less its three fully connected layers.
  convs_only = {k: v for k, v in params.items() if k.startswith('conv')}
  fc = (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
  assert sum(x.size for x in jax.tree.leaves(convs_only)) == 138_357_544 - fc
  os16 = jax.eval_shape(lambda: vgg.VGG16(output_stride=16, fc6_rate=4).init_with_output(
      jax.random.key(0), x)[0])
  assert os16['features'].shape[1:3] == (5, 5) and os16['conv3'].shape[1:3] == (17, 17)


def test_mobilenetv2_parameters_match_torchvision_and_depth_multiplier():
  x = jnp.zeros((1, 65, 65, 3))
  params = jax.eval_shape(mobilenet.MobileNetV2().init, jax.random.key(0), x)['params']
  # torchvision's mobilenet_v2 (3,504,872) less its classifier and its final 1x1 conv of 1280.
  last_conv = 320 * 1280 + 2 * 1280
  assert sum(x.size for x in jax.tree.leaves(params)) == 3_504_872 - 1_281_000 - last_conv
  half = jax.eval_shape(mobilenet.MobileNetV2(depth_multiplier=0.5).init, jax.random.key(0), x)
  assert half['params']['layer18']['project']['kernel'].shape[-1] == 160
  assert mobilenet.make_divisible(32 * 0.35) == 16  # never rounds down by more than 10%


def test_v2_multi_scale_inputs_are_fused_by_max_with_a_loss_each():
  config = family_config('resnet50', name='deeplabv2', context='aspp_l', output_stride=8,
                         input_scales=(1.0, 0.75, 0.5), **{'aspp.atrous_rates': (6, 12, 18, 24)})
  model = registry.build_model(config, num_classes=4)
  x = jax.random.normal(jax.random.key(0), (2, 48, 48, 3))
  variables = model.init(jax.random.key(1), x)
  assert set(variables['params']) == {'backbone', 'aspp_l'}
  assert set(variables['params']['aspp_l']) == {'branch1', 'branch2', 'branch3', 'branch4'}
  logits, extra = model.apply(variables, x, return_aux=True)
  assert [name for name, _, _ in extra] == ['scale_1.0', 'scale_0.75', 'scale_0.5']
  np.testing.assert_array_equal(logits, jnp.max(jnp.stack([t for _, t, _ in extra]), axis=0))
  assert not np.allclose(extra[0][1], extra[2][1])  # the scales really differ
  np.testing.assert_array_equal(model.apply(variables, x), logits)


def test_torchvision_head_and_auxiliary_head():
  config = family_config('resnet50', name='deeplabv3', output_stride=8,
                         **{'backbone.layout': 'torchvision', 'aspp.output_conv': True,
                            'aux_head.endpoint': 'block3', 'aux_head.loss_weight': 0.5})
  model = registry.build_model(config, num_classes=4)
  x = jnp.ones((1, 32, 32, 3))
  variables = model.init(jax.random.key(1), x)
  assert 'output_conv' in variables['params']['aspp'] and 'aux_head' in variables['params']
  logits, extra = model.apply(variables, x, return_aux=True)
  assert [(n, t.shape, w) for n, t, w in extra] == [('aux_head', (1, 32, 32, 4), 0.5)]
  assert model.apply(variables, x).shape == logits.shape


@pytest.mark.parametrize('context', ['context_module', 'none'])
def test_context_module_and_cascade(context):
  config = family_config('resnet50', name='deeplabv3', context=context, output_stride=16,
                         **{'backbone.extra_blocks': 3, 'backbone.multi_grid': (1, 2, 4),
                            'backbone.units': (1, 1, 1, 3)})
  model = registry.build_model(config, num_classes=3)
  convs = _conv_rates(model, jnp.zeros((1, 64, 64, 3)))
  # Blocks 5-7 copy block4 at doubling rates, multi-grid in each (v3 paper, section 3.2).
  for b, rate in ((4, 2), (5, 4), (6, 8), (7, 16)):
    got = [convs[f'backbone/block{b}_unit{u}/conv2/conv'][1][0] for u in (1, 2, 3)]
    assert got == [rate, 2 * rate, 4 * rate]
  if context == 'context_module':
    got = [convs[f'context_module/conv{i}/conv'][1][0] for i in range(1, 8)]
    assert got == [1, 1, 2, 4, 8, 16, 1]


def test_separable_aspp_and_decoder():
  config = family_config('xception65', **{'aspp.separable': True, 'decoder.separable': True,
                                           'backbone.units': (1,)})
  model = registry.build_model(config, num_classes=3)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params']
  assert set(params['aspp']['atrous1']) == {'depthwise', 'depthwise_bn', 'pointwise',
                                            'pointwise_bn'}
  assert 'depthwise' in params['decoder']['conv1'] and 'conv' in params['aspp']['conv1x1']


@pytest.mark.parametrize('backbone, changes, message', [
    ('xception65', {'output_stride': 4}, 'output_stride=4 is not one of (8, 16, 32)'),
    ('vgg16', {'output_stride': 4}, 'output_stride=4 is not one of (8, 16, 32)'),
    ('mobilenetv2', {'backbone.depth_multiplier': -1.0}, 'depth_multiplier=-1.0 must be > 0'),
    ('resnet50', {'context': 'context_module', 'context_module.atrous_rates': (1, -2)},
     'has rate -2'),
    ('vgg16', {'backbone.fc6_rate': 0}, 'has rate 0'),
    ('xception65', {'decoder.low_level_endpoint': 'block1'},
     "low_level_endpoint='block1' is not an endpoint of the backbone; it has ['entry_block1'"),
    ('resnet50', {'aux_head.endpoint': 'layer3'}, "aux_head.endpoint='layer3' is not an endpoint"),
    ('resnet50', {'name': 'deeplabv1'}, "model.context='aspp' does not belong to "
     "model.name='deeplabv1'"),
    ('resnet50', {'context': 'crf'}, "model.context='crf' is not one of"),
    ('resnet50', {'backbone.layout': 'caffe'}, "model.backbone.layout='caffe' is not one of"),
    ('vgg16', {'backbone.units': (1, 1)}, "'vgg16' has a fixed depth"),
    ('xception65', {'backbone.extra_blocks': 2}, 'copies of ResNet block4'),
    ('xception65', {'backbone.multi_grid': (1, 2)}, 'multi_grid=(1, 2) needs one rate per'),
    ('resnet50', {'input_scales': (1.0, 0.0)}, 'model.input_scales=(1.0, 0.0)'),
    ('resnet50', {'backbone.preactivation': True}, "'resnet50' has no such variant"),
    ('xception65', {'backbone.bn_epsilon': -1e-3},
     'model.backbone.bn_epsilon=-0.001 must be >= 0'),
])
def test_impossible_family_settings_fail_with_the_value(backbone, changes, message):
  with pytest.raises(UserError) as info:
    model = registry.build_model(family_config(backbone, **changes), num_classes=3)
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert message in str(info.value)
  assert '\n' not in str(info.value)


# --------------------------------------------------------------------------- output stride


def _rates_by_prefix(module, x, suffix):
  """{path: (stride, rate)} of the 3x3 convs whose path ends with `suffix`."""
  return {k[:-len(suffix) - 1]: (s[0], r[0]) for k, (s, r) in _conv_rates(module, x).items()
          if k.endswith(suffix)}


# Hand-computed (stride, rate) of each ResNet-50 unit's 3x3 conv, per block, for every layout
# and output stride (no multi-grid). 'deeplab': a dilated block runs at its rate throughout;
# 'torchvision': its first unit at the previous rate; 'tfslim': strides on the last unit of
# blocks 1-3, a removed stride's rate from the next unit on.
S2, R1, R2, R4 = (2, 1), (1, 1), (1, 2), (1, 4)
RESNET_RATES = {
    ('deeplab', 32): ([R1] * 3, [S2] + [R1] * 3, [S2] + [R1] * 5, [S2] + [R1] * 2),
    ('deeplab', 16): ([R1] * 3, [S2] + [R1] * 3, [S2] + [R1] * 5, [R2] * 3),
    ('deeplab', 8): ([R1] * 3, [S2] + [R1] * 3, [R2] * 6, [R4] * 3),
    ('torchvision', 32): ([R1] * 3, [S2] + [R1] * 3, [S2] + [R1] * 5, [S2] + [R1] * 2),
    ('torchvision', 16): ([R1] * 3, [S2] + [R1] * 3, [S2] + [R1] * 5, [R1] + [R2] * 2),
    ('torchvision', 8): ([R1] * 3, [S2] + [R1] * 3, [R1] + [R2] * 5, [R2] + [R4] * 2),
    ('tfslim', 32): ([R1] * 2 + [S2], [R1] * 3 + [S2], [R1] * 5 + [S2], [R1] * 3),
    ('tfslim', 16): ([R1] * 2 + [S2], [R1] * 3 + [S2], [R1] * 6, [R2] * 3),
    ('tfslim', 8): ([R1] * 2 + [S2], [R1] * 4, [R2] * 6, [R4] * 3),
}


@pytest.mark.parametrize('layout, output_stride', sorted(RESNET_RATES))
def test_resnet_rate_tables(layout, output_stride):
  model = resnet.ResNet50(output_stride=output_stride, layout=layout, width_multiplier=0.125)
  got = _rates_by_prefix(model, jnp.zeros((1, 64, 64, 3)), 'conv2/conv')
  want = {f'block{b + 1}_unit{u + 1}': plan for b, block in
          enumerate(RESNET_RATES[layout, output_stride]) for u, plan in enumerate(block)}
  assert got == want


# Xception-65 module by module (each module's last separable conv carries its stride): the
# entry conv has stride 2, then entry_block1..3, the middle flow, exit_block1 and exit_block2.
XCEPTION_RATES = {
    32: {'entry_block1': S2, 'entry_block2': S2, 'entry_block3': S2, 'middle': R1,
         'exit_block1': S2, 'exit_block2': R1},
    16: {'entry_block1': S2, 'entry_block2': S2, 'entry_block3': S2, 'middle': R1,
         'exit_block1': R1, 'exit_block2': R2},
    8: {'entry_block1': S2, 'entry_block2': S2, 'entry_block3': R1, 'middle': R2,
        'exit_block1': R2, 'exit_block2': R4},
}


@pytest.mark.parametrize('output_stride', [8, 16, 32])
def test_xception_rate_tables(output_stride):
  model = xception.Xception65(output_stride=output_stride, middle_units=2, width_multiplier=0.125)
  got = _rates_by_prefix(model, jnp.zeros((1, 64, 64, 3)), 'depthwise')
  want = {}
  for name, (stride, rate) in XCEPTION_RATES[output_stride].items():
    for module in ([name] if name != 'middle' else ['middle_unit1', 'middle_unit2']):
      for i in (1, 2, 3):
        want[f'{module}/sepconv{i}'] = (stride if i == 3 else 1, rate)
  assert got == want


@pytest.mark.parametrize('output_stride, conv5_rate, sizes', [
    (32, 1, (64, 32, 16, 8, 4, 2)), (16, 1, (64, 32, 16, 8, 4, 4)), (8, 2, (64, 32, 16, 8, 8, 8))])
def test_vgg_rate_tables(output_stride, conv5_rate, sizes):
  model = vgg.VGG16(output_stride=output_stride, fc6_rate=3, width_multiplier=0.125)
  x = jnp.zeros((1, 64, 64, 3))
  got = {k: v[1][0] for k, v in _conv_rates(model, x).items()}
  want = {f'conv{g}_{i}': conv5_rate if g == 5 else 1 for g, n in
          ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)}
  assert got == {**want, 'fc6': 3}
  endpoints = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x)[0])
  assert tuple(endpoints[k].shape[1] for k in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5',
                                               'pool5')) == sizes


# MobileNetV2: layers 3, 5, 8 and 15 have stride 2 after the stride-2 stem (layer1).
MOBILENET_STRIDED = (3, 5, 8, 15)
MOBILENET_RATES = {
    32: {n: (2, 1) if n in MOBILENET_STRIDED else R1 for n in range(2, 19)},
    16: {n: S2 if n in (3, 5, 8) else R1 if n <= 15 else R2 for n in range(2, 19)},
    8: {n: S2 if n in (3, 5) else R1 if n <= 8 else R2 if n <= 15 else R4 for n in range(2, 19)},
}


@pytest.mark.parametrize('output_stride', [8, 16, 32])
def test_mobilenetv2_rate_tables(output_stride):
  model = mobilenet.MobileNetV2(output_stride=output_stride, width_multiplier=0.125)
  got = _rates_by_prefix(model, jnp.zeros((1, 64, 64, 3)), 'depthwise')
  assert got == {f'layer{n}': plan for n, plan in MOBILENET_RATES[output_stride].items()}


def test_the_unit_plan_rule():
  # A removed stride dilates the units after it ('after') or from itself on ('at').
  assert strides.unit_plan([2, 2, 1, 2, 1], 8, 2) == [(2, 1), (2, 1), (1, 1), (1, 1), (1, 2)]
  assert strides.unit_plan([2, 2, 1, 2, 1], 8, 2, 'at') == [(2, 1), (2, 1), (1, 1), (1, 2),
                                                              (1, 2)]
  with pytest.raises(UserError, match=r'output_stride=12 is not one of \(8, 16, 32\)'):
    strides.unit_plan([2], 12, 1)


def _head_rates(model_config, x):
  model = registry.build_model(model_config, num_classes=3)
  convs = _conv_rates(model, x)
  return {k: v[1][0] for k, v in convs.items() if not k.startswith('backbone')}


def test_an_os16_aspp_model_evaluated_at_os32_rescales_only_aspp():
  config = tiny_config(**{'backbone.units': (1, 1, 1, 3)})
  assert config.context_module.atrous_rates == (1, 1, 2, 4, 8, 16, 1)  # 16 would halve to 0.5
  at32 = registry.at_output_stride(config, 32)
  assert at32.output_stride == 32 and tuple(at32.aspp.atrous_rates) == (3, 6, 9)
  assert tuple(at32.context_module.atrous_rates) == (1, 1, 2, 4, 8, 16, 1)
  assert config.output_stride == 16 and tuple(config.aspp.atrous_rates) == (6, 12, 18)  # a copy
  x = jnp.zeros((1, 64, 64, 3))
  rates = _head_rates(at32, x)
  assert [rates[f'aspp/atrous{i}/conv'] for i in (1, 2, 3)] == [3, 6, 9]
  logits = jax.eval_shape(lambda: registry.build_model(at32, 3).init_with_output(
      jax.random.key(0), x)[0])
  assert logits.shape == (1, 64, 64, 3)
  at8 = registry.at_output_stride(config, 8)
  assert tuple(at8.aspp.atrous_rates) == (12, 24, 36)
  assert registry.at_output_stride(config, 16).to_dict() == config.to_dict()


def test_at_output_stride_rescales_the_context_module_in_use_and_vgg_fc6():
  config = tiny_config(context='context_module', name='deeplabv3',
                       **{'backbone.units': (1, 1, 1, 3), 'aspp.atrous_rates': (1, 2, 3)})
  at8 = registry.at_output_stride(config, 8)
  assert tuple(at8.context_module.atrous_rates) == (2, 2, 4, 8, 16, 32, 2)
  assert tuple(at8.aspp.atrous_rates) == (1, 2, 3)  # ASPP is not in use
  rates = _head_rates(at8, jnp.zeros((1, 64, 64, 3)))
  assert [rates[f'context_module/conv{i}/conv'] for i in range(1, 8)] == [2, 2, 4, 8, 16, 32, 2]
  none = tiny_config(context='none', name='deeplabv3', **{'aspp.atrous_rates': (1, 2, 3)})
  assert tuple(registry.at_output_stride(none, 32).aspp.atrous_rates) == (1, 2, 3)
  v1 = family_config('vgg16', name='deeplabv1', context='none', output_stride=8)
  at16 = registry.at_output_stride(v1, 16)
  assert at16.backbone.fc6_rate == 6 and at16.output_stride == 16
  assert _conv_rates(registry.build_model(at16, 3), jnp.zeros((1, 64, 64, 3)))[
      'backbone/fc6'][1] == (6, 6)


@pytest.mark.parametrize('changes, output_stride, message', [
    ({'aspp.atrous_rates': (1, 2, 3)}, 32, 'eval.output_stride=32 with model.output_stride=16 '
     'turns model.aspp.atrous_rates=(1, 2, 3) into (0.5, 1.0, 1.5); rates must stay whole'),
    ({'context': 'context_module', 'name': 'deeplabv3'}, 32,
     'turns model.context_module.atrous_rates=(1, 1, 2, 4, 8, 16, 1) into'),
    ({}, 12, 'eval.output_stride=12 is not one of (8, 16, 32)'),
])
def test_at_output_stride_errors_name_the_values(changes, output_stride, message):
  with pytest.raises(UserError) as info:
    registry.at_output_stride(tiny_config(**changes), output_stride)
  assert message in str(info.value) and '\n' not in str(info.value)


def test_every_backbone_and_system_is_registered():
  config = common.get_base_config().model
  for name, from_config in registry.BACKBONES.items():
    c = family_config(name)
    backbone, low_level = from_config(c)
    endpoints = jax.eval_shape(lambda: backbone(norm=layers.DEFAULT_NORM).init_with_output(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3)))[0])
    assert endpoints[low_level].shape[1:3] == (16, 16), name
  assert set(registry.MODELS) == set(deeplab.HEADS) | {'gscnn'}  # models/gscnn.py


# --------------------------------------------------------------------------- resize


def test_align_corners_resize_matches_tf1_in_value_and_gradient():
  tf = pytest.importorskip('tensorflow')
  rng = np.random.default_rng(0)
  for h, w in [(7, 6), (33, 33), (1, 5), (129, 17)]:
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    for size in [(25, 21), (3, 2), (1, 4), (513, 513), (4, 1), (h, 9), (2, w)]:
      want = tf.compat.v1.image.resize_bilinear(x, size, align_corners=True).numpy()
      got = np.asarray(layers.resize_bilinear(x, size, align_corners=True))
      # Both place the samples in float32, off by up to an ulp of the input size.
      np.testing.assert_allclose(got, want, atol=1e-6 * max(h, w) * np.abs(x).max(),
                                 err_msg=str((h, w, size)))
  x = rng.normal(size=(1, 9, 7, 2)).astype(np.float32)
  g = jax.grad(lambda x: jnp.sum(jnp.sin(layers.resize_bilinear(x, (17, 13), True))))(x)
  xt = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    y = tf.reduce_sum(tf.sin(tf.compat.v1.image.resize_bilinear(xt, (17, 13),
                                                                align_corners=True)))
  np.testing.assert_allclose(g, tape.gradient(y, xt).numpy(), atol=1e-5)
  assert layers.resize_bilinear(x.astype(jnp.bfloat16), (17, 13), True).dtype == jnp.bfloat16


# --------------------------------------------------------------------------- frozen BatchNorm


def _bn_model_state(**changes):
  config = common.get_base_config()
  config.model = tiny_config(**{'backbone.units': (1, 1, 1, 2), 'backbone.multi_grid': (1, 2),
                                'aspp.dropout_rate': 0.0, **changes})
  model = registry.build_model(config.model, num_classes=3)
  images = jax.random.normal(jax.random.key(0), (2, 33, 33, 3))
  variables = model.init(jax.random.key(1), images)
  # Moving statistics unlike the batch's and the initial ones (0, 1), so that normalising
  # with the one or the other is told apart.
  noise = iter(jax.random.split(jax.random.key(2), 10_000))
  stats = jax.tree_util.tree_map_with_path(
      lambda path, a: (0.5 + jax.random.uniform(next(noise), a.shape) if path[-1].key == 'var'
                       else 0.1 * jax.random.normal(next(noise), a.shape)),
      variables['batch_stats'])
  return config, model, {'params': variables['params'], 'batch_stats': stats}, images


def _one_step(config, model, variables, images):
  freeze = config.model.freeze_batch_norm_params
  tx = optim.make_optimizer(config.optim, 10, freeze_batch_norm=freeze)
  state = steps.TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                                  batch_stats=variables['batch_stats'])
  step = steps.make_train_step(model, tx, optim.learning_rate_schedule(config.optim, 10),
                               ignore_label=255)
  labels = jax.random.randint(jax.random.key(3), images.shape[:3], 0, 3)
  new, _ = jax.jit(step)(state, {'image': images, 'label': labels}, jax.random.key(4))
  return state, new


def test_frozen_batch_norm_uses_and_keeps_the_moving_statistics():
  config, model, variables, images = _bn_model_state(fine_tune_batch_norm=False)
  assert not model.fine_tune_batch_norm
  train_logits, _ = model.apply(variables, images, train=True, mutable=['batch_stats'],
                                rngs={'dropout': jax.random.key(0)})
  eval_logits = model.apply(variables, images, train=False)
  np.testing.assert_allclose(train_logits, eval_logits, rtol=1e-6, atol=1e-6)
  tuned = model.clone(fine_tune_batch_norm=True)  # batch statistics: other logits
  tuned_logits, _ = tuned.apply(variables, images, train=True, mutable=['batch_stats'])
  assert np.abs(tuned_logits - eval_logits).max() > 1e-2
  state, new = _one_step(config, model, variables, images)
  jax.tree.map(np.testing.assert_array_equal, new.batch_stats, state.batch_stats)
  flat = flax.traverse_util.flatten_dict(state.params)
  new_flat = flax.traverse_util.flatten_dict(new.params)
  bn = [k for k in flat if k[-2].endswith('bn') and k[-1] in ('scale', 'bias')]
  assert len(bn) > 20
  for k in bn:  # scale and offset still train (no weight decay on them)
    assert not np.array_equal(new_flat[k], flat[k]), k


def test_frozen_batch_norm_parameters_stay_while_convs_train():
  config, model, variables, images = _bn_model_state(fine_tune_batch_norm=False,
                                                     freeze_batch_norm_params=True)
  config.optim.weight_decay = 0.1  # decay must not move them either, even where it applies
  if 'weight_decay_pattern' in config.optim:
    config.optim.weight_decay_pattern = '.*'
  state, new = _one_step(config, model, variables, images)
  flat = flax.traverse_util.flatten_dict(state.params)
  new_flat = flax.traverse_util.flatten_dict(new.params)
  frozen = [k for k in flat if k[-2].endswith('bn') and k[-1] in ('scale', 'bias')]
  kernels = [k for k in flat if k[-1] == 'kernel']
  assert len(frozen) > 20 and len(kernels) > 10
  for k in frozen:
    np.testing.assert_array_equal(new_flat[k], flat[k], err_msg=str(k))
  for k in kernels:
    assert not np.array_equal(new_flat[k], flat[k]), k
  jax.tree.map(np.testing.assert_array_equal, new.batch_stats, state.batch_stats)


def test_freezing_batch_norm_parameters_needs_frozen_statistics():
  with pytest.raises(UserError, match='model.freeze_batch_norm_params=True needs '
                     'model.fine_tune_batch_norm=False'):
    registry.build_model(tiny_config(freeze_batch_norm_params=True), num_classes=3)
