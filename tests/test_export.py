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


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir whose checkpoint holds a freshly initialised tiny model (no training needed),
  with BatchNorm statistics made non-trivial so that the labels vary across the image."""
  config = quickstart.get_config('smoke')
  path = str(tmp_path_factory.mktemp('export_workdir'))
  num_classes = len(predict.class_info(config.data)[0])
  model = registry.build_model(config.model, num_classes)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  h, w = config.data.crop_size
  variables = model.init({'params': jax.random.key(1), 'dropout': jax.random.key(1)},
                         jnp.zeros((1, h, w, 3)), train=False)
  rng = np.random.default_rng(0)
  state = steps.TrainState.create(
      apply_fn=model.apply, params=variables['params'], tx=tx,
      batch_stats=jax.tree.map(lambda x: x + rng.uniform(0.0, 0.5, x.shape).astype(x.dtype),
                               variables['batch_stats']))
  state = state.replace(step=jnp.zeros((), jnp.int32))
  manager = checkpointing.make_manager(path, keep=1)
  checkpointing.save(manager, 7, state)
  manager.wait_until_finished()
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


@pytest.mark.parametrize('name', ['fcn_voc', 'unet_camvid', 'fc_densenet_camvid'])
def test_whole_models_are_refused_by_name(name):
  config = importlib.import_module(f'configs.{name}').get_config('smoke')
  with pytest.raises(UserError, match=f"export: model.name='{config.model.name}' cannot be "
                     'exported with a symbolic image size'):
    export.check_exportable(config)
