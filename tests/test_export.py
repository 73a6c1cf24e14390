"""Export: the SavedModel and the StableHLO artifact label images as the JAX model does."""

import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from deeplab_jax import checkpointing
from deeplab_jax import export
from deeplab_jax import optim
from deeplab_jax import predict
from deeplab_jax import steps
from deeplab_jax.errors import UserError
from deeplab_jax.models import registry


def save_initial_checkpoint(config, path, randomize_zeros=False):
  """Writes a checkpoint of a freshly initialised model (no training needed), with BatchNorm
  statistics made non-trivial (and with `randomize_zeros` zero-initialised weights, such as FCN's
  score layers, random), so that the labels vary across the image."""
  num_classes = len(predict.class_info(config.data)[0])
  model = registry.build_model(config.model, num_classes)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  h, w = config.data.crop_size
  variables = model.init({'params': jax.random.key(1), 'dropout': jax.random.key(1)},
                         jnp.zeros((1, h, w, 3)), train=False)
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda x: rng.normal(0.0, 0.1, x.shape).astype(x.dtype) if randomize_zeros and not np.any(x) else x,
      variables['params'])
  state = steps.TrainState.create(
      apply_fn=model.apply, params=params, tx=tx,
      batch_stats=jax.tree.map(lambda x: x + rng.uniform(0.0, 0.5, x.shape).astype(x.dtype),
                               variables.get('batch_stats', {})))
  state = state.replace(step=jnp.zeros((), jnp.int32))
  manager = checkpointing.make_manager(path, keep=1)
  checkpointing.save(manager, 7, state)
  manager.wait_until_finished()


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  config = quickstart.get_config('smoke')
  path = str(tmp_path_factory.mktemp('export_workdir'))
  save_initial_checkpoint(config, path)
  return config, path


def images(h, w, seed):
  return np.random.default_rng(seed).integers(0, 256, (2, h, w, 3), dtype=np.uint8)


def test_savedmodel_and_stablehlo_label_as_the_jax_model(workdir, tmp_path):
  config, path = workdir
  predictor = predict.Predictor(config, path)
  want = {(h, w): np.stack([predictor(im) for im in images(h, w, h)])
          for h, w in ((37, 50), (64, 48))}
  assert all(len(np.unique(labels)) > 1 for labels in want.values())

  saved = export.export_model(config, path, 'savedmodel', str(tmp_path / 'sm'),
                              probabilities=True)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serving = tf.saved_model.load(saved).signatures['serving_default']
  for (h, w), labels in want.items():
    out = serving(images=tf.constant(images(h, w, h)))
    np.testing.assert_array_equal(out['labels'].numpy(), labels)
    probabilities = out['probabilities'].numpy()
    assert probabilities.shape == (2, h, w, len(predictor.class_names))
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)

  artifact = export.export_model(config, path, 'stablehlo', str(tmp_path / 'shlo'))
  assert os.path.basename(artifact) == export.STABLEHLO_FILE
  with open(artifact, 'rb') as f:
    exported = jax.export.deserialize(f.read())
  for (h, w), labels in want.items():
    (got,) = exported.call(images(h, w, h))
    np.testing.assert_array_equal(np.asarray(got), labels)


def test_export_refuses_what_sizes_cannot_carry(workdir, tmp_path):
  config, path = workdir
  config = config.copy_and_resolve_references()
  config.eval.scales = (0.75, 1.0)
  with pytest.raises(UserError, match=r'eval.scales=\(0.75, 1.0\)'):
    export.export_model(config, path, 'stablehlo', str(tmp_path / 'x'))
  with pytest.raises(UserError, match="--format='onnx'"):
    export.export_model(workdir[0], path, 'onnx', str(tmp_path / 'x'))


def test_init_from_reads_a_workdirs_latest_checkpoint(workdir):
  """config.init_from may name another run's workdir: its latest checkpoint's variables."""
  from deeplab_jax import pretrained  # pylint: disable=g-import-not-at-top
  config, path = workdir
  _, want = predict.load_latest(config, path, len(predict.class_info(config.data)[0]))
  got = pretrained.load_variables(path)
  for collection in ('params', 'batch_stats'):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(got[collection]),
                 jax.device_get(want[collection]))
  with pytest.raises(UserError, match='neither a directory written by'):
    pretrained.load_variables(os.path.dirname(path))


@pytest.mark.parametrize('name,variant', [('fcn_voc', 'smoke'), ('unet_camvid', 'smoke,same'),
                                          ('unet_camvid', 'smoke'),
                                          ('fc_densenet_camvid', 'smoke'),
                                          ('gscnn_cityscapes', 'smoke')])
def test_whole_models_export_with_symbolic_sizes(name, variant, tmp_path):
  """FCN's reference padding and crops, U-Net's and FC-DenseNet's padding to their stride,
  the valid U-Net's overlap-tile mirror, FC-DenseNet's cropped transposed convs and
  Gated-SCNN's Canny (a while_loop) and full-size shape stream, all traced for any size: the
  artifact labels sizes that divide by no stride as predict does (37 rows: less than U-Net's
  92 px margin, so mirrored more than once)."""
  config = importlib.import_module(f'configs.{name}').get_config(variant)
  config.eval.input_scale = 1.0
  path = str(tmp_path / 'workdir')
  save_initial_checkpoint(config, path, randomize_zeros=True)
  predictor = predict.Predictor(config, path)
  artifact = export.export_model(config, path, 'stablehlo', str(tmp_path / 'shlo'))
  with open(artifact, 'rb') as f:
    exported = jax.export.deserialize(f.read())
  for h, w in ((37, 50), (70, 41)):
    want = np.stack([predictor(im) for im in images(h, w, h)])
    assert len(np.unique(want)) > 1
    (got,) = exported.call(images(h, w, h))
    np.testing.assert_array_equal(np.asarray(got), want)
