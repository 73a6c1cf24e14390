"""Evaluation protocols: sliding windows, multi-scale + flip, OS8 eval of an OS16 model, and
continuous evaluation of a workdir."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from deeplab_jax import evaluate
from deeplab_jax import metrics
from deeplab_jax import steps
from deeplab_jax import train
from deeplab_jax.errors import UserError
from deeplab_jax.models import deeplab
from deeplab_jax.models import layers


def tiny_config(**eval_changes):
  config = quickstart.get_config('smoke')
  config.model.width_multiplier = 0.125
  for k, v in eval_changes.items():
    config.eval[k] = v
  return config


@pytest.mark.parametrize('size, window, overlap', [((37, 50), (16, 16), 1 / 3),
                                                   ((16, 64), (16, 20), 0.5),
                                                   ((9, 9), (16, 16), 0.0)])
def test_sliding_windows_cover_every_pixel_and_average(size, window, overlap):
  images = jax.random.normal(jax.random.key(0), (2, *size, 3))
  # A pointwise "model": any window sees the same value at a pixel, so the average is exact.
  got = evaluate.sliding_window_logits(lambda x: 2 * x + 1, images, window, overlap)
  np.testing.assert_allclose(got, 2 * images + 1, rtol=1e-6)
  # A model that reports where its window starts shows that windows really move and overlap.
  seen = evaluate.sliding_window_logits(
      lambda x: jnp.broadcast_to(jnp.mean(x, axis=(1, 2), keepdims=True), x.shape),
      images, window, overlap)
  if size[0] > window[0] or size[1] > window[1]:
    assert len(np.unique(np.asarray(seen[0, ..., 0]).round(5))) > 1


def _model_and_variables(config):
  model = deeplab.build_model(config.model, num_classes=5)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))
  return model, variables


def test_multi_scale_and_flip_average_the_passes():
  config = tiny_config(scales=(0.5, 1.0), flip=True)
  model, variables = _model_and_variables(config)
  images = jax.random.normal(jax.random.key(1), (2, 48, 64, 3))
  got = jax.jit(lambda v, x: evaluate.predict_logits(model, v, x, config))(variables, images)
  f = jax.jit(lambda x: model.apply(variables, x, train=False))
  expected = []
  for s in (0.5, 1.0):
    x = layers.resize_bilinear(images, (round(48 * s), round(64 * s)))
    expected.append(layers.resize_bilinear(f(x), (48, 64)))
    expected.append(layers.resize_bilinear(f(x[:, :, ::-1])[:, :, ::-1], (48, 64)))
  np.testing.assert_allclose(got, np.mean(expected, axis=0), atol=1e-5)
  single = jax.jit(lambda v, x: evaluate.predict_logits(model, v, x, tiny_config()))(
      variables, images)
  assert not np.allclose(got, single, atol=1e-3)


def test_sliding_mode_on_a_model_matches_whole_image_where_windows_are_the_image():
  config = tiny_config(mode='sliding', window_size=(48, 64))
  model, variables = _model_and_variables(config)
  images = jax.random.normal(jax.random.key(1), (1, 48, 64, 3))
  whole = evaluate.predict_logits(model, variables, images, tiny_config())
  np.testing.assert_allclose(evaluate.predict_logits(model, variables, images, config), whole,
                             atol=1e-5)
  smaller = tiny_config(mode='sliding', window_size=(32, 32))
  assert evaluate.predict_logits(model, variables, images, smaller).shape == whole.shape


def test_os8_evaluation_of_an_os16_model_keeps_the_weights_and_doubles_the_rates():
  config = tiny_config(output_stride=8)
  config.model.output_stride = 16
  trained = deeplab.build_model(config.model, 5)
  at_os8 = evaluate.build_eval_model(config, 5)
  x = jnp.zeros((1, 64, 64, 3))
  shapes = lambda m: jax.tree.map(lambda a: a.shape,
                                  jax.eval_shape(m.init, jax.random.key(0), x)['params'])
  assert shapes(trained) == shapes(at_os8)
  rates = {}

  def interceptor(next_fun, args, kwargs, context):
    m = context.module
    if isinstance(m, nn.Conv) and context.method_name == '__call__':
      rates['/'.join(m.scope.path)] = np.atleast_1d(m.kernel_dilation or 1)[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(at_os8.init, jax.random.key(0), x)
  assert [rates[f'aspp/atrous{i}/conv'] for i in (1, 2, 3)] == [
      2 * r for r in config.model.aspp.atrous_rates]
  assert rates['backbone/block3_unit1/conv2/conv'] == 2  # block3 is dilated at OS8


@pytest.mark.parametrize('changes, message', [
    ({'mode': 'tiles'}, "eval.mode='tiles' is not one of ('whole', 'sliding')"),
    ({'window_overlap': 1.0}, 'eval.window_overlap=1.0 must be in [0, 1)'),
    ({'scales': (1.0, -0.5)}, 'eval.scales=(1.0, -0.5) needs at least one scale'),
])
def test_bad_eval_settings(changes, message):
  with pytest.raises(UserError) as info:
    steps.validate_config(tiny_config(**changes))
  assert message in str(info.value)


def test_bad_eval_output_stride():
  with pytest.raises(UserError, match=r'eval.output_stride=12 is not one of \(8, 16, 32\)'):
    evaluate.build_eval_model(tiny_config(output_stride=12), 5)
  config = tiny_config(output_stride=16)
  config.model.output_stride = 8
  config.model.aspp.atrous_rates = (3, 6)
  with pytest.raises(UserError, match=r'turns model.aspp.atrous_rates=\(3, 6\) into \(1.5, 3.0\)'):
    evaluate.build_eval_model(config, 5)


def test_continuous_evaluation_follows_training_and_stops_by_itself(tmp_path, cache_dir):
  workdir = str(tmp_path / 'run')
  config = quickstart.get_config('smoke')
  config.data.cache_dir = cache_dir
  config.eval.num_images_to_write = 0
  first = config.copy_and_resolve_references()
  first.train.num_steps = 2
  train.train_and_evaluate(first, workdir)  # checkpoint and val evaluation at step 2
  evaluator = config.copy_and_resolve_references()
  evaluator.eval.flip = True  # another protocol than training's own evaluations
  evaluator.eval.poll_seconds = 0
  waits = []

  def sleep(_):  # while the evaluator waits, training goes on to step 4
    waits.append(1)
    if len(waits) == 1:
      train.train_and_evaluate(config, workdir)

  train.evaluate_continuously(evaluator, workdir, sleep=sleep)
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'evals.jsonl'))]
  assert [(r['step'], r['protocol']) for r in rows] == [
      (2, 'whole scales=1.0 os=16'), (2, 'whole scales=1.0 flip os=16'),
      (4, 'whole scales=1.0 os=16'), (4, 'whole scales=1.0 flip os=16')]
  assert len(waits) == 1
  for r in rows:  # each line keeps its confusion matrix, from which its figures come
    confusion = np.asarray(r['confusion'])
    assert confusion.shape == (5, 5) and confusion.sum() > 0
    summary = metrics.summarize(confusion, list(r['per_class_iou']))
    assert summary['miou'] == pytest.approx(r['miou'])
  # Run again: everything is evaluated; it stops at once without a new line.
  train.evaluate_continuously(evaluator, workdir, sleep=sleep)
  assert len(open(os.path.join(workdir, 'evals.jsonl')).readlines()) == 4
  # A run that stopped early (here: one told to expect step 6): no new checkpoint within
  # eval.wait_seconds ends the wait.
  evaluator.train.num_steps = 6
  evaluator.eval.wait_seconds = 250
  clock = iter(range(0, 10_000, 100))
  naps = []
  train.evaluate_continuously(evaluator, workdir, sleep=naps.append, clock=lambda: next(clock))
  assert len(naps) == 2 and len(open(os.path.join(workdir, 'evals.jsonl')).readlines()) == 4
