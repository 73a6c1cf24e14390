"""U-Net (models/unet.py): the paper's sizes and parameter count (../shared/REFERENCE_BASELINES.md,
section 2), overlap-tile mirroring against numpy's, and a small valid network's logits against a
numpy forward pass."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import summary
from deeplab_jax.errors import UserError
from deeplab_jax.models import registry
from deeplab_jax.models import unet
import numpy_nets


def _config(arg=None):
  return importlib.import_module('configs.unet_camvid').get_config(arg)


def _count(tree):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def test_the_papers_sizes_and_parameters():
  """572 -> 388 with a 28 x 28 x 1024 bottom; 31,030,658 parameters for one input channel and
  two classes, 31,032,395 for CamVid's three and eleven."""
  model = unet.UNet(num_classes=2, overlap_tile=False)
  logits, state = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, 572, 572, 1)), mutable=True))
  assert logits.shape == (1, 388, 388, 2)
  assert state['intermediates']['bottom'][0].shape == (1, 28, 28, 1024)
  assert _count(state['params']) == 31_030_658
  config = _config()
  assert summary.summarize(config, with_receptive_field=False)['params'] == 31_032_395
  # 23 convs: 18 3x3, 4 up-convolutions and the classifier.
  kernels = [x.shape for x in jax.tree.leaves(state['params']) if x.ndim == 4]
  assert len(kernels) == 23
  assert sorted({k[:2] for k in kernels}) == [(1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize('arg, size', [(None, (360, 480)), ('same', (360, 480)),
                                       (None, (37, 50)), ('same', (37, 50))])
def test_logits_cover_the_input(arg, size):
  model = registry.build_model(_config(arg).model, 11)
  logits = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, *size, 3)))[0])
  assert logits.shape == (1, *size, 11)


@pytest.mark.parametrize('shape, pads', [((5, 7), ((3, 2), (1, 6))), ((4, 3), ((9, 10), (7, 2))),
                                         ((1, 6), ((2, 3), (0, 0)))])
def test_mirror_pad_is_numpys_reflect(shape, pads):
  """Pads wider than the image reflect again, as numpy's 'reflect' does; a single row mirrors
  to itself."""
  x = np.random.default_rng(0).normal(size=(1, *shape, 2)).astype(np.float32)
  want = np.pad(x, ((0, 0), *pads, (0, 0)), mode='reflect' if min(shape) > 1 else 'edge')
  np.testing.assert_array_equal(np.asarray(unet.mirror_pad(jnp.asarray(x), pads)), want)


def test_valid_input_sizes():
  assert [unet.valid_input_size(s) for s in (388, 360, 480, 1)] == [572, 556, 668, 188]
  assert all((unet.valid_input_size(s) - 124) % 16 == 0 for s in range(1, 100))


def _numpy_unet(image, params, levels=4):
  """The valid U-Net in numpy: [conv-ReLU] x 2 and pool down; at the bottom [conv-ReLU] x 2
  (dropout off); up-convolution, the skip centre-cropped and concatenated before the
  up-convolved maps, [conv-ReLU] x 2; 1x1 classifier."""
  def two(x, name):
    for i in (1, 2):
      p = params[f'{name}_conv{i}']
      x = np.maximum(numpy_nets.conv(x, p['kernel'], p['bias'], pad=0), 0)
    return x

  skips, x = [], image
  for level in range(1, levels + 1):
    x = two(x, f'down{level}')
    skips.append(x)
    x = numpy_nets.max_pool2(x)
  x = two(x, 'bottom')
  for level in range(levels, 0, -1):
    x = numpy_nets.conv_transpose(x, params[f'up{level}']['kernel'], params[f'up{level}']['bias'])
    skip = skips[level - 1]
    top, left = (skip.shape[0] - x.shape[0]) // 2, (skip.shape[1] - x.shape[1]) // 2
    x = two(np.concatenate([skip[top:top + x.shape[0], left:left + x.shape[1]], x], -1),
            f'up{level}')
  return x @ params['classifier']['kernel'][0, 0] + params['classifier']['bias']


def test_logits_match_a_numpy_forward_pass():
  """A valid U-Net two channels wide on its smallest input with room to crop (16 x 4 + 124 = 188
  -> 4 x 4), every weight random; then overlap-tile on a 3 x 5 image equals the same network
  on numpy's mirror of it (92 px each side, more at the bottom and right up to a valid size),
  cropped."""
  model = unet.UNet(num_classes=3, features=2, overlap_tile=False)
  image = np.random.default_rng(0).normal(size=(188, 188, 3))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 188, 188, 3)))
  rng = np.random.default_rng(1)
  params = jax.device_get(jax.tree.map(lambda x: rng.uniform(-0.5, 0.5, x.shape),
                                       variables['params']))
  got = np.asarray(model.apply({'params': params}, jnp.asarray(image[None]))[0])
  want = _numpy_unet(image, params)
  assert got.shape == want.shape == (4, 4, 3)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

  small = image[:3, :5]
  tiled = unet.UNet(num_classes=3, features=2).apply({'params': params}, jnp.asarray(small[None]))
  # 3 + 184 rows round up to 188 = 16 x 4 + 124; 5 + 184 columns to 204 = 16 x 5 + 124.
  mirrored = np.pad(small, ((92, 188 - 3 - 92), (92, 204 - 5 - 92), (0, 0)), mode='reflect')
  np.testing.assert_allclose(np.asarray(tiled[0]), _numpy_unet(mirrored, params)[:3, :5],
                             rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_training_context_is_the_images_own():
  """With train_context, training reads a crop's real surroundings: the logits of a 16 t + 4 crop
  given with 92 px of context (train=True) equal the logits that whole-image overlap-tile
  (train=False) gives at that crop, where the crop sits on the pooling grid (offsets of 16) and
  nothing is random (no BatchNorm, no dropout)."""
  model = unet.UNet(num_classes=3, features=2, dropout_rate=0.0, train_context=True)
  rng = np.random.default_rng(2)
  image = rng.normal(size=(1, 70, 120, 3)).astype(np.float32)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 36, 36, 3)))
  whole = np.asarray(model.apply(variables, jnp.asarray(image)))
  assert whole.shape == (1, 70, 120, 3)
  mirrored = np.pad(image, ((0, 0), (92, 92), (92, 92), (0, 0)), mode='reflect')
  for top, left in ((0, 0), (32, 48), (16, 16)):
    window = mirrored[:, top:top + 36 + 184, left:left + 52 + 184]
    got = np.asarray(model.apply(variables, jnp.asarray(window), train=True))
    assert got.shape == (1, 36, 52, 3)
    np.testing.assert_allclose(got, whole[:, top:top + 36, left:left + 52], rtol=1e-4,
                               atol=1e-4 * np.abs(whole).max())


def test_sliding_windows_read_the_image_around_them():
  """eval.mode='sliding' with the valid U-Net: each window is cut with its 92 px of real
  surroundings, so where every window sits on the pooling grid (offsets 0, 16, 32) the averaged
  windows equal whole-image overlap-tile; windows mirrored at their own border do not."""
  from deeplab_jax import inference  # pylint: disable=g-import-not-at-top
  config = _config('smoke')
  config.model.unet.features, config.model.unet.dropout_rate = 2, 0.0
  config.eval.mode, config.eval.window_size = 'sliding', (36, 36)
  config.eval.window_overlap, config.eval.scales, config.eval.flip = 5 / 9, (1.0,), False
  config.eval.input_scale = 1.0
  model = registry.build_model(config.model, 3)
  images = jnp.asarray(np.random.default_rng(3).normal(size=(1, 68, 84, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), images)
  whole = np.asarray(model.apply(variables, images))
  got = np.asarray(inference.predict_scores(model, variables, images, config))
  np.testing.assert_allclose(got, whole, rtol=1e-4, atol=1e-4 * np.abs(whole).max())
  mirrored = np.asarray(inference.sliding_window_logits(
      lambda x: model.apply(variables, x), images, (36, 36), 5 / 9))
  assert np.abs(mirrored - whole).max() > 1e-2 * np.abs(whole).max()


def test_camvid_training_batches_carry_context_and_train(camvid_root, cache_dir):
  """configs/unet_camvid.py:smoke on the real CamVid files: each training image is its 68 x 68
  label crop with 92 px on every side (252 x 252), and the valid network trains a step on it."""
  from deeplab_jax import data, optim, steps  # pylint: disable=g-import-not-at-top
  from deeplab_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  config = _config('smoke')
  config.data.root, config.data.cache_dir = camvid_root, cache_dir
  dataset = data.get_dataset(config.data)
  batch = next(input_pipeline.train_batches(dataset, config, start_step=0))
  b = config.train.batch_size
  assert batch['image'].shape == (b, 252, 252, 3) and batch['label'].shape == (b, 68, 68)
  model = registry.build_model(config.model, dataset.num_classes)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  schedule = optim.learning_rate_schedule(config.optim, config.train.num_steps)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 68, 68, 3)))
  state = steps.TrainState.create(apply_fn=model.apply, params=variables['params'],
                                  batch_stats=variables.get('batch_stats', {}), tx=tx, ema=None)
  step = jax.jit(steps.make_train_step(model, tx, schedule, dataset.ignore_label))
  _, metrics = step(state, batch, jax.random.key(1))
  assert np.isfinite(float(metrics['loss']))
  assert int(metrics['labelled_pixels']) == int(np.sum(batch['label'] != dataset.ignore_label))


def test_training_crops_must_be_16t_plus_4():
  config = _config()
  unet.check_train_crop(config.model, *config.data.crop_size)  # 356 x 468
  with pytest.raises(UserError, match=r'data.crop_size height 360: .* e.g. 356 or 372'):
    unet.check_train_crop(config.model, 360, 468)
  config.model.unet.train_context = False
  unet.check_train_crop(config.model, 360, 480)  # mirrored crops take any size


def test_bad_settings_are_named():
  config = _config()
  config.model.unet.padding = 'full'
  with pytest.raises(UserError, match=r"model.unet.padding='full' is not one of \('valid', "):
    registry.build_model(config.model, 11)
  config = _config()
  config.model.output_stride = 8
  with pytest.raises(UserError, match='model.output_stride=8: U-Net has 4 poolings'):
    registry.build_model(config.model, 11)
  with pytest.raises(UserError, match="eval.output_stride=8: model.name='unet' has no atrous"):
    registry.at_output_stride(_config().model, 8)
  model = unet.UNet(num_classes=2, overlap_tile=False)
  with pytest.raises(UserError, match='valid inputs are 16 t \\+ 124'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 130, 130, 1)))
