"""Weight averaging (optim.ema_decay): the state's average against one computed here with numpy,
what evaluation scores, resuming a checkpoint written without one, and the decay's range.

The rule (deeplab_jax/optim.py, "weight averaging"): off at 0; otherwise the average starts at
the initial params and BatchNorm statistics and, after every optimizer step, becomes
decay * ema + (1 - decay) * new, for both, in float32, with no debiasing.
"""

import json
import logging
import os

import flax
import jax
import numpy as np
import pytest

from configs import quickstart
from deeplab_jax import checkpointing
from deeplab_jax import evaluate
from deeplab_jax import inference
from deeplab_jax import optim
from deeplab_jax import predict
from deeplab_jax import sharding
from deeplab_jax import steps
from deeplab_jax import train
from deeplab_jax.errors import UserError
from deeplab_jax.models import registry

DECAY = 0.9
NUM_STEPS = 3


def smoke_config(ema_decay=0.0):
  config = quickstart.get_config('smoke')
  config.optim.ema_decay = ema_decay
  return config


def flat(tree):
  return flax.traverse_util.flatten_dict(jax.device_get(tree), sep='/')


def weights(state):
  return {'params': state.params, 'batch_stats': state.batch_stats}


def setup(ema_decay):
  """The trainer's step (donated state) on quickstart:smoke's model over one device, its
  initial state and a fixed batch of 4 48 x 48 images."""
  config = smoke_config(ema_decay)
  mesh = sharding.make_mesh((('data', -1),), jax.devices()[:1])
  model = registry.build_model(config.model, num_classes=5)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  schedule = optim.learning_rate_schedule(config.optim, config.train.num_steps)
  init, abstract, shardings = steps.create_train_state(model, tx, config, mesh,
                                                       jax.random.key(0))
  step = jax.jit(steps.make_train_step(model, tx, schedule, ignore_label=255,
                                       ema_decay=ema_decay),
                 in_shardings=(shardings, None, sharding.replicated(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  gen = np.random.default_rng(0)
  batch = sharding.to_global(mesh, {
      'image': gen.normal(size=(4, 48, 48, 3)).astype(np.float32),
      'label': gen.integers(0, 5, (4, 48, 48)).astype(np.int32)})
  return dict(config=config, mesh=mesh, model=model, step=step, batch=batch, abstract=abstract,
              init=init, shardings=shardings)


@pytest.fixture(scope='module')
def runs():
  """NUM_STEPS steps with ema_decay=DECAY and with 0: the weights before and after each step,
  and the final states."""
  out = {}
  for decay in (DECAY, 0.0):
    s = setup(decay)
    state = s['init'](jax.random.key(0))
    history = [flat(weights(state))]
    emas = [None if state.ema is None else flat(state.ema)]
    for _ in range(NUM_STEPS):
      state, metrics = s['step'](state, s['batch'], jax.random.key(1))
      assert np.isfinite(float(metrics['loss']))
      history.append(flat(weights(state)))
      emas.append(None if state.ema is None else flat(state.ema))
    out[decay] = dict(s, state=state, history=history, emas=emas)
  return out


def test_the_average_is_the_running_average_of_each_steps_weights(runs):
  run = runs[DECAY]
  history = run['history']
  # Starts at the initial weights, in buffers of its own (the state is donated at each step).
  init = run['init'](jax.random.key(0))
  for a, b in zip(jax.tree.leaves(init.ema), jax.tree.leaves(weights(init))):
    np.testing.assert_array_equal(a, b)
    assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()
  assert run['emas'][0].keys() == history[0].keys()
  assert any(k.startswith('batch_stats/') for k in history[0])
  want = {k: v.astype(np.float64) for k, v in history[0].items()}
  for step in range(1, NUM_STEPS + 1):
    want = {k: DECAY * want[k] + (1 - DECAY) * history[step][k] for k in want}
    got = run['emas'][step]
    for k in want:
      assert got[k].dtype == np.float32, k
      # float32: a few roundings of values of this size.
      scale = np.maximum(np.abs(want[k]), np.abs(history[step][k]))
      np.testing.assert_array_less(np.abs(got[k] - want[k]), 4e-7 * scale + 1e-30,
                                   err_msg=f'{k} at step {step}')
  # The average lags the weights: after the steps it is neither the start nor the end, for
  # parameters and BatchNorm statistics alike.
  final = run['emas'][NUM_STEPS]
  for prefix in ('params/', 'batch_stats/'):
    moved = [k for k in final if k.startswith(prefix) and not (
        np.array_equal(final[k], history[0][k]) or np.array_equal(final[k], history[-1][k]))]
    assert moved, prefix


def test_training_updates_the_raw_weights_alike_and_decay_zero_keeps_no_average(runs):
  assert all(e is None for e in runs[0.0]['emas'])
  assert runs[0.0]['state'].ema is None and runs[0.0]['abstract'].ema is None
  for a, b in zip(runs[DECAY]['history'], runs[0.0]['history']):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Evaluation, predict and export take the raw weights then.
  state = runs[0.0]['state']
  assert evaluate.eval_variables(state, runs[0.0]['config']) == weights(state)
  assert evaluate.protocol(runs[0.0]['config']) == 'whole scales=1.0 os=16'


def test_evaluation_scores_the_average(runs):
  """A state whose average would call every pixel class 2 (its classifier's bias for class 2
  raised by 100): the eval function's predictions are the average's, not the raw weights'."""
  run = runs[DECAY]
  config, model, mesh = run['config'], run['model'], run['mesh']
  state = run['state']
  ema = flat(state.ema)
  logits_bias = [k for k, v in ema.items() if k.startswith('params/') and k.endswith('/bias')
                 and v.shape == (5,)]
  assert len(logits_bias) == 1, logits_bias
  ema[logits_bias[0]] = ema[logits_bias[0]] + 100.0 * (np.arange(5) == 2)
  state = state.replace(ema=jax.device_put(flax.traverse_util.unflatten_dict(ema, sep='/'),
                                           sharding.replicated(mesh)))
  gen = np.random.default_rng(1)
  batch = sharding.to_global(mesh, {
      'image': gen.normal(size=(2, 48, 48, 3)).astype(np.float32),
      'label': gen.integers(0, 5, (2, 48, 48)).astype(np.int32),
      'mask': np.ones(2, bool)})
  eval_model = inference.build_eval_model(config, 5)
  counts, predictions = evaluate.make_eval_fn(eval_model, 5, config, mesh)(state, batch)
  confusion = counts['confusion']
  assert np.all(np.asarray(predictions) == 2)
  np.testing.assert_array_equal(predictions, inference.predict_labels(
      eval_model, state.ema, batch['image'], config))
  assert np.asarray(confusion)[:, 2].sum() == 2 * 48 * 48
  raw = inference.predict_labels(eval_model, weights(state), batch['image'], config)
  assert not np.all(np.asarray(raw) == 2)
  assert evaluate.protocol(config) == 'whole scales=1.0 os=16 ema=0.9'
  with pytest.raises(ValueError, match='no average of the weights'):
    evaluate.eval_variables(runs[0.0]['state'], config)


def test_a_checkpoint_without_an_average_resumes_with_one_from_its_weights(runs, tmp_path,
                                                                           caplog):
  with_ema, without = runs[DECAY], runs[0.0]
  manager = checkpointing.make_manager(str(tmp_path / 'plain'), keep=2)
  checkpointing.save(manager, NUM_STEPS, without['state'])
  manager.wait_until_finished()
  with caplog.at_level(logging.INFO):
    state, step = checkpointing.restore_latest(manager, with_ema['abstract'])
  assert step == NUM_STEPS
  said = [r.getMessage() for r in caplog.records if 'average of the weights' in r.getMessage()]
  assert len(said) == 1 and '\n' not in said[0], said
  assert said[0].startswith(f'Checkpoint {NUM_STEPS} in ') and 'starts from' in said[0]
  restored = flat(weights(state))
  for k, v in without['history'][-1].items():
    np.testing.assert_array_equal(restored[k], v, err_msg=k)
  np.testing.assert_equal(flat(state.ema), restored)
  # It trains on (the donated state holds no buffer twice) with the rule from there.
  state, _ = with_ema['step'](state, with_ema['batch'], jax.random.key(1))
  new, ema = flat(weights(state)), flat(state.ema)
  for k in new:
    np.testing.assert_allclose(ema[k], DECAY * restored[k] + (1 - DECAY) * new[k],
                               rtol=1e-6, atol=1e-7, err_msg=k)
  # init_from (here that workdir) starts the average from the weights it loads.
  fresh = with_ema['init'](jax.random.key(0))
  init_from = train._init_from  # pylint: disable=protected-access
  loaded = init_from(fresh, with_ema['shardings'], str(tmp_path / 'plain'))
  np.testing.assert_equal(flat(weights(loaded)), restored)
  np.testing.assert_equal(flat(loaded.ema), restored)
  # A checkpoint with an average restores it; with ema_decay=0 it is left out.
  manager = checkpointing.make_manager(str(tmp_path / 'ema'), keep=2)
  checkpointing.save(manager, NUM_STEPS, with_ema['state'])
  manager.wait_until_finished()
  state, _ = checkpointing.restore_latest(manager, with_ema['abstract'])
  np.testing.assert_equal(flat(state.ema), with_ema['emas'][-1])
  state, _ = checkpointing.restore_latest(manager, without['abstract'])
  assert state.ema is None
  np.testing.assert_equal(flat(weights(state)), with_ema['history'][-1])


@pytest.mark.parametrize('decay', [1.0, -0.1, 1.5, float('nan')])
def test_a_decay_outside_zero_to_one_is_named(decay):
  with pytest.raises(UserError, match=rf'optim.ema_decay={decay} must be in \[0, 1\)'):
    steps.validate_config(smoke_config(decay))
  steps.validate_config(smoke_config(0.999))


def test_the_trainer_resumes_checkpoints_and_scores_the_average(runs, tmp_path, cache_dir,
                                                                caplog):
  """The entry point, with ema_decay=0.9, on a workdir whose checkpoint (step 3) was written
  without an average: it starts from step 3's weights, step 4 follows the rule, checkpoint 4
  holds it, and evals.jsonl's step-4 line (protocol ... ema=0.9) and predict score it
  (--mode=eval and eval_continuous evaluate as training does, restoring through the same
  checkpointing.restore)."""
  workdir = str(tmp_path / 'w')
  manager = checkpointing.make_manager(workdir, keep=3)
  checkpointing.save(manager, NUM_STEPS, runs[0.0]['state'])
  manager.wait_until_finished()
  config = smoke_config(DECAY)
  config.data.cache_dir = cache_dir
  config.eval.num_images_to_write = 0
  config.train.num_steps = NUM_STEPS + 1
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(config, workdir)
  assert any(r.getMessage().startswith(f'Checkpoint {NUM_STEPS} in ') and
             'starts from' in r.getMessage() for r in caplog.records)
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'evals.jsonl'))]
  assert [(r['step'], r['protocol']) for r in rows] == [(4, 'whole scales=1.0 os=16 ema=0.9')]
  saved = checkpointing.ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', '4', 'state'))
  w3, w4 = runs[0.0]['history'][-1], flat({k: saved[k] for k in ('params', 'batch_stats')})
  ema4 = flat(saved['ema'])
  assert ema4.keys() == w4.keys()
  for k, v in ema4.items():
    np.testing.assert_allclose(v, DECAY * w3[k] + (1 - DECAY) * w4[k], rtol=1e-6, atol=1e-7,
                               err_msg=k)
  # predict (and export, through the same load_latest) takes the checkpoint's average.
  step, variables = predict.load_latest(config, workdir, 5)
  assert step == 4
  np.testing.assert_equal(flat(variables), ema4)
