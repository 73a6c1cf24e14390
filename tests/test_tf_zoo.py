"""Checkpoints of the public TF DeepLab code (convert --source=tf): the model zoo's Xception-65
DeepLabv3+ and the ResNet-v1-101 beta DeepLabv3+ the code trains.

The checkpoints here are written by the test (tf.raw_ops.SaveV2) with the TF code's variable
names and shapes, as docs/tf_zoo_notes.md lists them. `tf_deeplabv3plus` and
`tf_resnet_deeplabv3plus` run the TF code's networks on those variables with TensorFlow's own
ops (slim's padding rules, TF's SAME pooling, TF1's corner-aligned resize), as oracles
independent of our Flax modules.
"""

import numpy as np
import pytest

from configs import v3plus_voc
from deeplab_jax import convert
from deeplab_jax import pretrained
from deeplab_jax.errors import UserError
from deeplab_jax.models import registry
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


class _Variables(dict):
  """TF variable name -> random value, added a slim layer at a time (the TF code's names)."""

  def __init__(self, rng):
    super().__init__()
    self.rng = rng

  def bn(self, scope, c):
    rng = self.rng
    self[f'{scope}/BatchNorm/gamma'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    self[f'{scope}/BatchNorm/beta'] = rng.normal(0, 0.2, c).astype(np.float32)
    self[f'{scope}/BatchNorm/moving_mean'] = rng.normal(0, 0.2, c).astype(np.float32)
    self[f'{scope}/BatchNorm/moving_variance'] = rng.uniform(0.5, 1.5, c).astype(np.float32)

  def conv(self, scope, k, cin, cout):
    """slim.conv2d with BatchNorm: `weights` [k, k, cin, cout] and BN(cout)."""
    self[f'{scope}/weights'] = (self.rng.standard_normal((k, k, cin, cout)) *
                                np.sqrt(2.0 / (k * k * cin))).astype(np.float32)
    self.bn(scope, cout)

  def sep(self, scope, cin, cout):
    """The DeepLab code's split_separable_conv2d: `_depthwise` (3x3) and `_pointwise`."""
    self[f'{scope}_depthwise/depthwise_weights'] = (self.rng.standard_normal((3, 3, cin, 1)) /
                                                    3.0).astype(np.float32)
    self.bn(f'{scope}_depthwise', cin)
    self.conv(f'{scope}_pointwise', 1, cin, cout)

  def logits(self, cin, classes):
    self['logits/semantic/weights'] = self.rng.normal(0, 0.1, (1, 1, cin, classes)).astype(
        np.float32)
    self['logits/semantic/biases'] = self.rng.normal(0, 0.1, classes).astype(np.float32)


def zoo_xception65_v3plus(rng, width=1.0, middle_units=16, classes=21, extra=True):
  """The variables of the zoo's `xception65` DeepLabv3+ (e.g. deeplabv3_pascal_train_aug):
  backbone, ASPP with image pooling, decoder and logits; with `extra`, global_step and
  Momentum slots too. `width` shrinks every channel count as model.width_multiplier does."""
  s = lambda c: layers.scaled(c, width)
  v = _Variables(rng)
  conv, sep = v.conv, v.sep

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
  v.logits(a, classes)
  if extra:
    v['global_step'] = np.array(30000, np.int64)
    v['logits/semantic/weights/Momentum'] = np.zeros_like(v['logits/semantic/weights'])
  return dict(v)


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
  model = registry.build_model(config.model, classes - 1)
  got = np.asarray(model.apply(pretrained.load_variables(str(tmp_path / 'out')), images,
                               train=False))
  assert got.shape == want[..., 1:].shape
  scale = np.abs(want).max()
  assert scale > 1.0  # the random network's logits are not vanishingly small
  np.testing.assert_allclose(got, want[..., 1:], atol=1e-4 * scale)
  # The paper's (post-activation, half-pixel) network with the same weights differs clearly.
  config.model.backbone.preactivation = False
  config.model.align_corners = False
  other = np.asarray(registry.build_model(config.model, classes - 1).apply(
      pretrained.load_variables(str(tmp_path / 'out')), images, train=False))
  assert np.abs(other - want[..., 1:]).max() > 0.1 * scale


# ResNet-v1 beta: (base depth, nominal block stride) of blocks 1-4 (resnet_v1_beta_block).
_RESNET_BLOCKS = ((64, 2), (128, 2), (256, 2), (512, 1))
_RESNET_LOW_LEVEL = 'resnet_v1_101/block1/unit_2/bottleneck_v1/conv3'  # DECODER_END_POINTS


def zoo_resnet_v1_101_beta_v3plus(rng, width=1.0, units=(3, 4, 23, 3), classes=21,
                                  separable=False):
  """The variables the TF DeepLab code writes for `resnet_v1_101_beta` DeepLabv3+ (model.py
  with --model_variant=resnet_v1_101_beta): beta stem, bottleneck units, ASPP with image
  pooling, decoder and logits. The 3x3 ASPP and decoder convs are plain (slim.conv2d; the
  decoder's two from slim.repeat, so `decoder_conv0/decoder_conv0_1` and `_2`) or, with
  `separable` (--aspp_with_separable_conv, --decoder_use_separable_conv), split separable."""
  s = lambda c: layers.scaled(c, width)
  v = _Variables(rng)
  root = 'resnet_v1_101'
  v.conv(f'{root}/conv1_1', 3, 3, s(64))
  v.conv(f'{root}/conv1_2', 3, s(64), s(64))
  v.conv(f'{root}/conv1_3', 3, s(64), s(128))
  cin = s(128)
  for b, ((base, _), n) in enumerate(zip(_RESNET_BLOCKS, units), 1):
    d = s(base)
    for u in range(1, n + 1):
      unit = f'{root}/block{b}/unit_{u}/bottleneck_v1'
      if cin != 4 * d:
        v.conv(f'{unit}/shortcut', 1, cin, 4 * d)
      v.conv(f'{unit}/conv1', 1, cin, d)
      v.conv(f'{unit}/conv2', 3, d, d)
      v.conv(f'{unit}/conv3', 1, d, 4 * d)
      cin = 4 * d
  a = s(256)
  v.conv('image_pooling', 1, cin, a)
  v.conv('aspp0', 1, cin, a)
  for i in (1, 2, 3):
    if separable:
      v.sep(f'aspp{i}', cin, a)
    else:
      v.conv(f'aspp{i}', 3, cin, a)
  v.conv('concat_projection', 1, 5 * a, a)
  low = s(48)
  v.conv('decoder/feature_projection0', 1, 4 * s(64), low)
  if separable:
    v.sep('decoder/decoder_conv0', a + low, a)
    v.sep('decoder/decoder_conv1', a, a)
  else:
    v.conv('decoder/decoder_conv0/decoder_conv0_1', 3, a + low, a)
    v.conv('decoder/decoder_conv0/decoder_conv0_2', 3, a, a)
  v.logits(a, classes)
  return dict(v)


def tf_resnet_deeplabv3plus(v, images, units, multi_grid, separable, output_stride=16,
                            rates=(6, 12, 18)):
  """The TF DeepLab code's resnet_v1_101_beta DeepLabv3+ in inference mode, with TF ops, on
  float NHWC images already scaled to [-1, 1] (its preprocessing) and a crop the size of the
  images; logits at image size. Follows resnet_v1_beta.py (`root_block_fn_for_beta_variant`,
  `bottleneck`, `resnet_v1_beta`), slim's resnet_utils (`conv2d_same`, `subsample`,
  `stack_blocks_dense`) and model.py (`extract_features`, `refine_by_decoder`,
  `_decoder_with_concat_merge`, `get_branch_logits`); BatchNorm epsilon 1e-5 throughout
  (feature_extractor's ResNet arg scope and the head's)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  eps = 1e-5

  def bn(t, scope):
    g = lambda leaf: tf.constant(v[f'{scope}/BatchNorm/{leaf}'])
    return tf.nn.batch_normalization(t, g('moving_mean'), g('moving_variance'), g('beta'),
                                     g('gamma'), eps)

  def conv(t, scope, stride=1, rate=1, act=True):
    """slim.conv2d(padding='SAME'): the arg scopes' padding for every conv here."""
    t = tf.nn.conv2d(t, tf.constant(v[f'{scope}/weights']), stride, 'SAME', dilations=rate)
    t = bn(t, scope)
    return tf.nn.relu(t) if act else t

  def conv2d_same(t, scope, stride, rate=1):
    """resnet_utils.conv2d_same: SAME at stride 1, else explicit symmetric padding + VALID."""
    if stride == 1:
      return conv(t, scope, rate=rate)
    k = v[f'{scope}/weights'].shape[0]
    total = k + (k - 1) * (rate - 1) - 1
    t = tf.pad(t, [[0, 0], [total // 2, total - total // 2],
                   [total // 2, total - total // 2], [0, 0]])
    t = tf.nn.conv2d(t, tf.constant(v[f'{scope}/weights']), stride, 'VALID', dilations=rate)
    return tf.nn.relu(bn(t, scope))

  def sep(t, scope, rate=1):
    """split_separable_conv2d: depthwise -> BN -> ReLU -> pointwise -> BN -> ReLU."""
    dw = tf.constant(v[f'{scope}_depthwise/depthwise_weights'])
    t = tf.nn.depthwise_conv2d(t, dw, [1, 1, 1, 1], 'SAME', dilations=[rate, rate])
    t = tf.nn.relu(bn(t, f'{scope}_depthwise'))
    return conv(t, f'{scope}_pointwise')

  end_points = {}

  def bottleneck(t, scope, stride, unit_rate, rate):
    depth = v[f'{scope}/conv3/weights'].shape[-1]
    if depth == t.shape[-1]:  # resnet_utils.subsample: a 1x1 max pool
      shortcut = t if stride == 1 else tf.nn.max_pool2d(t, 1, stride, 'SAME')
    else:
      shortcut = conv(t, f'{scope}/shortcut', stride=stride, act=False)
    residual = conv(t, f'{scope}/conv1')
    residual = conv2d_same(residual, f'{scope}/conv2', stride, rate * unit_rate)
    residual = conv(residual, f'{scope}/conv3', act=False)
    end_points[f'{scope}/conv3'] = residual
    return tf.nn.relu(shortcut + residual)

  root = 'resnet_v1_101'
  h, w = images.shape[1:3]
  x = tf.constant(images, tf.float32)
  x = conv2d_same(x, f'{root}/conv1_1', 2)
  x = conv2d_same(x, f'{root}/conv1_2', 1)
  x = conv2d_same(x, f'{root}/conv1_3', 1)
  x = tf.nn.max_pool2d(x, 3, 2, 'SAME')
  # stack_blocks_dense after the root's stride 4: once the target stride is reached, every
  # later unit runs at stride 1 and the rate grows by the stride it would have had.
  target, current, rate = output_stride // 4, 1, 1
  for b, ((_, block_stride), n) in enumerate(zip(_RESNET_BLOCKS, units), 1):
    for u in range(1, n + 1):
      stride = block_stride if u == n else 1
      unit_rate = multi_grid[u - 1] if b == 4 else 1
      scope = f'{root}/block{b}/unit_{u}/bottleneck_v1'
      if current == target:
        x = bottleneck(x, scope, 1, unit_rate, rate)
        rate *= stride
      else:
        x = bottleneck(x, scope, stride, unit_rate, 1)
        current *= stride
  resize = lambda t, size: tf.compat.v1.image.resize_bilinear(t, size, align_corners=True)
  scale_dimension = lambda d, s: int((d - 1) * s + 1)
  # Image pooling over the crop (avg_pool2d VALID), projected, resized back.
  pool = [scale_dimension(h, 1 / output_stride), scale_dimension(w, 1 / output_stride)]
  pooled = conv(tf.nn.avg_pool2d(x, pool, 1, 'VALID'), 'image_pooling')
  branches = [resize(pooled, pool), conv(x, 'aspp0')]
  for i, r in enumerate(rates, 1):
    branches.append(sep(x, f'aspp{i}', r) if separable else conv(x, f'aspp{i}', rate=r))
  y = conv(tf.concat(branches, 3), 'concat_projection')
  size = [scale_dimension(h, 1 / 4), scale_dimension(w, 1 / 4)]
  low = resize(conv(end_points[_RESNET_LOW_LEVEL], 'decoder/feature_projection0'), size)
  y = tf.concat([resize(y, size), low], 3)
  if separable:
    y = sep(sep(y, 'decoder/decoder_conv0'), 'decoder/decoder_conv1')
  else:
    y = conv(y, 'decoder/decoder_conv0/decoder_conv0_1')
    y = conv(y, 'decoder/decoder_conv0/decoder_conv0_2')
  y = tf.nn.conv2d(y, tf.constant(v['logits/semantic/weights']), 1, 'SAME')
  y = y + v['logits/semantic/biases']
  return resize(y, [h, w]).numpy()


def _resnet_v3plus_config(separable, **changes):
  """configs/v3plus_voc.py:resnet101,tf_zoo, its ASPP and decoder plain or separable."""
  config = v3plus_voc.get_config('resnet101,tf_zoo')
  config.model.aspp.separable = config.model.decoder.separable = separable
  for key, value in changes.items():
    setattr(config.model, key, value)
  return config


@pytest.mark.parametrize('separable', [False, True])
def test_a_deeplab_resnet_v1_101_beta_v3plus_checkpoint_converts_every_variable(
    tmp_path, separable):
  """All units of ResNet-101 beta (width 1/8; the names and counts are the full model's):
  every variable lands on the model and nothing is left fresh; with a plain decoder its convs
  are slim.repeat's `decoder_conv0/decoder_conv0_{1,2}`."""
  variables = zoo_resnet_v1_101_beta_v3plus(np.random.default_rng(3), 0.125,
                                            separable=separable)
  # By hand: 106 conv+BN layers in the backbone, 6 in the ASPP, 3 in the decoder, 5 variables
  # each, a separable conv 10; and the logits' weights and biases.
  assert len(variables) == 106 * 5 + (2 + 3 * (2 if separable else 1) + 1) * 5 + (
      1 + 2 * (2 if separable else 1)) * 5 + 2
  save_tf_checkpoint(variables, str(tmp_path / 'model.ckpt'))
  config = _resnet_v3plus_config(separable, width_multiplier=0.125)
  info = convert.convert('tf', str(tmp_path / 'model.ckpt'), config, str(tmp_path / 'out'))
  assert info['converted'] == len(variables) and info['dropped'] == []
  assert info['fresh'] == [] and info['num_classes'] == 21
  if not separable:
    converted = pretrained.load_variables(str(tmp_path / 'out'))
    np.testing.assert_array_equal(
        converted['params']['decoder']['conv2']['conv']['kernel'],
        variables['decoder/decoder_conv0/decoder_conv0_2/weights'])


@pytest.mark.parametrize('separable, output_stride', [(False, 16), (True, 16), (False, 8)])
def test_a_converted_deeplab_resnet_v1_101_beta_v3plus_gives_the_tf_codes_logits(
    tmp_path, separable, output_stride):
  """A narrow ResNet-101 beta v3+ (width 1/8, units (3, 2, 2, 3), multi-grid (1, 2, 4))
  converted into configs/v3plus_voc.py:resnet101,tf_zoo gives the logits of the TF code's
  network run with TF ops, on an input whose sizes are odd in one axis and even in the other
  at the stem's pool and strided convs (TF's SAME padding differs there). Tolerance 1e-4 of
  the largest logit, as the Xception test; measured max |ours - TF| / max |TF| (float32):
  1.9e-6 (plain, OS16), 1.4e-6 (separable), 1.3e-6 (plain, OS8). The decoder reads conv3 of
  block1/unit_2 before the shortcut is added; the unit's output (after the add and ReLU)
  changes the logits by 8-20 % of their largest value."""
  rng = np.random.default_rng(4 + separable)
  width, units, classes = 0.125, (3, 2, 2, 3), 5
  rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
  variables = zoo_resnet_v1_101_beta_v3plus(rng, width, units, classes, separable)
  save_tf_checkpoint(variables, str(tmp_path / 'model.ckpt'))
  config = _resnet_v3plus_config(separable, width_multiplier=width, output_stride=output_stride)
  config.model.backbone.units = units
  config.model.aspp.atrous_rates = rates
  config.data.crop_size = (61, 68)
  info = convert.convert('tf', str(tmp_path / 'model.ckpt'), config, str(tmp_path / 'out'),
                         num_classes=classes)
  assert info['fresh'] == [] and info['converted'] == len(variables)
  images = rng.integers(0, 256, (2, 61, 68, 3)).astype(np.float32) / 127.5 - 1.0
  want = tf_resnet_deeplabv3plus(variables, images, units, (1, 2, 4), separable,
                                 output_stride, rates)
  converted = pretrained.load_variables(str(tmp_path / 'out'))
  model = registry.build_model(config.model, classes)
  got = np.asarray(model.apply(converted, images, train=False))
  assert got.shape == want.shape == (2, 61, 68, classes)
  scale = np.abs(want).max()
  assert scale > 1.0  # the random network's logits are not vanishingly small
  error = np.abs(got - want).max()
  print(f'resnet v3+ separable={separable} OS{output_stride}: max |ours - TF| {error:.2e}, '
        f'max |TF| {scale:.2e}')
  np.testing.assert_allclose(got, want, atol=1e-4 * scale)
  config.model.decoder.low_level_endpoint = 'block1_unit2'  # after the add and ReLU
  other = np.asarray(registry.build_model(config.model, classes).apply(converted, images,
                                                                      train=False))
  print(f'  with block1_unit2 (post-add) as the low-level feature: '
        f'max |diff| {np.abs(other - want).max():.2e}')
  assert np.abs(other - want).max() > 0.01 * scale
