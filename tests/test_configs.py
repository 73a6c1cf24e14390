"""Every config in configs/ builds, names code that exists, its full-size model has shapes, and
its tiny variant trains on CPU."""

import glob
import importlib
import os
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import data
from deeplab_jax import optim
from deeplab_jax import sharding
from deeplab_jax import steps
from deeplab_jax.errors import UserError
from deeplab_jax.models import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not os.path.basename(p).startswith(('_', 'common')))
VARIANTS = {
    'quickstart': [None, 'smoke'],
    'v3plus_camvid': [None, 'cpu', 'smoke'],
    'v1_voc': [None, 'smoke'],
    'v2_voc': [None, 'smoke'],
    'v3_voc': [None, 'cascade', 'context_module', 'resnet50', 'smoke'],
    'v3_cityscapes': [None, 'smoke'],
    'v3_torchvision': ['resnet50', 'resnet101', 'resnet50,aux', 'resnet101,aux', 'aux,smoke'],
    'v3plus_voc': [None, 'resnet101', 'xception71', 'tf_zoo', 'smoke'],
    'v3plus_cityscapes': [None, 'resnet101', 'tf_zoo', 'smoke'],
    'v3plus_ade20k': [None, 'tf_zoo', 'smoke'],
    'v3plus_mobilenet_voc': [None, 'dm05', 'smoke'],
    'fc_densenet_camvid': [None, '56', '67', 'finetune', 'dev', 'smoke', 'cpu,dev'],
    'unet_camvid': [None, 'same', 'dev', 'same,smoke', 'smoke', 'cpu,dev'],
    'fcn_voc': [None, 'fcn16s', 'fcn32s', 'atonce', 'learned', 'same', 'smoke'],
    'fastfcn_ade20k': [None, 'fcn', 'r101', 'smoke', 'cpu', 'cpu,dev', 'cpu,fcn'],
    'gscnn_cityscapes': [None, 'smoke', 'cpu', 'cpu,dev'],
}
# The family members and the variant a test trains for two steps on CPU.
TINY = {n: next(a for a in v if a and 'smoke' in a) for n, v in VARIANTS.items()
        if n not in ('quickstart', 'v3plus_camvid')}  # those two train in test_train.py


def _load(name, arg):
  return importlib.import_module(f'configs.{name}').get_config(arg)


def test_every_config_file_is_listed():
  assert sorted(VARIANTS) == CONFIGS


@pytest.mark.parametrize('name, arg', [(n, a) for n in CONFIGS for a in VARIANTS[n]])
def test_config_builds(name, arg):
  config = _load(name, arg)
  steps.validate_config(config)
  assert config.data.name in data.DATASETS
  optim.make_optimizer(config.optim, config.train.num_steps)
  model = registry.build_model(config.model, num_classes=19)
  h, w = config.data.crop_size
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, h, w, 3)))
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, h, w, 3))), shapes)
  assert logits.shape == (1, h, w, 19)


@pytest.mark.parametrize('name', sorted(TINY))
def test_tiny_variant_trains(name):
  config = _load(name, TINY[name])
  num_classes = data.DATASETS[config.data.name].num_classes
  model = registry.build_model(config.model, num_classes)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  schedule = optim.learning_rate_schedule(config.optim, config.train.num_steps)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  init, _, _ = steps.create_train_state(model, tx, config, mesh, jax.random.key(0))
  state = init(jax.random.key(0))
  start = jax.tree.map(np.asarray, state.params)
  step = jax.jit(steps.make_train_step(model, tx, schedule, ignore_label=255,
                                       dual_task=steps.dual_task_loss(config)))
  h, w = config.data.crop_size
  images = jax.random.normal(jax.random.key(1), (2, h, w, 3))
  labels = jax.random.randint(jax.random.key(2), (2, h, w), 0, num_classes)
  losses = []
  for _ in range(2):
    state, metrics = step(state, {'image': images, 'label': labels}, jax.random.key(0))
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses)) and bool(metrics['state_finite'])
  moved = flax.traverse_util.flatten_dict(jax.tree.map(
      lambda a, b: float(np.abs(a - b).max()), start, jax.device_get(state.params)), sep='/')
  # Every conv kernel is trained: no branch is left out of the loss. (A BatchNorm scale of
  # 1.0 may keep its float32 value after two tiny steps.)
  still = [k for k, m in moved.items() if k.endswith('kernel') and m == 0]
  assert not still, still
  # Extra losses are added: v2's three scales + fused, torchvision's auxiliary head.
  extra = {'v2_voc': 3.0, 'v3_torchvision': 0.5}.get(name, 0.0)
  assert losses[0] > (1 + extra) * np.log(num_classes) * 0.8


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match="unknown variant 'gpu'"):
    _load('v3plus_camvid', 'gpu')
  with pytest.raises(ValueError, match="unknown variant 'resnet152'"):
    _load('v3plus_voc', 'resnet152,smoke')


@pytest.mark.parametrize('name, arg, message', [
    ('fc_densenet_camvid', '67,cpu', '"67" and "cpu" do not combine'),
    ('fc_densenet_camvid', 'cpu,smoke', '"cpu" and "smoke" do not combine'),
    ('unet_camvid', 'cpu,smoke', '"cpu" and "smoke" do not combine'),
    ('fastfcn_ade20k', 'cpu,r101', '"cpu" and "r101" do not combine'),
    ('fastfcn_ade20k', 'dev', '"dev" is a CamVid split'),
    ('gscnn_cityscapes', 'cpu,smoke', '"cpu" and "smoke" do not combine'),
    ('gscnn_cityscapes', 'dev', '"dev" is a CamVid split')])
def test_variants_that_contradict_are_named(name, arg, message):
  with pytest.raises(ValueError, match=message):
    _load(name, arg)


def test_cityscapes_stops_with_what_is_missing(tmp_path):
  config = _load('v3plus_cityscapes', None)
  config.data.cache_dir = str(tmp_path)
  with pytest.raises(UserError, match='needs data.root'):
    data.get_dataset(config.data)


@pytest.mark.parametrize('name', CONFIGS)
def test_configs_are_locked_against_new_fields(name):
  """A misspelt field in a config file stops with ml_collections' message naming it and the
  nearest field; setting an existing one works."""
  config = _load(name, VARIANTS[name][0])
  assert config.is_locked and config.model.backbone.is_locked and config.eval.crf.is_locked
  with pytest.raises(AttributeError, match='"num_stpes" does not exist.*Did you mean "num_steps"'):
    config.train.num_stpes = 3
  with pytest.raises(AttributeError, match='"atrous_rate" does not exist'):
    config.model.aspp.atrous_rate = (1, 2)
  config.train.num_steps = 3
  assert config.train.num_steps == 3


def test_the_library_does_not_import_configs():
  """deeplab_jax/ runs with any config source: no module of it imports the configs/ package."""
  imports = re.compile(r'^\s*(from\s+configs[\s.]|import\s+configs\b)')
  assert imports.match('from configs import common') and imports.match('  import configs.x')
  offenders = [f'{os.path.relpath(path, ROOT)}:{number}: {line.strip()}'
               for path in glob.glob(os.path.join(ROOT, 'deeplab_jax', '**', '*.py'),
                                     recursive=True)
               for number, line in enumerate(open(path), 1) if imports.match(line)]
  assert not offenders, offenders
