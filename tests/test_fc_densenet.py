"""FC-DenseNet (models/fc_densenet.py): parameter counts and block widths against the official
code's arithmetic (../shared/REFERENCE_BASELINES.md, section 3), and a small network's logits
against a numpy forward pass written from the paper's description."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import summary
from deeplab_jax.errors import UserError
from deeplab_jax.models import fc_densenet
from deeplab_jax.models import registry
import numpy_nets


def _config(arg=None):
  return importlib.import_module('configs.fc_densenet_camvid').get_config(arg)


def _count(tree):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize('arg, trainable, with_statistics', [
    (None, 9_322_091, 9_425_163), ('67', 3_463_243, 3_502_923), ('56', 1_376_795, 1_397_963)])
def test_parameter_counts_are_the_official_codes(arg, trainable, with_statistics):
  """Trainable (conv weights and biases, BatchNorm scale and offset) at 11 classes, and with
  BatchNorm's running statistics too (what Lasagne's summary and the paper's 9.4M count)."""
  config = _config(arg)
  model = registry.build_model(config.model, 11)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  assert _count(variables['params']) == trainable
  assert _count(variables['params']) + _count(variables['batch_stats']) == with_statistics
  assert summary.summarize(config, with_receptive_field=False)['params'] == trainable


def test_block_outputs_and_a_size_that_does_not_divide_by_32():
  """FC-DenseNet103's stack after each block (the official README's corrected table), and
  logits at CamVid's 360 x 480, whose 360 rows are padded to 384 inside."""
  model = registry.build_model(_config().model, 11)
  logits, state = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, 360, 480, 3)), mutable=True))
  widths = [state['intermediates'][f'block{i}']['stack'][0].shape[-1] for i in range(11)]
  assert widths == [112, 192, 304, 464, 656, 896, 1088, 816, 576, 384, 256]
  assert state['intermediates']['block5']['stack'][0].shape[1:3] == (12, 15)  # 384 / 32
  assert logits.shape == (1, 360, 480, 11)


def test_transposed_conv_multiply_adds_by_hand():
  """Each input pixel of a transposed conv scatters the whole kernel: 4 x 4 pixels x 9 taps x
  3 in x 5 out channels."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  model = nn.ConvTranspose(5, (3, 3), strides=(2, 2), padding='VALID')
  total, by_module = summary.count_macs(model, (4, 4))
  assert total == 16 * 9 * 3 * 5


def _layer(x, p, s, eps=1e-4):
  """BatchNorm (moving statistics) -> ReLU -> conv; dropout is the identity at evaluation."""
  x = (x - s['bn']['mean']) / np.sqrt(s['bn']['var'] + eps) * p['bn']['scale'] + p['bn']['bias']
  return numpy_nets.conv(np.maximum(x, 0), p['conv']['kernel'], p['conv']['bias'])


def _numpy_fc_densenet(image, params, stats, block_layers):
  """The network in numpy for one pooling: first conv; dense block (each layer's output joins
  the stack); skip; transition down (1x1 layer, 2x2 max pool); bottleneck block; transposed
  3x3 conv of stride 2 on the bottleneck's new maps only, cropped to the skip; concatenated
  [upsampled, skip]; dense block; 1x1 classifier."""
  h, w = image.shape[:2]
  x = np.pad(image, ((0, -h % 2), (0, -w % 2), (0, 0)))

  def block(stack, i):
    new = []
    for j in range(block_layers[i]):
      y = _layer(stack, params[f'block{i}'][f'layer{j}'], stats[f'block{i}'][f'layer{j}'])
      new.append(y)
      stack = np.concatenate([stack, y], -1)
    return stack, np.concatenate(new, -1)

  stack = numpy_nets.conv(x, params['first_conv']['kernel'], params['first_conv']['bias'])
  skip, _ = block(stack, 0)
  down = _layer(skip, params['down0'], stats['down0'])
  _, new = block(numpy_nets.max_pool2(down), 1)
  up = numpy_nets.conv_transpose(new, params['up0']['kernel'], params['up0']['bias'])
  up = up[:skip.shape[0], :skip.shape[1]]
  stack, _ = block(np.concatenate([up, skip], -1), 2)
  logits = stack @ params['classifier']['kernel'][0, 0] + params['classifier']['bias']
  return logits[:h, :w]


def test_logits_match_a_numpy_forward_pass():
  """A one-pooling FC-DenseNet on a 7 x 10 image (7 rows do not divide by 2), every weight and
  running statistic random; evaluation mode, so dropout is off."""
  block_layers = (2, 1, 2)
  model = fc_densenet.FCDenseNet(num_classes=5, block_layers=block_layers, growth=3,
                                 first_features=4)
  image = np.random.default_rng(0).normal(size=(7, 10, 3))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 7, 10, 3)))
  rng = np.random.default_rng(1)
  randomise = lambda x, low=-1.0: rng.uniform(low, 1.0, x.shape)
  params = jax.tree.map(randomise, variables['params'])
  stats = jax.tree_util.tree_map_with_path(
      lambda path, x: randomise(x, 0.2) if path[-1].key == 'var' else randomise(x),
      variables['batch_stats'])
  got = model.apply({'params': params, 'batch_stats': stats}, jnp.asarray(image[None]))[0]
  want = _numpy_fc_densenet(image, jax.device_get(params), jax.device_get(stats), block_layers)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize('change, message', [
    (dict(depth=100), r'model.fc_densenet.depth=100 is not one of \(56, 67, 103\)'),
    (dict(block_layers=(4, 4)), r'block_layers=\(4, 4\) needs an odd number'),
    (dict(dropout_rate=1.0), r'dropout_rate=1.0 must be in \[0, 1\)'),
])
def test_bad_settings_are_named(change, message):
  config = _config()
  config.model.fc_densenet.update(change)
  with pytest.raises(UserError, match=message):
    registry.build_model(config.model, 11)


def test_a_dtype_typo_is_named():
  config = _config()
  config.model.dtype = 'float16'
  with pytest.raises(UserError, match=r"model.dtype='float16' is not one of \('float32', "):
    registry.build_model(config.model, 11)


def test_output_stride_is_fixed():
  config = _config()
  config.model.output_stride = 16
  with pytest.raises(UserError, match='model.output_stride=16: FC-DenseNet with 5 poolings has '
                     'output stride 32'):
    registry.build_model(config.model, 11)
  with pytest.raises(UserError, match="eval.output_stride=16: model.name='fc_densenet' has no "
                     'atrous rates'):
    registry.at_output_stride(_config().model, 16)
