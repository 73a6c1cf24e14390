"""Evaluation protocols: sliding windows, multi-scale + flip (probabilities or logits averaged),
OS8 eval of an OS16 model, continuous evaluation of a workdir, and evals.jsonl."""

import json
import logging
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from deeplab_jax import evaluate
from deeplab_jax import inference
from deeplab_jax import metrics
from deeplab_jax import steps
from deeplab_jax import train
from deeplab_jax.errors import UserError
from deeplab_jax.models import registry
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
  got = inference.sliding_window_logits(lambda x: 2 * x + 1, images, window, overlap)
  np.testing.assert_allclose(got, 2 * images + 1, rtol=1e-6)
  # A model that reports where its window starts shows that windows really move and overlap.
  seen = inference.sliding_window_logits(
      lambda x: jnp.broadcast_to(jnp.mean(x, axis=(1, 2), keepdims=True), x.shape),
      images, window, overlap)
  if size[0] > window[0] or size[1] > window[1]:
    assert len(np.unique(np.asarray(seen[0, ..., 0]).round(5))) > 1


def _model_and_variables(config):
  model = registry.build_model(config.model, num_classes=5)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))
  return model, variables


def _passes(model, variables, images):
  """The logits of scales 0.5 and 1 with and without the flip, at the images' size."""
  h, w = images.shape[1:3]
  f = jax.jit(lambda x: model.apply(variables, x, train=False))
  out = []
  for s in (0.5, 1.0):
    x = layers.resize_bilinear(images, (round(h * s), round(w * s)))
    out.append(np.asarray(layers.resize_bilinear(f(x), (h, w))))
    out.append(np.asarray(layers.resize_bilinear(f(x[:, :, ::-1])[:, :, ::-1], (h, w))))
  return np.stack(out).astype(np.float64)


def _np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _peaky(variables, factor=30.0):
  """The variables with the classifier's kernel scaled up: confident logits, so that passes
  disagree strongly and averaging probabilities and logits pick different classes."""
  classifier = {**variables['params']['classifier']}
  classifier['kernel'] = classifier['kernel'] * factor
  return {**variables, 'params': {**variables['params'], 'classifier': classifier}}


def test_multi_scale_and_flip_average_probabilities_by_default():
  """Two scales with flips: the labels are the argmax of the passes' mean softmax (numpy), as
  TF DeepLab's predict_labels_multi_scale, and the CRF's log-probabilities are its log."""
  config = tiny_config(scales=(0.5, 1.0), flip=True)
  assert config.eval.average == 'probabilities'
  model, variables = _model_and_variables(config)
  variables = _peaky(variables)
  images = jax.random.normal(jax.random.key(1), (2, 48, 64, 3))
  passes = _passes(model, variables, images)
  mean_probs = _np_softmax(passes).mean(0)
  labels = jax.jit(lambda v, x: inference.predict_labels(model, v, x, config))(variables, images)
  expected = mean_probs.argmax(-1)
  # Pixels whose two best mean probabilities are within float32 rounding may go either way.
  top2 = np.sort(mean_probs, -1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-5
  np.testing.assert_array_equal(np.asarray(labels)[clear], expected[clear])
  log_probs = jax.jit(lambda v, x: inference.predict_log_probs(model, v, x, config))(
      variables, images)
  np.testing.assert_allclose(np.exp(np.asarray(log_probs, np.float64)), mean_probs, atol=2e-5)
  # Averaging logits picks other classes at some pixels: the test tells the two apart.
  by_logits = passes.mean(0).argmax(-1)
  assert np.sum((by_logits != expected) & clear) > 0


def test_multi_scale_and_flip_average_logits_when_asked():
  config = tiny_config(scales=(0.5, 1.0), flip=True, average='logits')
  model, variables = _model_and_variables(config)
  images = jax.random.normal(jax.random.key(1), (2, 48, 64, 3))
  got = jax.jit(lambda v, x: inference.predict_scores(model, v, x, config))(variables, images)
  np.testing.assert_allclose(got, _passes(model, variables, images).mean(0), atol=1e-5)
  single = jax.jit(lambda v, x: inference.predict_scores(model, v, x, tiny_config()))(
      variables, images)
  assert not np.allclose(got, single, atol=1e-3)


def test_one_pass_is_the_models_logits_under_either_average():
  model, variables = _model_and_variables(tiny_config())
  images = jax.random.normal(jax.random.key(2), (1, 48, 48, 3))
  logits = np.asarray(model.apply(variables, images, train=False))
  for average in inference.AVERAGES:
    config = tiny_config(average=average)
    np.testing.assert_array_equal(inference.predict_scores(model, variables, images, config),
                                  logits)
    np.testing.assert_allclose(inference.predict_log_probs(model, variables, images, config),
                               np.log(_np_softmax(logits.astype(np.float64))), atol=1e-5)


def test_protocol_names_the_averaging_only_with_several_passes():
  assert evaluate.protocol(tiny_config()) == 'whole scales=1.0 os=16'
  assert evaluate.protocol(tiny_config(average='logits')) == 'whole scales=1.0 os=16'
  assert evaluate.protocol(tiny_config(flip=True)) == 'whole scales=1.0 flip avg=probs os=16'
  assert (evaluate.protocol(tiny_config(scales=(0.5, 1.0), average='logits'))
          == 'whole scales=0.5,1.0 avg=logits os=16')


def test_sliding_mode_on_a_model_matches_whole_image_where_windows_are_the_image():
  config = tiny_config(mode='sliding', window_size=(48, 64))
  model, variables = _model_and_variables(config)
  images = jax.random.normal(jax.random.key(1), (1, 48, 64, 3))
  whole = inference.predict_scores(model, variables, images, tiny_config())
  np.testing.assert_allclose(inference.predict_scores(model, variables, images, config), whole,
                             atol=1e-5)
  smaller = tiny_config(mode='sliding', window_size=(32, 32))
  assert inference.predict_scores(model, variables, images, smaller).shape == whole.shape


def test_os8_evaluation_of_an_os16_model_keeps_the_weights_and_doubles_the_rates():
  config = tiny_config(output_stride=8)
  config.model.output_stride = 16
  trained = registry.build_model(config.model, 5)
  at_os8 = inference.build_eval_model(config, 5)
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
    ({'average': 'max'}, "eval.average='max' is not one of ('probabilities', 'logits')"),
])
def test_bad_eval_settings(changes, message):
  with pytest.raises(UserError) as info:
    steps.validate_config(tiny_config(**changes))
  assert message in str(info.value)


def test_bad_eval_output_stride():
  with pytest.raises(UserError, match=r'eval.output_stride=12 is not one of \(8, 16, 32\)'):
    inference.build_eval_model(tiny_config(output_stride=12), 5)
  config = tiny_config(output_stride=16)
  config.model.output_stride = 8
  config.model.aspp.atrous_rates = (3, 6)
  with pytest.raises(UserError, match=r'turns model.aspp.atrous_rates=\(3, 6\) into \(1.5, 3.0\)'):
    inference.build_eval_model(config, 5)


@pytest.mark.slow
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
      (2, 'whole scales=1.0 os=16'), (2, 'whole scales=1.0 flip avg=probs os=16'),
      (4, 'whole scales=1.0 os=16'), (4, 'whole scales=1.0 flip avg=probs os=16')]
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


def _row(step, protocol='whole scales=1.0 os=16'):
  return {'step': step, 'split': 'val', 'protocol': protocol, 'miou': 0.5, 'pixel_accuracy': 0.9}


def test_a_damaged_evals_line_is_skipped_and_dropped_at_the_next_write(tmp_path, caplog):
  """A kill mid-write under in-place writing left a truncated last line: resume still reads the
  good lines (with a warning naming the file and line), and the next write keeps them."""
  config = tiny_config()
  path = tmp_path / 'evals.jsonl'
  good = json.dumps(_row(2))
  path.write_text(good + '\n' + json.dumps(_row(4))[:30])  # no newline: cut short
  with caplog.at_level(logging.WARNING):
    assert evaluate.is_evaluated(str(tmp_path), config, 2)
    assert not evaluate.is_evaluated(str(tmp_path), config, 4)
  assert f'{path} line 2 is damaged' in caplog.text
  evaluate.append_evaluation(str(tmp_path), {**_row(4), 'miou': float('nan')})
  lines = path.read_text().splitlines()
  assert lines[0] == good and len(lines) == 2
  assert json.loads(lines[1]) == {**_row(4), 'miou': None}
  assert evaluate.is_evaluated(str(tmp_path), config, 4)
  assert sorted(os.listdir(tmp_path)) == ['evals.jsonl']  # no temp file left behind
  # launch/summarize.py reads around a damaged line too.
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'launch'))
  import summarize  # pylint: disable=g-import-not-at-top
  path.write_text(json.dumps(_row(6)) + '\n{"step": 8, "spl\n')
  assert summarize.last_evaluation(str(tmp_path))['step'] == 6


def test_scoring_a_checkpoint_again_replaces_its_line(tmp_path):
  """--mode=eval on a step already scored under the same protocol leaves one line for it (the
  new one); another protocol or split of that step keeps its own line."""
  evaluate.append_evaluation(str(tmp_path), _row(2))
  evaluate.append_evaluation(str(tmp_path), _row(2, protocol='whole scales=1.0 os=16 ema=0.99'))
  evaluate.append_evaluation(str(tmp_path), {**_row(2), 'split': 'dev'})
  evaluate.append_evaluation(str(tmp_path), {**_row(2), 'miou': 0.25})
  rows = [json.loads(line) for line in (tmp_path / 'evals.jsonl').read_text().splitlines()]
  assert [(r['split'], r['protocol'].endswith('ema=0.99'), r['miou']) for r in rows] == [
      ('val', True, 0.5), ('dev', False, 0.5), ('val', False, 0.25)]


def test_evals_are_written_atomically(tmp_path, monkeypatch):
  """A write killed before its rename leaves the previous file as it was."""
  path = tmp_path / 'evals.jsonl'
  evaluate.append_evaluation(str(tmp_path), _row(2))
  before = path.read_text()

  def killed(fd):  # the new file written, not yet renamed over the old one
    raise KeyboardInterrupt('killed')

  monkeypatch.setattr(evaluate.os, 'fsync', killed)
  with pytest.raises(KeyboardInterrupt):
    evaluate.append_evaluation(str(tmp_path), _row(4))
  assert path.read_text() == before
