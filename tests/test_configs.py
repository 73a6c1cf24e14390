"""Every config in configs/ builds, names code that exists, and its full-size model has shapes."""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from deeplab_jax import data
from deeplab_jax import optim
from deeplab_jax import train
from deeplab_jax.errors import UserError
from deeplab_jax.models import deeplab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not os.path.basename(p).startswith(('_', 'common')))
VARIANTS = {'quickstart': [None, 'smoke'], 'v3plus_camvid': [None, 'cpu', 'smoke'],
            'v3plus_cityscapes': [None, 'smoke']}


def test_every_config_file_is_listed():
  assert sorted(VARIANTS) == CONFIGS


@pytest.mark.parametrize('name, arg', [(n, a) for n in CONFIGS for a in VARIANTS.get(n, [None])])
def test_config_builds(name, arg):
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  train.validate_config(config)
  assert config.data.name in data.DATASETS
  optim.make_optimizer(config.optim, config.train.num_steps)
  model = deeplab.build_model(config.model, num_classes=19)
  h, w = config.data.crop_size
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, h, w, 3)))
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, h, w, 3))), shapes)
  assert logits.shape == (1, h, w, 19)


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match="unknown variant 'gpu'"):
    importlib.import_module('configs.v3plus_camvid').get_config('gpu')


def test_cityscapes_stops_with_what_is_missing(tmp_path):
  config = importlib.import_module('configs.v3plus_cityscapes').get_config()
  config.data.cache_dir = str(tmp_path)
  with pytest.raises(UserError, match='the Cityscapes reader is not built yet'):
    data.get_dataset(config.data)
