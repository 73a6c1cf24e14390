"""The public TF DeepLab model zoo's Xception-65 DeepLabv3+ checkpoints (convert --source=tf).

The checkpoints here are written by the test (tf.raw_ops.SaveV2) with the zoo's variable names
and shapes, as docs/tf_zoo_notes.md lists them from the TF code. `tf_deeplabv3plus` runs the
TF code's network on those variables with TensorFlow's own ops (slim's padding rules, TF1's
corner-aligned resize), as an oracle independent of our Flax modules.
"""

import numpy as np
import pytest

from configs import v3plus_voc
from deeplab_jax import convert
from deeplab_jax import pretrained
from deeplab_jax.errors import UserError
from deeplab_jax.models import deeplab
from deeplab_jax.models import layers

# (block scope, depths, skip, has activation inside the separable convs)
_ENTRY = [('entry_flow/block1', (128, 128, 128)), ('entry_flow/block2', (256, 256, 256)),
          ('entry_flow/block3', (728, 728, 728))]
_EXIT = [('exit_flow/block1', (728, 1024, 1024), 'conv'),
         ('exit_flow/block2', (1536, 1536, 2048), 'none')]


def _module_scopes(middle_units):
  """(scope, depths, skip) of every Xception-65 module in order, as the TF code names them."""
  scopes = [(f'xception_65/{b}/unit_1/xception_module', d, 'conv') for b, d in _ENTRY]
  scopes += [(f'xception_65/middle_flow/block1/unit_{u}/xception_module', (728,) * 3, 'sum')
             for u in range(1, middle_units + 1)]
  scopes += [(f'xception_65/{b}/unit_1/xception_module', d, s) for b, d, s in _EXIT]
  return scopes


def zoo_xception65_v3plus(rng, width=1.0, middle_units=16, classes=21, extra=True):
  """The variables of the zoo's `xception65` DeepLabv3+ (e.g. deeplabv3_pascal_train_aug):
  backbone, ASPP with image pooling, decoder and logits; with `extra`, global_step and
  Momentum slots too. `width` shrinks every channel count as model.width_multiplier does."""
  s = lambda c: layers.scaled(c, width)
  v = {}

  def bn(scope, c):
    v[f'{scope}/BatchNorm/gamma'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    v[f'{scope}/BatchNorm/beta'] = rng.normal(0, 0.2, c).astype(np.float32)
    v[f'{scope}/BatchNorm/moving_mean'] = rng.normal(0, 0.2, c).astype(np.float32)
    v[f'{scope}/BatchNorm/moving_variance'] = rng.uniform(0.5, 1.5, c).astype(np.float32)

  def conv(scope, k, cin, cout):
    v[f'{scope}/weights'] = (rng.standard_normal((k, k, cin, cout)) *
                             np.sqrt(2.0 / (k * k * cin))).astype(np.float32)
    bn(scope, cout)

  def sep(scope, cin, cout):
    v[f'{scope}_depthwise/depthwise_weights'] = (rng.standard_normal((3, 3, cin, 1)) /
                                                 3.0).astype(np.float32)
    bn(f'{scope}_depthwise', cin)
    conv(f'{scope}_pointwise', 1, cin, cout)

  conv('xception_65/entry_flow/conv1_1', 3, 3, s(32))
  conv('xception_65/entry_flow/conv1_2', 3, s(32), s(64))
  cin = s(64)
  for scope, depths, skip in _module_scopes(middle_units):
    c = cin
    for i, d in enumerate(depths):
      sep(f'{scope}/separable_conv{i + 1}', c, s(d))
      c = s(d)
    if skip == 'conv':
      conv(f'{scope}/shortcut', 1, cin, c)
    cin = c
  a = s(256)
  conv('image_pooling', 1, cin, a)
  conv('aspp0', 1, cin, a)
  for i in (1, 2, 3):
    sep(f'aspp{i}', cin, a)
  conv('concat_projection', 1, 5 * a, a)
  low = s(48)
  conv('decoder/feature_projection0', 1, s(256), low)
  sep('decoder/decoder_conv0', a + low, a)
  sep('decoder/decoder_conv1', a, a)
  v['logits/semantic/weights'] = rng.normal(0, 0.1, (1, 1, a, classes)).astype(np.float32)
  v['logits/semantic/biases'] = rng.normal(0, 0.1, classes).astype(np.float32)
  if extra:
    v['global_step'] = np.array(30000, np.int64)
    v['logits/semantic/weights/Momentum'] = np.zeros_like(v['logits/semantic/weights'])
  return v


def save_tf_checkpoint(variables, prefix):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  names = sorted(variables)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(variables[n]) for n in names])


def tf_deeplabv3plus(v, images, middle_units, rates=(6, 12, 18)):
  """The TF DeepLab code's xception_65 DeepLabv3+ at output stride 16, inference mode, on
  float NHWC images already scaled to [-1, 1]; logits at image size (docs/tf_zoo_notes.md)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  relu = tf.nn.relu

  def bn(t, scope, eps):
    g = lambda leaf: tf.constant(v[f'{scope}/BatchNorm/{leaf}'])
    return tf.nn.batch_normalization(t, g('moving_mean'), g('moving_variance'), g('beta'),
                                     g('gamma'), eps)

  def fixed_padding(t, rate):  # slim conv2d_same / xception fixed_padding, k = 3
    total = 3 + 2 * (rate - 1) - 1
    return tf.pad(t, [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2],
                      [0, 0]])

  def conv(t, scope, stride=1, rate=1, eps=1e-3, act=True, same_3x3=False):
    w = tf.constant(v[f'{scope}/weights'])
    if same_3x3 and stride > 1:
      t = tf.nn.conv2d(fixed_padding(t, rate), w, stride, 'VALID')
    else:
      t = tf.nn.conv2d(t, w, stride, 'SAME', dilations=rate)
    t = bn(t, scope, eps)
    return relu(t) if act else t

  def sep(t, scope, stride=1, rate=1, eps=1e-3, act=True):
    dw = tf.constant(v[f'{scope}_depthwise/depthwise_weights'])
    if stride > 1:
      t = tf.nn.depthwise_conv2d(fixed_padding(t, rate), dw, [1, stride, stride, 1], 'VALID')
    else:
      t = tf.nn.depthwise_conv2d(t, dw, [1, 1, 1, 1], 'SAME', dilations=[rate, rate])
    t = bn(t, f'{scope}_depthwise', eps)
    t = relu(t) if act else t
    return conv(t, f'{scope}_pointwise', eps=eps, act=act)

  x = tf.constant(images, tf.float32)
  h, w = images.shape[1:3]
  x = conv(x, 'xception_65/entry_flow/conv1_1', stride=2, same_3x3=True)
  x = conv(x, 'xception_65/entry_flow/conv1_2')
  # Output stride 16: the entry flow's strides, then exit block1 at stride 1 rate 1 and
  # exit block2 at rate 2.
  plan = [(2, 1)] * 3 + [(1, 1)] * middle_units + [(1, 1), (1, 2)]
  low_level = None
  for (scope, _, skip), (stride, rate) in zip(_module_scopes(middle_units), plan):
    inside = scope.startswith('xception_65/exit_flow/block2')
    res = x
    for i in range(3):
      if not inside:
        res = relu(res)
      res = sep(res, f'{scope}/separable_conv{i + 1}', stride if i == 2 else 1, rate, act=inside)
      if i == 1 and scope.startswith('xception_65/entry_flow/block2'):
        low_level = res
    if skip == 'conv':
      res = res + conv(x, f'{scope}/shortcut', stride=stride, act=False)
    elif skip == 'sum':
      res = res + x
    x = res
  resize = lambda t, size: tf.compat.v1.image.resize_bilinear(t, size, align_corners=True)
  head = dict(eps=1e-5)
  pool = conv(tf.reduce_mean(x, [1, 2], keepdims=True), 'image_pooling', **head)
  branches = [resize(pool, x.shape[1:3]), conv(x, 'aspp0', **head)]
  branches += [sep(x, f'aspp{i + 1}', rate=r, **head) for i, r in enumerate(rates)]
  y = conv(tf.concat(branches, 3), 'concat_projection', **head)
  size = [(h - 1) // 4 + 1, (w - 1) // 4 + 1]  # scale_dimension(crop, 1/4)
  low = resize(conv(low_level, 'decoder/feature_projection0', **head), size)
  y = tf.concat([resize(y, size), low], 3)
  y = sep(y, 'decoder/decoder_conv0', **head)
  y = sep(y, 'decoder/decoder_conv1', **head)
  y = tf.nn.conv2d(y, tf.constant(v['logits/semantic/weights']), 1, 'SAME')
  y = y + v['logits/semantic/biases']
  return resize(y, [h, w]).numpy()


def test_align_corners_resize_matches_tf1():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype(np.float32)
  for size in [(25, 21), (3, 2), (1, 4), (7, 6)]:
    want = tf.compat.v1.image.resize_bilinear(x, size, align_corners=True).numpy()
    got = np.asarray(layers.resize_bilinear(x, size, align_corners=True))
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=str(size))
  one = np.ones((1, 1, 1, 2), np.float32) * 3
  np.testing.assert_array_equal(layers.resize_bilinear(one, (4, 5), align_corners=True), 3)


def test_the_zoo_xception65_v3plus_checkpoint_converts_every_variable(tmp_path):
  """Full shapes: all 732 network variables are consumed, global_step and the optimizer slot
  are dropped, and nothing of the model is left fresh. The paper-form Xception is refused."""
  variables = zoo_xception65_v3plus(np.random.default_rng(1))
  save_tf_checkpoint(variables, str(tmp_path / 'model.ckpt-30000'))
  config = v3plus_voc.get_config('tf_zoo')
  info = convert.convert('tf', str(tmp_path / 'model.ckpt-30000'), config, str(tmp_path / 'out'))
  assert info['converted'] == 732 == len(variables) - 2
  assert sorted(info['dropped']) == ['global_step', 'logits/semantic/weights/Momentum']
  assert info['fresh'] == [] and info['num_classes'] == 21
  converted = pretrained.load_variables(str(tmp_path / 'out'))
  unit = converted['params']['backbone']['middle_unit16']['sepconv3']
  np.testing.assert_array_equal(
      unit['depthwise']['kernel'][:, :, 0, :],
      variables['xception_65/middle_flow/block1/unit_16/xception_module/'
                'separable_conv3_depthwise/depthwise_weights'][:, :, :, 0])
  np.testing.assert_array_equal(
      converted['batch_stats']['aspp']['atrous3']['pointwise_bn']['var'],
      variables['aspp3_pointwise/BatchNorm/moving_variance'])
  # TF concatenates [image pooling, aspp0..3]; our projection takes image pooling last.
  projection = converted['params']['aspp']['projection']['conv']['kernel']
  np.testing.assert_array_equal(projection[:, :, -256:],
                                variables['concat_projection/weights'][:, :, :256])
  with pytest.raises(UserError, match='preactivation=True'):
    convert.convert('tf', str(tmp_path), v3plus_voc.get_config(), str(tmp_path / 'out2'))
  # The ImageNet Xception-65: the backbone and its 1001-way logits, which are dropped.
  imagenet = {k: x for k, x in variables.items() if k.startswith('xception_65/')}
  imagenet['xception_65/logits/weights'] = np.zeros((1, 1, 2048, 1001), np.float32)
  imagenet['xception_65/logits/biases'] = np.zeros(1001, np.float32)
  save_tf_checkpoint(imagenet, str(tmp_path / 'imagenet' / 'model.ckpt'))
  info = convert.convert('tf', str(tmp_path / 'imagenet'), config, str(tmp_path / 'out3'))
  assert info['converted'] == len(imagenet) - 2 == 660
  assert info['fresh'] and all('backbone' not in k for k in info['fresh'])


def test_a_converted_zoo_xception65_v3plus_gives_the_tf_codes_logits(tmp_path):
  """A narrow checkpoint (width 1/8, 2 middle units) converted into the tf_zoo config gives
  the logits of the TF code's network run with TF ops, on an odd-sized input; with
  --drop_first_class (the ADE20K model) the first class goes."""
  rng = np.random.default_rng(2)
  width, middle, classes = 0.125, 2, 6
  variables = zoo_xception65_v3plus(rng, width, middle, classes, extra=False)
  save_tf_checkpoint(variables, str(tmp_path / 'model.ckpt'))
  config = v3plus_voc.get_config('tf_zoo')
  config.model.width_multiplier = width
  config.model.backbone.units = (middle,)
  config.data.crop_size = (97, 81)
  info = convert.convert('tf', str(tmp_path / 'model.ckpt'), config, str(tmp_path / 'out'),
                         drop_first_class=True)
  assert info['fresh'] == [] and info['num_classes'] == classes - 1
  images = rng.integers(0, 256, (2, 97, 81, 3)).astype(np.float32) / 127.5 - 1.0
  want = tf_deeplabv3plus(variables, images, middle)
  model = deeplab.build_model(config.model, classes - 1)
  got = np.asarray(model.apply(pretrained.load_variables(str(tmp_path / 'out')), images,
                               train=False))
  assert got.shape == want[..., 1:].shape
  scale = np.abs(want).max()
  assert scale > 1.0  # the random network's logits are not vanishingly small
  np.testing.assert_allclose(got, want[..., 1:], atol=1e-4 * scale)
  # The paper's (post-activation, half-pixel) network with the same weights differs clearly.
  config.model.backbone.preactivation = False
  config.model.align_corners = False
  other = np.asarray(deeplab.build_model(config.model, classes - 1).apply(
      pretrained.load_variables(str(tmp_path / 'out')), images, train=False))
  assert np.abs(other - want[..., 1:]).max() > 0.1 * scale
