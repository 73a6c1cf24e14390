"""The CPU kernels (models/cpu_kernels.py) against the plain path, on any backend.

Each kernel is compared with its lax / flax counterpart in value and gradient, and a tiny
DeepLab v3+ is compared whole: with the kernels (forced onto the backend at hand) and
without. The plain path must take forward-mode derivatives (jax.jvp, jax.linearize), which the
kernels' custom gradients cannot, and must be the one chosen where the switch is off or the
backend is not the CPU. Needs only jax, flax, numpy, ml_collections and pytest (no
TensorFlow), so that benchmarks/gpu.sh runs it on a GPU.
"""

import collections
import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from deeplab_jax.models import cpu_kernels
from deeplab_jax.models import layers
from deeplab_jax.models import registry

# Both paths in float32 at full precision: the default lets a GPU's convolutions and matmuls
# round their inputs to TF32, which differs between the two computations by far more than
# the order of summation does.
HIGHEST = 'highest'


def assert_close(got, want, rtol, what=''):
  """|got - want| <= rtol * max|want| everywhere: relative to the array's scale, since sums of
  the same terms in another order differ by rounding of the size of the terms."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, what
  scale = max(np.abs(want).max(), 1e-30)
  err = np.abs(got - want).max()
  assert err <= rtol * scale, f'{what}: max error {err:.3g} > {rtol} * {scale:.3g}'


# --------------------------------------------------------------------------- single kernels

CONV_CASES = [  # (input h, w), kernel, rate, stride, depthwise, padding
    ((17, 17), 3, 24, 1, False, 'atrous'),   # every off-centre tap reads padding: 1 x 1
    ((17, 17), 3, 12, 1, False, 'atrous'),   # all taps read the input somewhere
    ((5, 17), 3, 6, 1, False, 'atrous'),     # pruned along h only
    ((5, 17), 3, 6, 1, True, 'atrous'),      # depthwise, pruned along h
    ((3, 3), 3, 4, 1, True, 'atrous'),       # depthwise, down to 1 x 1
    ((9, 11), 5, 3, 1, False, ((6, 0), (0, 6))),  # one-sided padding
    ((9, 11), 3, 9, 1, False, ((9, 0), (9, 9))),
    ((9, 11), 1, 1, 2, False, 'atrous'),     # strided 1 x 1: a product of the strided input
    ((9, 11), 1, 1, 1, False, 'atrous'),     # 1 x 1: a product over channels
    ((9, 11), 1, 1, 1, True, 'atrous'),      # depthwise 1 x 1: a product by the kernel
    ((9, 11), 1, 1, 2, True, 'atrous'),      # strided depthwise 1 x 1
    ((9, 11), 3, 1, 2, False, 'atrous'),     # strided convs keep every tap
    ((9, 11), 3, 2, 1, False, 'VALID'),
    ((12, 10), 3, 1, 1, True, 'atrous'),     # depthwise 3 x 3 as a sum of taps ...
    ((12, 10), 3, 2, 1, True, 'atrous'),     # ... dilated (JPU's, Xception's)
    ((12, 10), 3, 8, 1, True, 'atrous'),
    ((13, 10), 3, 1, 2, True, 'atrous'),     # ... strided (MobileNetV2's, Xception's)
    ((13, 10), 3, 2, 2, True, ((1, 3), (2, 0))),
    ((12, 10), 5, 1, 1, True, ((0, 0), (0, 0))),
]


@pytest.mark.parametrize('tap_sum', [False, True])  # conv, or every conv it can take as taps
@pytest.mark.parametrize('size,k,rate,stride,depthwise,padding', CONV_CASES)
def test_conv_kernels_equal_lax_in_value_and_gradient(size, k, rate, stride, depthwise, padding,
                                                      tap_sum, monkeypatch):
  monkeypatch.setattr(cpu_kernels, 'TAP_SUM_BELOW', math.inf if tap_sum else 0.0)
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

  with jax.default_matmul_precision(HIGHEST):
    (_, expected), grads_expected = jax.value_and_grad(
        functools.partial(loss, jax.lax.conv_general_dilated), (0, 1), has_aux=True)(x, w)
    (_, out), grads = jax.value_and_grad(
        functools.partial(loss, cpu_kernels.conv_general_dilated), (0, 1), has_aux=True)(x, w)
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

  with jax.default_matmul_precision(HIGHEST):
    expected = jax.grad(functools.partial(loss, jax.lax.conv_general_dilated), (0, 1))(x, w)
    grads = jax.grad(functools.partial(loss, cpu_kernels.conv_general_dilated), (0, 1))(x, w)
  for g, g_expected in zip(grads, expected):
    assert g.shape == g_expected.shape
    np.testing.assert_allclose(g, g_expected, atol=1e-4, rtol=1e-5)


def test_tap_sum_is_exact_where_it_is_chosen():
  # deeplabv3_resnet50 at 257 x 257, output stride 8: ASPP's rate 12 on a 33 x 33 map.
  x = jax.random.normal(jax.random.key(0), (1, 33, 33, 16))
  w = jax.random.normal(jax.random.key(1), (3, 3, 16, 8))
  padding = layers.atrous_padding(3, 12)
  assert cpu_kernels.tap_sum_pays(x.shape, w.shape, padding, (12, 12))
  conv = lambda f: lambda x, w: f(x, w, (1, 1), padding, rhs_dilation=(12, 12),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  jaxpr = str(jax.make_jaxpr(conv(cpu_kernels.conv_general_dilated))(x, w))
  assert 'conv_general_dilated' not in jaxpr and jaxpr.count('dot_general') == 9
  with jax.default_matmul_precision(HIGHEST):
    got = conv(cpu_kernels.conv_general_dilated)(x, w)
    want = conv(jax.lax.conv_general_dilated)(x, w)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_a_depthwise_conv_is_a_sum_of_taps_in_float32_and_bfloat16():
  """JPU's depthwise 3 x 3 at rate 4: no convolution left in the program, and the same values
  as lax's convolution, a bfloat16 input summed in float32 as the convolution accumulates."""
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 32))
  w = jax.random.normal(jax.random.key(1), (3, 3, 1, 32))
  padding = layers.atrous_padding(3, 4)
  conv = lambda f: lambda x, w: f(x, w, (1, 1), padding, rhs_dilation=(4, 4),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  feature_group_count=32)
  jaxpr = str(jax.make_jaxpr(conv(cpu_kernels.conv_general_dilated))(x, w))
  assert 'conv_general_dilated' not in jaxpr
  with jax.default_matmul_precision(HIGHEST):
    for dtype, rtol in ((jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)):
      got = conv(cpu_kernels.conv_general_dilated)(x.astype(dtype), w.astype(dtype))
      want = conv(jax.lax.conv_general_dilated)(x.astype(dtype), w.astype(dtype))
      assert got.dtype == dtype
      assert_close(got, want, rtol, str(dtype))


def test_materialize_is_exact_and_stops_xla_recomputing_a_residual_stream():
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 8), jnp.float32)
  x = x.at[0, 0, 0, 0].set(jnp.nan)  # the one it divides by comes from this element
  x = x.at[1, 1, 1, 1].set(jnp.inf)
  out = cpu_kernels.materialize(x)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
  g = jax.grad(lambda x: jnp.sum(jnp.sin(cpu_kernels.materialize(x))))(x[1:])
  np.testing.assert_array_equal(np.asarray(g), np.asarray(jnp.cos(x[1:])))
  assert cpu_kernels.materialize(jnp.arange(3)).dtype == jnp.int32
  if jax.default_backend() != 'cpu':
    return  # what follows is XLA:CPU's fusion

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
  assert maximums(cpu_kernels.materialize) == 6
  assert maximums(lambda x: x) > 6


@pytest.mark.parametrize('window, strides', [((3, 3), (1, 1)), ((3, 3), (2, 2)), ((2, 3), (1, 2))])
@pytest.mark.parametrize('padding', ['SAME', 'VALID', ((1, 1), (1, 1)), ((0, 1), (1, 0))])
def test_max_pool_equals_nn_max_pool_in_value_and_gradient(window, strides, padding):
  rng = np.random.default_rng(strides[1])
  x = jnp.asarray(rng.normal(size=(2, 9, 12, 3)), jnp.float32)
  x = x.at[0, 2:5, 2:5, 0].set(7.0)   # ties: reduce_window gives the gradient to the first
  pool = lambda f: lambda x: f(x, window, strides=strides, padding=padding)
  ours, want = pool(cpu_kernels.max_pool), pool(nn.max_pool)
  np.testing.assert_array_equal(ours(x), want(x))
  g = jnp.asarray(rng.normal(size=want(x).shape), jnp.float32)
  np.testing.assert_allclose(jax.vjp(ours, x)[1](g)[0], jax.vjp(want, x)[1](g)[0], rtol=1e-6,
                             atol=1e-6)   # sums of the same terms, in another order
  xb, gb = x.astype(jnp.bfloat16), g.astype(jnp.bfloat16)
  assert ours(xb).dtype == jnp.bfloat16 and jax.vjp(ours, xb)[1](gb)[0].dtype == jnp.bfloat16
  np.testing.assert_array_equal(ours(xb).astype(jnp.float32), want(xb).astype(jnp.float32))
  # bfloat16 keeps 8 significant bits: overlapping windows sum up to 9 terms in bfloat16, in
  # another order, so the gradients differ by a few of its ulps.
  assert_close(jax.vjp(ours, xb)[1](gb)[0], jax.vjp(want, xb)[1](gb)[0], 2**-6, 'bf16 gradient')
  # The gradient is elementwise: no (value, index) pairs, which XLA:CPU computes slowly.
  hlo = jax.jit(jax.grad(lambda x: jnp.sum(ours(x) * g))).lower(x).as_text()
  assert 'reduce_window' not in hlo and 'select_and_scatter' not in hlo


def test_layers_conv_drops_padding_taps_and_keeps_nn_conv_parameters():
  x = jnp.ones((2, 17, 17, 4))
  make = lambda cls, rate: cls(8, (3, 3), padding=layers.atrous_padding(3, rate),
                               kernel_dilation=(rate, rate), use_bias=False)
  variables = make(layers.Conv, 24).init(jax.random.key(0), x)
  reference = make(nn.Conv, 24).init(jax.random.key(0), x)
  np.testing.assert_array_equal(variables['params']['kernel'], reference['params']['kernel'])
  with cpu_kernels.forced():
    jaxpr = str(jax.make_jaxpr(lambda v: make(layers.Conv, 24).apply(v, x))(variables))
    assert 'dot_general' in jaxpr and 'conv_general_dilated' not in jaxpr
    jaxpr = str(jax.make_jaxpr(lambda v: make(layers.Conv, 2).apply(v, x))(variables))
    assert 'conv_general_dilated' in jaxpr and 'rhs_dilation=(2, 2)' in jaxpr  # 85 % useful


def test_tap_sum_is_chosen_for_mostly_padding_taps_over_wide_inputs():
  # deeplabv3_resnet50 at 257 x 257, output stride 8: ASPP reads a 33 x 33 x 2048 map.
  pays = lambda shape, rate: cpu_kernels.tap_sum_pays(
      shape, (3, 3, shape[-1], 256), layers.atrous_padding(3, rate), (rate, rate))
  assert pays((2, 33, 33, 2048), 12) and pays((2, 33, 33, 2048), 24)  # 57 %, 26 % useful
  assert not pays((2, 33, 33, 2048), 6)     # 77 % useful
  assert not pays((2, 33, 33, 2048), 1)     # only the border reads padding
  assert pays((2, 65, 65, 256), 24) and pays((2, 14, 18, 768), 6)  # 57 %, 40 % useful
  assert not pays((2, 33, 33, 2048), 36)    # every tap but the centre reads padding only: 1 x 1
  x = jnp.ones((2, 33, 33, 2048))
  conv = layers.Conv(8, (3, 3), padding=layers.atrous_padding(3, 12), kernel_dilation=(12, 12))
  variables = jax.eval_shape(conv.init, jax.random.key(0), x)
  with cpu_kernels.forced():
    jaxpr = str(jax.make_jaxpr(conv.apply)(variables, x))
    assert 'conv_general_dilated' not in jaxpr and jaxpr.count('dot_general') == 9
    conv = conv.clone(dtype=jnp.bfloat16)
    jaxpr = str(jax.make_jaxpr(conv.apply)(variables, x.astype(jnp.bfloat16)))
    assert 'conv_general_dilated' in jaxpr  # float32 only


# --------------------------------------------------------------------------- a whole DeepLab


def tiny_config(**changes):
  """DeepLab v3+ on a shallow ResNet-50 at output stride 8: at a 65 crop ASPP reads a 9 x 9
  map, so rate 6 runs as a tap sum and rates 12 and 18 shrink to 1 x 1 products."""
  config = common.get_base_config().model
  config.backbone.name = 'resnet50'
  config.backbone.units = (1, 1, 1, 2)
  config.backbone.multi_grid = (1, 2)
  config.width_multiplier = 0.125
  config.output_stride = 8
  config.aspp.dropout_rate = 0.0
  for key, value in changes.items():
    config[key] = value
  return config


def _model_and_inputs(cpu_kernels_on, **changes):
  """A tiny model, its variables and a batch of two 65 x 65 images."""
  model = registry.build_model(tiny_config(cpu_kernels=cpu_kernels_on, **changes), num_classes=3)
  images = jax.random.normal(jax.random.key(0), (2, 65, 65, 3))
  variables = model.init(jax.random.key(1), images)
  return model, variables, images


def _loss_and_grads(model, variables, images):
  """The train-mode loss, its gradients (params, images), the logits and the new statistics."""
  weights = jax.random.normal(jax.random.key(2), (2, 65, 65, 3))

  def loss(params, images):
    logits, updates = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                  images, train=True, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(logits) * weights), (logits, updates['batch_stats'])

  (value, (logits, stats)), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
      variables['params'], images)
  return value, logits, stats, grads


def _compare_paths(model, variables, images, rtol_values, rtol_grads):
  plain_model, kernels_model = model.clone(cpu_kernels=False), model.clone(cpu_kernels=True)
  with jax.default_matmul_precision(HIGHEST):
    plain = _loss_and_grads(plain_model, variables, images)
    eval_plain = jax.jit(plain_model.apply)(variables, images)
    with cpu_kernels.forced():  # on any backend
      kernels = _loss_and_grads(kernels_model, variables, images)
      eval_kernels = jax.jit(kernels_model.apply)(variables, images)
  assert_close(eval_kernels, eval_plain, rtol_values, 'eval logits')
  assert_close(kernels[0], plain[0], rtol_values, 'loss')
  assert_close(kernels[1], plain[1], rtol_values, 'train logits')
  jax.tree.map_with_path(lambda p, a, b: assert_close(a, b, rtol_values, f'batch_stats{p}'),
                         kernels[2], plain[2])
  jax.tree.map_with_path(lambda p, a, b: assert_close(a, b, rtol_grads, f'gradient{p}'),
                         kernels[3][0], plain[3][0])
  assert_close(kernels[3][1], plain[3][1], rtol_grads, 'input gradient')


def test_both_paths_give_the_same_values_and_gradients_in_float32():
  # BatchNorm on its moving statistics (an affine map): float32 sums of the same products in
  # another order then differ by a few ulps of the largest terms (measured on the CPU: 3e-7
  # of the largest value, 1.1e-6 of the largest gradient). With batch statistics, dividing by
  # the small variances of a random tiny network grows them to 1e-4..1e-3; the float64 test
  # below covers that case. This one covers the tap sum, which runs in float32 only.
  model, variables, images = _model_and_inputs(False, fine_tune_batch_norm=False)
  _compare_paths(model, variables, images, rtol_values=1e-5, rtol_grads=1e-5)


def test_both_paths_give_the_same_values_and_gradients_in_float64():
  # Training-mode BatchNorm in float64 (the logits end in float32 in both paths): measured on
  # the CPU, logits equal, gradients within 2e-12 of the largest.
  with jax.enable_x64(True):
    model, variables, images = _model_and_inputs(False)
    to64 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float64), tree)
    _compare_paths(model.clone(dtype=jnp.float64), to64(variables), to64(images),
                   rtol_values=1e-9, rtol_grads=1e-9)


def test_forward_mode_derivatives_go_through_the_plain_model():
  model, variables, images = _model_and_inputs(False)
  apply = lambda params, x: model.apply({**variables, 'params': params}, x)
  tangents = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape),
                          (variables['params'], images))
  with jax.default_matmul_precision(HIGHEST):
    logits, jvp = jax.jvp(apply, (variables['params'], images), tangents)
    _, linear = jax.linearize(apply, variables['params'], images)
    lin = linear(*tangents)
    # Reverse mode gives the same directional derivative: <u, J t> = <J^T u, t>.
    u = jax.random.normal(jax.random.key(4), logits.shape)
    vjp = jax.vjp(apply, variables['params'], images)[1](u)
  assert_close(lin, jvp, 1e-5, 'linearize vs jvp')
  dot = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  forward, reverse = float(jnp.vdot(u, jvp)), float(dot(vjp, tangents))
  assert abs(forward - reverse) <= 1e-4 * abs(reverse), (forward, reverse)
  # The kernels' custom gradients are why the plain path exists: no jvp through them.
  kernels_model = model.clone(cpu_kernels=True)
  with cpu_kernels.forced(), pytest.raises(TypeError, match='custom_vjp'):
    jax.jvp(lambda x: kernels_model.apply(variables, x), (images,), (tangents[1],))


def _primitives(model, variables, images, backend, monkeypatch):
  """{primitive: count} of the train-mode forward pass, traced with JAX's backend taken to be
  `backend`."""
  monkeypatch.setattr(cpu_kernels, '_backend', lambda: backend)
  jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, images))
  return collections.Counter(re.findall(r'= ([a-z_]+)\[', jaxpr))


def _convs(model, variables, images):
  """How many nn.Conv layers the forward pass runs."""
  count = []

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv) and context.method_name == '__call__':
      count.append(context.module)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(model.apply, variables, images)
  return len(count)


def test_the_plain_path_is_chosen_off_the_cpu_or_with_the_switch_off(monkeypatch):
  model, variables, images = _model_and_inputs(True)
  assert common.get_base_config().model.cpu_kernels is True
  assert model.cpu_kernels and not registry.build_model(tiny_config(cpu_kernels=False),
                                                        3).cpu_kernels
  convs = _convs(model, variables, images)
  assert convs == 30
  for cpu_kernels_on, backend in [(False, 'cpu'), (True, 'gpu'), (True, 'tpu'), (False, 'gpu')]:
    primitives = _primitives(model.clone(cpu_kernels=cpu_kernels_on), variables, images,
                             backend, monkeypatch)
    # Every conv one lax convolution, the stem's pool nn.max_pool, no custom gradient.
    assert primitives['conv_general_dilated'] == convs, (cpu_kernels_on, backend)
    assert primitives['reduce_window_max'] == 1 and not primitives['custom_vjp_call']
  primitives = _primitives(model, variables, images, 'cpu', monkeypatch)
  assert primitives['conv_general_dilated'] < convs and primitives['custom_vjp_call']
  assert not primitives['reduce_window_max']
  # Forcing reaches other backends only where the switch allows the kernels.
  with cpu_kernels.forced():
    assert _primitives(model, variables, images, 'gpu', monkeypatch)['custom_vjp_call']
    assert not _primitives(model.clone(cpu_kernels=False), variables, images, 'gpu',
                           monkeypatch)['custom_vjp_call']
