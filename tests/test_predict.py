"""`python -m deeplab_jax.predict`: label PNGs in each data set's format, and overlays."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import quickstart
from deeplab_jax import predict
from deeplab_jax import train
from deeplab_jax.data import synthetic
from deeplab_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_predict_writes_labels_and_overlays(tmp_path, cache_dir):
  config = quickstart.get_config('smoke')
  config.data.cache_dir = cache_dir
  config.eval.num_images_to_write = 0
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  inputs = tmp_path / 'inputs'
  (inputs / 'street').mkdir(parents=True)
  first, _ = synthetic.generate(0, seed=123)
  Image.fromarray(first).save(inputs / 'a.png')
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8)).save(
      inputs / 'street' / 'b.jpg')
  out = tmp_path / 'out'
  written = predict.predict_files(config, workdir, str(inputs), str(out))
  assert sorted(written) == ['a', 'street_b']
  for name, size in (('a', first.shape[:2]), ('street_b', (50, 70))):
    label = np.asarray(Image.open(out / f'{name}.png'))
    assert label.shape == size and label.max() < 5
    assert np.asarray(Image.open(out / f'{name}_overlay.png')).shape == (size[0], 2 * size[1], 3)
  # eval.crf: with 0 iterations the labels are unchanged; with 5 the CRF runs on the image.
  plain = np.asarray(Image.open(out / 'a.png'))
  config.eval.crf.enabled = True
  config.eval.crf.iterations = 0
  np.testing.assert_array_equal(predict.Predictor(config, workdir)(first), plain)
  config.eval.crf.iterations = 5
  refined = predict.Predictor(config, workdir)(first)
  assert refined.shape == plain.shape and refined.max() < 5
  # The command line, with a one-line error for an empty input.
  (tmp_path / 'empty').mkdir()
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  bad = subprocess.run(
      [sys.executable, '-m', 'deeplab_jax.predict', '--config=configs/quickstart.py:smoke',
       f'--config.data.cache_dir={cache_dir}', f'--workdir={workdir}',
       f'--input={tmp_path / "empty"}', f'--output={out}'],
      cwd=ROOT, env=env, capture_output=True, text=True)
  assert bad.returncode != 0 and 'holds no PNG or JPEG images' in bad.stderr.splitlines()[-1]


def test_dataset_formats():
  prediction = np.array([[0, 1], [18, 5]], np.uint8)
  cityscapes = np.asarray(predict.to_dataset_format(prediction, 'cityscapes'))
  np.testing.assert_array_equal(cityscapes, [[7, 8], [33, 17]])  # train ids -> label ids
  voc = predict.to_dataset_format(prediction, 'voc')
  assert voc.mode == 'P' and voc.getpalette()[3:6] == [128, 0, 0]
  np.testing.assert_array_equal(np.asarray(voc), prediction)
  np.testing.assert_array_equal(np.asarray(predict.to_dataset_format(prediction, 'ade20k')),
                                prediction + 1)
  np.testing.assert_array_equal(np.asarray(predict.to_dataset_format(prediction, 'camvid')),
                                prediction)


def test_no_checkpoint(tmp_path):
  config = quickstart.get_config('smoke')
  with pytest.raises(UserError, match='no checkpoint in'):
    predict.Predictor(config, str(tmp_path))
