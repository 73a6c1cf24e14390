"""Spatial partitioning with any crop: heights the mesh's `spatial` axis does not divide are
padded (ignored rows), and a fixed data.pad_height_multiple makes a (data, spatial) mesh give
the one-device numbers. Tolerances are float32's: the meshes sum in other orders."""

import importlib
import json
import os
import types

import jax
import numpy as np
import pytest

from configs import quickstart
from deeplab_jax import evaluate
from deeplab_jax import optim
from deeplab_jax import sharding
from deeplab_jax import steps
from deeplab_jax import train
from deeplab_jax.data import synthetic
from deeplab_jax.errors import UserError
from deeplab_jax.models import registry
from deeplab_jax.models import unet

IGNORE = 255


def spatial_config(pad_height_multiple=4):
  config = quickstart.get_config('smoke')
  config.model.aspp.dropout_rate = 0.0
  config.data.crop_size = (49, 49)
  config.eval.image_size = (98, 98)
  config.data.pad_height_multiple = pad_height_multiple
  return config


def mesh_of(mesh_config):
  devices = jax.devices()[:1] if mesh_config is None else jax.devices()
  return sharding.make_mesh(mesh_config or (('data', 1),), devices)


def test_padded_height_and_padding():
  mesh = mesh_of((('data', 2), ('spatial', 4)))
  assert sharding.padded_height(49, mesh) == 52
  assert sharding.padded_height(48, mesh) == 48
  assert sharding.padded_height(49, mesh, 3) == 60  # lcm(3, 4) = 12
  assert sharding.padded_height(49, mesh_of(None)) == 49
  assert sharding.padded_height(49, mesh_of(None), 8) == 56
  with pytest.raises(UserError, match='data.pad_height_multiple=0 must be an integer >= 1'):
    sharding.padded_height(49, mesh, 0)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(2, 5, 3, 3)).astype(np.float32),
           'label': rng.integers(0, 5, (2, 5, 3)).astype(np.int32), 'mask': np.ones(2, bool)}
  padded = sharding.pad_height(batch, 8, IGNORE)
  np.testing.assert_array_equal(padded['image'][:, :5], batch['image'])
  np.testing.assert_array_equal(padded['label'][:, :5], batch['label'])
  assert padded['image'].shape == (2, 8, 3, 3) and not padded['image'][:, 5:].any()
  assert padded['label'].shape == (2, 8, 3) and (padded['label'][:, 5:] == IGNORE).all()
  assert padded['mask'] is batch['mask']
  assert sharding.pad_height(batch, 5, IGNORE) is batch


@pytest.mark.parametrize('mesh_config', [(('data', 2), ('spatial', 4)),
                                         (('data', 1), ('spatial', 8))])
def test_only_image_axes_are_split_over_spatial(mesh_config):
  mesh = mesh_of(mesh_config)
  batch = {'image': np.zeros((2, 56, 8, 3), np.float32), 'label': np.zeros((2, 56, 8), np.int32),
           'mask': np.ones(2, bool), 'size': np.array([[50, 8], [56, 7]], np.int32)}
  got = sharding.to_global(mesh, batch)
  assert got['image'].sharding.spec[:2] == ('data', 'spatial')
  assert got['label'].sharding.spec[:2] == ('data', 'spatial')
  assert tuple(got['size'].sharding.spec) == ('data', None)
  assert tuple(got['mask'].sharding.spec) == ('data',)
  np.testing.assert_array_equal(jax.device_get(got['size']), batch['size'])


def test_a_spatial_axis_across_hosts_is_refused():
  """Devices of two processes along `spatial` would split one image between hosts."""
  device = lambda i: types.SimpleNamespace(id=i, process_index=i // 2)
  fake = types.SimpleNamespace(shape={'data': 2, 'spatial': 2}, axis_names=('data', 'spatial'),
                               devices=np.array([[device(0), device(2)],
                                                 [device(1), device(3)]], object))
  with pytest.raises(UserError, match=r'spatial=2 puts one image on the devices of processes '
                                      r'\[0, 1\]'):
    sharding.check_spatial(fake)
  fake.devices = fake.devices.T  # each row on one process
  sharding.check_spatial(fake)


def train_step(mesh_config, pad_height_multiple, config=None, crop=49, margin=0):
  """(loss, batch_stats) of one step on a batch of crop x crop labels (images `margin` px wider
  on each side), padded as train.py pads."""
  if config is None:
    config = spatial_config(pad_height_multiple)
  mesh = mesh_of(mesh_config)
  model = registry.build_model(config.model, num_classes=5)
  schedule = optim.learning_rate_schedule(config.optim, config.train.num_steps)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  rng = jax.random.key(0)
  init, _, shardings = steps.create_train_state(model, tx, config, mesh, rng)
  step = jax.jit(steps.make_train_step(model, tx, schedule, ignore_label=IGNORE),
                 in_shardings=(shardings, None, sharding.replicated(mesh)))
  data_rng = np.random.default_rng(0)
  side = crop + 2 * margin
  batch = {'image': data_rng.normal(size=(8, side, side, 3)).astype(np.float32),
           'label': data_rng.integers(0, 5, (8, crop, crop)).astype(np.int32)}
  height = sharding.padded_height(crop, mesh, config.data.pad_height_multiple)
  batch = sharding.to_global(mesh, sharding.pad_height(batch, height, IGNORE))
  state, metrics = step(init(rng), batch, rng)
  return float(metrics['loss']), jax.device_get(state.batch_stats), int(metrics['labelled_pixels'])


def test_train_step_with_a_49_crop_on_2x4_matches_one_device():
  loss, stats, count = train_step((('data', 2), ('spatial', 4)), 4)
  ref_loss, ref_stats, ref_count = train_step(None, 4)
  assert count == ref_count == 8 * 49 * 49  # the padded rows are not labelled
  assert loss == pytest.approx(ref_loss, rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               stats, ref_stats)
  # Without the fixed multiple one device pads nothing: the padded rows the mesh adds move
  # BatchNorm's statistics (the loss of the first step, before any update, is the same).
  _, unpadded_stats, _ = train_step(None, 1)
  gaps = jax.tree.leaves(jax.tree.map(lambda a, b: np.max(np.abs(a - b)), stats, unpadded_stats))
  assert max(gaps) > 1e-3


@pytest.mark.parametrize('name,context', [('fc_densenet_camvid', False), ('unet_camvid', False),
                                          ('unet_camvid', True)])
def test_whole_models_on_2x4_match_one_device(name, context):
  """FC-DenseNet and U-Net (valid convs, mirrored past the padded crop, or given 92 px of
  context around a 68 x 68 crop) pad inside to their stride; on a (data, spatial) mesh a step
  gives the one-device loss and statistics."""
  config = importlib.import_module(f'configs.{name}').get_config('smoke')
  config.data.pad_height_multiple = 4
  crop = 68 if context else 49
  if name == 'fc_densenet_camvid':
    config.model.fc_densenet.dropout_rate = 0.0
  else:
    config.model.unet.dropout_rate = 0.0
    config.model.unet.batch_norm = True  # statistics to compare
    config.model.unet.train_context = context
  margin = unet.train_margin(config.model)
  assert margin == (92 if context else 0)
  loss, stats, count = train_step((('data', 2), ('spatial', 4)), 4, config, crop, margin)
  ref_loss, ref_stats, ref_count = train_step(None, 4, config, crop, margin)
  assert count == ref_count == 8 * crop * crop
  assert loss == pytest.approx(ref_loss, rel=1e-5)
  assert jax.tree.leaves(stats)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               stats, ref_stats)


def eval_once(mesh_config, state, batch):
  config = spatial_config(pad_height_multiple=8)
  mesh = mesh_of(mesh_config)
  model = registry.build_model(config.model, 5)
  eval_fn = evaluate.make_eval_fn(model, 5, config, mesh)
  height = sharding.padded_height(98, mesh, config.data.pad_height_multiple)
  assert height == 104
  counts, predictions = eval_fn(state, sharding.to_global(
      mesh, sharding.pad_height(batch, height, IGNORE)))
  return np.asarray(counts['confusion']), np.asarray(predictions)


def test_evaluation_on_spatial_meshes_matches_one_device():
  config = spatial_config()
  model = registry.build_model(config.model, 5)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  init, _, _ = steps.create_train_state(model, tx, config, mesh_of(None), jax.random.key(0))
  state = jax.device_get(init(jax.random.key(0)))
  rng = np.random.default_rng(1)
  label = rng.integers(0, 5, (4, 98, 98)).astype(np.int32)
  size = np.array([[98, 98], [96, 96], [70, 90], [98, 98]], np.int32)
  for i, (h, w) in enumerate(size):  # what eval_batches gives an image smaller than 98 x 98
    label[i, h:], label[i, :, w:] = IGNORE, IGNORE
  batch = {'image': rng.normal(size=(4, 98, 98, 3)).astype(np.float32), 'label': label,
           'mask': np.array([True, True, True, False]), 'size': size}
  ref_confusion, ref_predictions = eval_once(None, state, batch)
  assert ref_confusion.sum() == 98 * 98 + 96 * 96 + 70 * 90
  for mesh_config in ((('data', 2), ('spatial', 4)), (('data', 1), ('spatial', 8))):
    confusion, predictions = eval_once(mesh_config, state, batch)
    assert predictions.shape == (4, 104, 98)
    # Pixels whose best two logits are within float32 rounding may flip; no more than that.
    assert np.mean(predictions != ref_predictions) < 1e-3
    assert np.abs(confusion - ref_confusion).sum() <= 2e-3 * ref_confusion.sum()


def numpy_miou(confusion):
  tp = np.diag(confusion).astype(np.float64)
  union = confusion.sum(0) + confusion.sum(1) - tp
  return np.mean(tp[union > 0] / union[union > 0])


@pytest.mark.slow
def test_end_to_end_on_2x4_matches_one_device_and_masks_padding(tmp_path, cache_dir,
                                                                monkeypatch):
  """The entry point trains a step on 49 x 49 crops and evaluates at eval.image_size 98 x 98
  (the 96 x 96 images padded) on a (2, 4) mesh and on one device; the mIoU is that of numpy
  on the unpadded predictions."""
  real_make_mesh, losses = sharding.make_mesh, {}
  real_check = train._check_finite  # pylint: disable=protected-access

  def run(name, one_device):
    config = spatial_config()
    config.data.cache_dir = cache_dir
    config.mesh = (('data', 2), ('spatial', 4))
    config.train.num_steps = config.train.eval_every_steps = 1
    config.train.checkpoint_every_steps = 1
    config.eval.num_images_to_write = 1
    # In float32 the two meshes' parameter updates differ by up to a few percent (summation
    # order; see test_sharding.py); a small step keeps that far below what moves a prediction.
    config.optim.learning_rate = 1e-4
    with monkeypatch.context() as patch:
      if one_device:
        config.mesh = (('data', 1), ('spatial', 1))
        patch.setattr(sharding, 'make_mesh',
                      lambda mesh, devices=None: real_make_mesh(mesh, jax.devices()[:1]))

      def check(pending, *args):
        fetched = real_check(pending, *args)
        losses[name] = float(fetched[0][1]['loss'])
        return fetched
      patch.setattr(train, '_check_finite', check)
      state = train.train_and_evaluate(config, str(tmp_path / name))
    row = json.loads(open(os.path.join(tmp_path, name, 'evals.jsonl')).read())
    return config, jax.device_get(state), row

  config, state, row = run('mesh', one_device=False)
  _, ref_state, ref_row = run('one', one_device=True)
  assert losses['mesh'] == pytest.approx(losses['one'], rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               state.batch_stats, ref_state.batch_stats)
  assert row['miou'] == pytest.approx(ref_row['miou'], abs=1e-4)

  # numpy: every val image normalised, padded to 100 x 98 (eval.image_size, then the mesh's
  # multiple of 4), labelled by the trained model on one device, cropped back to 96 x 96.
  model = registry.build_model(config.model, 5)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  seed = synthetic.SPLITS['val'][1]
  examples = [synthetic.generate(i, seed) for i in range(synthetic.SPLITS['val'][0])]
  mean, std = np.asarray(config.data.mean), np.asarray(config.data.std)
  confusion = np.zeros((5, 5), np.int64)
  for start in range(0, len(examples), 40):
    chunk = examples[start:start + 40]
    images = np.stack([(image - mean) / std for image, _ in chunk]).astype(np.float32)
    images = np.pad(images, ((0, 0), (0, 4), (0, 2), (0, 0)))
    predictions = np.asarray(apply(variables, images)).argmax(-1)
    labels = np.stack([label for _, label in chunk]).astype(np.int64)
    confusion += np.bincount((labels * 5 + predictions[:, :96, :96]).ravel(),
                             minlength=25).reshape(5, 5)
  # Every unpadded pixel counts once and no padded one does; the 8-device predictions are
  # numpy's but for pixels within float32 rounding of a tie.
  got = np.asarray(row['confusion'])
  assert got.sum() == confusion.sum() == 200 * 96 * 96
  assert np.abs(got - confusion).sum() <= 1e-3 * confusion.sum()
  assert row['miou'] == pytest.approx(numpy_miou(confusion), abs=1e-3)
