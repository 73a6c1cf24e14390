"""Model shapes, strides, atrous arithmetic, parameter counts and impossible settings."""

import functools
import math
import os

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
from deeplab_jax.models import mobilenet
from deeplab_jax.models import resnet
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


@pytest.mark.parametrize('rate', [1, 2, 3, 6, 12, 24])  # 12, 24: taps read only padding
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


CONV_CASES = [  # (input h, w), kernel, rate, stride, depthwise, padding
    ((17, 17), 3, 24, 1, False, 'atrous'),   # every off-centre tap reads padding: 1 x 1
    ((17, 17), 3, 12, 1, False, 'atrous'),   # all taps read the input somewhere
    ((5, 17), 3, 6, 1, False, 'atrous'),     # pruned along h only
    ((5, 17), 3, 6, 1, True, 'atrous'),      # depthwise, pruned along h
    ((3, 3), 3, 4, 1, True, 'atrous'),       # depthwise, down to 1 x 1
    ((9, 11), 5, 3, 1, False, ((6, 0), (0, 6))),  # one-sided padding
    ((9, 11), 3, 9, 1, False, ((9, 0), (9, 9))),
    ((9, 11), 1, 1, 2, False, 'atrous'),     # strided 1 x 1: a product of the strided input
    ((9, 11), 1, 1, 1, False, 'atrous'),
    ((9, 11), 3, 1, 2, False, 'atrous'),     # strided convs keep every tap
    ((9, 11), 3, 2, 1, False, 'VALID'),
]


@pytest.mark.parametrize('tap_sum', [False, True])  # conv, or every conv it can take as taps
@pytest.mark.parametrize('size,k,rate,stride,depthwise,padding', CONV_CASES)
def test_conv_rewrites_equal_lax_in_value_and_gradient(size, k, rate, stride, depthwise,
                                                       padding, tap_sum, monkeypatch):
  monkeypatch.setattr(layers, 'TAP_SUM_BELOW', math.inf if tap_sum else 0.0)
  channels = 4
  x = jax.random.normal(jax.random.key(0), (2, *size, channels))
  w = jax.random.normal(jax.random.key(1), (k, k, 1 if depthwise else channels, channels))
  padding = layers.atrous_padding(k, rate) if padding == 'atrous' else padding
  dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))
  kwargs = dict(rhs_dilation=(rate, rate), dimension_numbers=dims,
                feature_group_count=channels if depthwise else 1)

  def loss(conv, x, w):
    y = conv(x, w, (stride, stride), padding, **kwargs)
    return jnp.sum(jnp.sin(y)), y

  (_, expected), grads_expected = jax.value_and_grad(
      functools.partial(loss, jax.lax.conv_general_dilated), (0, 1), has_aux=True)(x, w)
  (_, out), grads = jax.value_and_grad(
      functools.partial(loss, layers.conv_general_dilated), (0, 1), has_aux=True)(x, w)
  assert out.shape == expected.shape
  np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-5)
  for g, g_expected in zip(grads, grads_expected):
    np.testing.assert_allclose(g, g_expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('cin,cout,stride', [(4, 8, 1), (4, 16, 2), (8, 4, 1), (6, 6, 2)])
def test_pointwise_gradient_either_operand_laid_out(cin, cout, stride):
  # 2 * cin <= cout: the kernel gradient lays out the input; otherwise the output gradient.
  x = jax.random.normal(jax.random.key(0), (2, 9, 11, cin))
  w = jax.random.normal(jax.random.key(1), (1, 1, cin, cout))
  dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))

  def loss(conv, x, w):
    return jnp.sum(jnp.sin(conv(x, w, (stride, stride), ((0, 0), (0, 0)),
                                dimension_numbers=dims)))

  expected = jax.grad(functools.partial(loss, jax.lax.conv_general_dilated), (0, 1))(x, w)
  grads = jax.grad(functools.partial(loss, layers.conv_general_dilated), (0, 1))(x, w)
  for g, g_expected in zip(grads, expected):
    assert g.shape == g_expected.shape
    np.testing.assert_allclose(g, g_expected, atol=1e-4, rtol=1e-5)


def test_materialize_is_exact_and_stops_xla_recomputing_a_residual_stream():
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 8), jnp.float32)
  x = x.at[0, 0, 0, 0].set(jnp.nan)  # the one it divides by comes from this element
  x = x.at[1, 1, 1, 1].set(jnp.inf)
  out = layers.materialize(x)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
  g = jax.grad(lambda x: jnp.sum(jnp.sin(layers.materialize(x))))(x[1:])
  np.testing.assert_array_equal(np.asarray(g), np.asarray(jnp.cos(x[1:])))
  assert layers.materialize(jnp.arange(3)).dtype == jnp.int32

  def stream(fence, x, units=6):
    outs = []
    for k in range(units):  # x_k = relu(x_{k-1} * a_k + b_k), each read by a transpose
      x = fence(jax.nn.relu(x * (1.0 + k) + k))
      outs.append(jnp.transpose(x, (3, 0, 1, 2)))
    return x, outs

  x = jnp.ones((2, 64, 64, 64))
  def maximums(fence):
    hlo = jax.jit(functools.partial(stream, fence)).lower(x).compile().as_text()
    return hlo.count(' maximum(')
  # Without it each transpose recomputes the stream from its start (1 + 2 + ... + 6 relus
  # and the 6 of the stream); with it every relu is computed once.
  assert maximums(layers.materialize) == 6
  assert maximums(lambda x: x) > 6


@pytest.mark.parametrize('window, strides', [((3, 3), (1, 1)), ((3, 3), (2, 2)), ((2, 3), (1, 2))])
@pytest.mark.parametrize('padding', ['SAME', 'VALID', ((1, 1), (1, 1)), ((0, 1), (1, 0))])
def test_max_pool_equals_nn_max_pool_in_value_and_gradient(window, strides, padding):
  rng = np.random.default_rng(strides[1])
  x = jnp.asarray(rng.normal(size=(2, 9, 12, 3)), jnp.float32)
  x = x.at[0, 2:5, 2:5, 0].set(7.0)   # ties: reduce_window gives the gradient to the first
  pool = lambda f: lambda x: f(x, window, strides=strides, padding=padding)
  ours, want = pool(layers.max_pool), pool(nn.max_pool)
  np.testing.assert_array_equal(ours(x), want(x))
  g = jnp.asarray(rng.normal(size=want(x).shape), jnp.float32)
  np.testing.assert_allclose(jax.vjp(ours, x)[1](g)[0], jax.vjp(want, x)[1](g)[0], rtol=1e-6,
                             atol=1e-6)   # sums of the same terms, in another order
  xb, gb = x.astype(jnp.bfloat16), g.astype(jnp.bfloat16)
  assert ours(xb).dtype == jnp.bfloat16 and jax.vjp(ours, xb)[1](gb)[0].dtype == jnp.bfloat16
  np.testing.assert_array_equal(ours(xb).astype(jnp.float32), want(xb).astype(jnp.float32))
  if jax.default_backend() == 'cpu':  # the gradient is elementwise: no (value, index) pairs
    hlo = jax.jit(jax.grad(lambda x: jnp.sum(ours(x) * g))).lower(x).as_text()
    assert 'reduce_window' not in hlo and 'select_and_scatter' not in hlo


def test_conv_rewrites_drop_padding_taps_and_keep_nn_conv_parameters():
  x = jnp.ones((2, 17, 17, 4))
  make = lambda cls, rate: cls(8, (3, 3), padding=layers.atrous_padding(3, rate),
                               kernel_dilation=(rate, rate), use_bias=False)
  variables = make(layers.Conv, 24).init(jax.random.key(0), x)
  reference = make(nn.Conv, 24).init(jax.random.key(0), x)
  np.testing.assert_array_equal(variables['params']['kernel'], reference['params']['kernel'])
  jaxpr = str(jax.make_jaxpr(lambda v: make(layers.Conv, 24).apply(v, x))(variables))
  assert 'dot_general' in jaxpr and 'conv_general_dilated' not in jaxpr
  jaxpr = str(jax.make_jaxpr(lambda v: make(layers.Conv, 2).apply(v, x))(variables))
  assert 'conv_general_dilated' in jaxpr and 'rhs_dilation=(2, 2)' in jaxpr  # 85 % useful


def test_tap_sum_is_chosen_for_mostly_padding_taps_over_wide_inputs():
  # deeplabv3_resnet50 at 257 x 257, output stride 8: ASPP reads a 33 x 33 x 2048 map.
  pays = lambda shape, rate: layers.tap_sum_pays(
      shape, (3, 3, shape[-1], 256), layers.atrous_padding(3, rate), (rate, rate))
  assert pays((2, 33, 33, 2048), 12) and pays((2, 33, 33, 2048), 24)  # 57 %, 26 % useful
  assert not pays((2, 33, 33, 2048), 6)     # 77 % useful
  assert not pays((2, 33, 33, 2048), 1)     # only the border reads padding
  assert pays((2, 65, 65, 256), 24) and pays((2, 14, 18, 768), 6)  # 57 %, 40 % useful
  assert not pays((2, 33, 33, 2048), 36)    # every tap but the centre reads padding only: 1 x 1
  x = jnp.ones((2, 33, 33, 2048))
  conv = layers.Conv(8, (3, 3), padding=layers.atrous_padding(3, 12), kernel_dilation=(12, 12))
  variables = jax.eval_shape(conv.init, jax.random.key(0), x)
  jaxpr = str(jax.make_jaxpr(conv.apply)(variables, x))
  if jax.default_backend() == 'cpu':
    assert 'conv_general_dilated' not in jaxpr and jaxpr.count('dot_general') == 9
  conv = conv.clone(dtype=jnp.bfloat16)
  jaxpr = str(jax.make_jaxpr(conv.apply)(variables, x.astype(jnp.bfloat16)))
  assert 'conv_general_dilated' in jaxpr  # float32 only


def test_importing_deeplab_jax_sets_the_cpu_convolution_flag():
  assert '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution' in os.environ.get(
      'XLA_FLAGS', '')


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


# --------------------------------------------------------------------------- the whole family


def family_config(backbone, **changes):
  config = tiny_config(**{'backbone.name': backbone, **changes})
  if not backbone.startswith('resnet') and 'backbone.multi_grid' not in changes:
    config.backbone.multi_grid = (1, 1, 1) if backbone.startswith('xception') else ()
  return config


def _endpoints(model_config, x):
  model = deeplab.build_model(model_config, num_classes=3)
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
  model = deeplab.build_model(config, num_classes=4)
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
  model = deeplab.build_model(config, num_classes=4)
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
  model = deeplab.build_model(config, num_classes=3)
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
  model = deeplab.build_model(config, num_classes=3)
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
    model = deeplab.build_model(family_config(backbone, **changes), num_classes=3)
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert message in str(info.value)
  assert '\n' not in str(info.value)
