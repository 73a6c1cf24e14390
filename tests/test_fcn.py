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
