"""FCN on VGG-16 (models/fcn.py): the reference code's shape walk, parameter counts and bilinear
kernels (../shared/REFERENCE_BASELINES.md, section 1), and a narrow FCN-8s's logits against a
numpy forward pass with the reference code's pad, ceil pooling and crop offsets."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import summary
from deeplab_jax.errors import UserError
from deeplab_jax.models import fcn
from deeplab_jax.models import registry
import numpy_nets


def _config(arg=None):
  return importlib.import_module('configs.fcn_voc').get_config(arg)


def test_pad_100_walk_maps_500_to_500():
  """conv1 698 -> pools 349, 175, 88, 44, 22 (ceil mode) -> fc7 16 -> ... -> 500, for each
  variant."""
  for variant in fcn.VARIANTS:
    model = fcn.FCN(num_classes=21, variant=variant)
    logits, state = jax.eval_shape(lambda m=model: m.init_with_output(
        jax.random.key(0), jnp.zeros((1, 500, 500, 3)), mutable=True))
    pools = [state['intermediates'][f'pool{i}'][0].shape[1] for i in range(1, 6)]
    assert pools == [349, 175, 88, 44, 22], variant
    assert logits.shape == (1, 500, 500, 21), variant


def test_parameter_counts():
  """FCN-8s at 21 classes: 134,362,751 trainable (VGG-16 134,260,544 + score layers); the
  upsampling kernels (7,056 + 7,056 + 112,896 = 127,008) are parameters only when learned."""
  assert summary.summarize(_config(), with_receptive_field=False)['params'] == 134_362_751
  learned = summary.summarize(_config('learned'), with_receptive_field=False)['params']
  assert learned == 134_362_751 + 127_008


def test_bilinear_kernels():
  np.testing.assert_allclose(fcn.upsample_filter(4), [0.25, 0.75, 0.75, 0.25])
  np.testing.assert_allclose(fcn.upsample_filter(16), 1 - np.abs(np.arange(16) - 7.5) / 8)
  np.testing.assert_allclose(fcn.upsample_filter(3), [0.5, 1.0, 0.5])
  kernel = fcn.bilinear_kernel(4, 3)
  off = kernel.copy()
  off[:, :, range(3), range(3)] = 0
  assert not off.any()
  np.testing.assert_allclose(kernel[:, :, 1, 1], np.outer([0.25, 0.75, 0.75, 0.25],
                                                          [0.25, 0.75, 0.75, 0.25]))
  # x2 of a constant map is that constant wherever four input pixels reach.
  up = fcn.Upsample(2, learn=False, dtype=jnp.float32).apply({}, jnp.full((1, 5, 5, 2), 3.0))
  np.testing.assert_allclose(np.asarray(up)[0, 2:-2, 2:-2], 3.0, rtol=1e-6)


def _numpy_fcn8s(image, params, channels):
  """FCN-8s in numpy as voc-fcn8s/val.prototxt: conv1_1 padded by 100, ceil pooling, fc6
  unpadded, bilinear x2 upscores, score_pool4 cropped at 5, score_pool3 at 9, x8, crop at 31."""
  x, pools = image, {}
  for g, n in enumerate((2, 2, 3, 3, 3)):
    for i in range(n):
      p = params[f'conv{g + 1}_{i + 1}']
      x = np.maximum(numpy_nets.conv(x, p['kernel'], p['bias'], pad=100 if g + i == 0 else 1), 0)
    x = numpy_nets.max_pool2(x, ceil=True)
    pools[g + 1] = x
  for name in ('fc6', 'fc7'):
    x = np.maximum(numpy_nets.conv(x, params[name]['kernel'], params[name]['bias'], pad=0), 0)
  x = numpy_nets.conv(x, params['score_fr']['kernel'], params['score_fr']['bias'])

  def bilinear(k):
    f = (k + 1) // 2
    c = f - 1 if k % 2 else f - 0.5
    profile = 1 - abs(np.arange(k) - c) / f
    kernel = np.zeros((k, k, channels, channels))
    for cl in range(channels):
      kernel[:, :, cl, cl] = np.outer(profile, profile)
    return kernel

  for pool, offset in ((4, 5), (3, 9)):
    x = numpy_nets.conv_transpose(x, bilinear(4), stride=2)
    p = params[f'score_pool{pool}']
    skip = numpy_nets.conv(pools[pool], p['kernel'], p['bias'])
    x = x + skip[offset:offset + x.shape[0], offset:offset + x.shape[1]]
  x = numpy_nets.conv_transpose(x, bilinear(16), stride=8)
  return x[31:31 + image.shape[0], 31:31 + image.shape[1]]


def test_logits_match_a_numpy_forward_pass():
  """A 24 x 30 image through an FCN-8s eight channels wide, every weight random (the score
  layers too, which start at zero)."""
  model = fcn.FCN(num_classes=3, width_multiplier=1 / 512)
  image = np.random.default_rng(0).normal(size=(24, 30, 3))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 24, 30, 3)))
  rng = np.random.default_rng(1)
  params = jax.device_get(jax.tree.map(lambda x: rng.uniform(-0.3, 0.3, x.shape),
                                       variables['params']))
  got = np.asarray(model.apply({'params': params}, jnp.asarray(image[None]))[0])
  want = _numpy_fcn8s(image, params, 3)
  assert got.shape == want.shape == (24, 30, 3)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize('arg', ['same', 'fcn16s', 'fcn32s', 'atonce'])
def test_other_forms_cover_the_input(arg):
  model = registry.build_model(_config(arg).model, 21)
  logits = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, 75, 100, 3)))[0])
  assert logits.shape == (1, 75, 100, 21)


def test_bad_settings_are_named():
  config = _config()
  config.model.fcn.variant = 'fcn4s'
  with pytest.raises(UserError, match=r"model.fcn.variant='fcn4s' is not one of \('fcn32s'"):
    registry.build_model(config.model, 21)
  config = _config('fcn16s')
  config.model.fcn.at_once = True
  with pytest.raises(UserError, match="variant='fcn16s' has no pool3 skip"):
    registry.build_model(config.model, 21)
  with pytest.raises(ValueError, match='do not combine'):
    _config('fcn32s,atonce')


def _torchvision_vgg16(path, width=0.125, seed=0):
  """A torchvision `vgg16` state dict (its names, its [out, in, kh, kw] and [out, in] layouts)
  at `width` x the channels, random, saved as .safetensors; returns it as numpy."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  state, cin = {}, 3
  index = iter((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28))
  for channels, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
    for _ in range(convs):
      i, c = next(index), max(8, round(channels * width))
      state[f'features.{i}.weight'] = rng.normal(0, np.sqrt(2 / (9 * cin)), (c, cin, 3, 3))
      state[f'features.{i}.bias'] = rng.normal(0, 0.1, (c,))
      cin = c
  fc = max(8, round(4096 * width))
  for name, shape in (('classifier.0', (fc, cin * 49)), ('classifier.3', (fc, fc)),
                      ('classifier.6', (1000, fc))):
    state[f'{name}.weight'] = rng.normal(0, np.sqrt(2 / shape[1]), shape)
    state[f'{name}.bias'] = rng.normal(0, 0.1, shape[:1])
  state = {k: v.astype(np.float32) for k, v in state.items()}
  save_file(state, str(path))
  return state


def test_torchvision_vgg16_convolutionalised_gives_the_fully_connected_outputs(tmp_path):
  """FCN's trunk from torchvision's vgg16 (an eighth as wide): on a 224 x 224 image, without
  the pad-100 mode, fc7 at the centre of its 7 x 7 map (where fc6's 7 x 7 window lies wholly on
  pool5) equals the Linear layers on torch's flattened pool5, computed in numpy."""
  from deeplab_jax import convert  # pylint: disable=g-import-not-at-top
  from deeplab_jax import pretrained  # pylint: disable=g-import-not-at-top
  state = _torchvision_vgg16(tmp_path / 'vgg16.safetensors')
  config = _config('same,smoke')
  info = convert.convert('torchvision', str(tmp_path / 'vgg16.safetensors'), config,
                         str(tmp_path / 'out'), num_classes=21)
  assert sorted(info['dropped']) == ['classifier.6.bias', 'classifier.6.weight']
  assert sorted(k.split('/')[1] for k in info['fresh']) == ['score_fr'] * 2 + [
      'score_pool3'] * 2 + ['score_pool4'] * 2
  variables = pretrained.load_variables(str(tmp_path / 'out'))
  model = registry.build_model(config.model, 21)
  image = np.random.default_rng(1).normal(size=(224, 224, 3)).astype(np.float32)
  full = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))['params']
  params = {**full, **variables['params']}
  _, state_out = model.apply({'params': params}, jnp.asarray(image[None]), mutable=True)
  fc7 = np.asarray(state_out['intermediates']['fc7_out'][0])[0]
  assert fc7.shape[:2] == (7, 7)

  x = image.astype(np.float64)
  for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28):
    w = state[f'features.{i}.weight'].transpose(2, 3, 1, 0)
    x = np.maximum(numpy_nets.conv(x, w, state[f'features.{i}.bias'], pad=1), 0)
    if i in (2, 7, 14, 21, 28):
      x = numpy_nets.max_pool2(x)
  flat = x.transpose(2, 0, 1).reshape(-1)  # torch flattens pool5 as channel, row, column
  h = np.maximum(state['classifier.0.weight'] @ flat + state['classifier.0.bias'], 0)
  want = np.maximum(state['classifier.3.weight'] @ h + state['classifier.3.bias'], 0)
  np.testing.assert_allclose(fc7[3, 3], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_torchvision_vgg16_decimated_into_largefov(tmp_path):
  """DeepLab-LargeFOV's fc6 (3 x 3, a quarter of the channels) and fc7 from the Linear layers:
  kernel[i, j, c, o] = fc6.weight[4 o, 49 c + 7 (3 i) + 3 j], fc7 kernel[0, 0, c, o] =
  fc7.weight[4 o, 4 c], biases every 4th; the convs as they are."""
  from deeplab_jax import convert  # pylint: disable=g-import-not-at-top
  from deeplab_jax import pretrained  # pylint: disable=g-import-not-at-top
  state = _torchvision_vgg16(tmp_path / 'vgg16.safetensors')
  config = importlib.import_module('configs.v1_voc').get_config('smoke')
  convert.convert('torchvision', str(tmp_path / 'vgg16.safetensors'), config,
                  str(tmp_path / 'out'), num_classes=21)
  backbone = pretrained.load_variables(str(tmp_path / 'out'))['params']['backbone']
  fc6, w6 = backbone['fc6']['kernel'], state['classifier.0.weight']
  assert fc6.shape == (3, 3, 64, 128)
  i, j, c, o = np.meshgrid(*(np.arange(n) for n in fc6.shape), indexing='ij')
  np.testing.assert_array_equal(fc6, w6[4 * o, 49 * c + 7 * (3 * i) + 3 * j])
  np.testing.assert_array_equal(backbone['fc6']['bias'], state['classifier.0.bias'][::4])
  c, o = np.meshgrid(np.arange(128), np.arange(128), indexing='ij')
  np.testing.assert_array_equal(backbone['fc7']['kernel'][0, 0], state['classifier.3.weight'][
      4 * o, 4 * c])
  np.testing.assert_array_equal(backbone['conv3_2']['kernel'],
                                state['features.12.weight'].transpose(2, 3, 1, 0))
