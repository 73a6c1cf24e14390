"""The optimizer: learning-rate schedules against their formulas by hand, and which parameters
get weight decay, on real tiny models' parameter trees.

The weight-decay rule (TF DeepLab's slim arg scopes: an L2 regulariser on conv `weights`, none
on BatchNorm's gamma/beta or on biases, and on depthwise weights only where
`regularize_depthwise` is set, which the Xception and MobileNetV2 recipes leave False):
every conv kernel is decayed; BatchNorm scales and offsets and conv biases are not; depthwise
kernels are not in the Xception and MobileNetV2 configs.
"""

import importlib

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from deeplab_jax import optim
from deeplab_jax.errors import UserError
from deeplab_jax.models import registry


def optim_config(**changes):
  c = ml_collections.ConfigDict(dict(
      learning_rate=0.01, end_learning_rate=0.0, power=0.9, schedule='poly',
      decay_every_steps=2000, decay_factor=0.1, warmup_steps=0, momentum=0.9, nesterov=False,
      weight_decay=1e-4, weight_decay_pattern=r'.*/kernel$', grad_clip_norm=0.0,
      optimizer='sgd', rmsprop_decay=0.9, rmsprop_eps=1e-6, lr_multipliers=()))
  c.update(changes)
  return c


def rates(schedule, at):
  return [float(schedule(t)) for t in at]


def test_poly_schedule_by_hand():
  schedule = optim.learning_rate_schedule(optim_config(), 1000)
  np.testing.assert_allclose(rates(schedule, [0, 500, 1000]), [0.01, 0.01 * 0.5 ** 0.9, 0.0],
                             rtol=1e-6, atol=1e-12)
  # An end rate: (lr0 - end) * (1 - t / T) ** power + end.
  schedule = optim.learning_rate_schedule(optim_config(end_learning_rate=1e-4), 1000)
  np.testing.assert_allclose(rates(schedule, [0, 250, 1000]),
                             [0.01, (0.01 - 1e-4) * 0.75 ** 0.9 + 1e-4, 1e-4], rtol=1e-6)


def test_warmup_joins_the_poly_schedule():
  """Linear from 0 to lr0 over the warmup, then the poly decay over the remaining steps (t
  counted from the warmup's end, T = num_steps - warmup_steps)."""
  schedule = optim.learning_rate_schedule(optim_config(warmup_steps=100), 1100)
  np.testing.assert_allclose(
      rates(schedule, [0, 50, 99, 100, 101, 600, 1100]),
      [0.0, 0.005, 0.0099, 0.01, 0.01 * (1 - 1 / 1000) ** 0.9, 0.01 * 0.5 ** 0.9, 0.0],
      rtol=1e-5, atol=1e-12)


def test_step_schedule_by_hand():
  schedule = optim.learning_rate_schedule(
      optim_config(schedule='step', learning_rate=1e-3, decay_every_steps=2000), 6000)
  np.testing.assert_allclose(rates(schedule, [0, 1999, 2000, 3999, 4000, 5999]),
                             [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)
  schedule = optim.learning_rate_schedule(
      optim_config(schedule='step', learning_rate=1e-3, decay_every_steps=2000,
                   warmup_steps=10), 6000)
  np.testing.assert_allclose(rates(schedule, [5, 10, 2009, 2010]), [5e-4, 1e-3, 1e-3, 1e-4],
                             rtol=1e-6)


@pytest.mark.parametrize('changes, message', [
    (dict(warmup_steps=1000), r'optim.warmup_steps=1000 must be in \[0, train.num_steps=1000\)'),
    (dict(schedule='cosine'), "optim.schedule='cosine' is not one of"),
    (dict(schedule='step', decay_every_steps=0), 'optim.decay_every_steps=0 must be >= 1'),
])
def test_bad_schedules_are_named(changes, message):
  with pytest.raises(UserError, match=message):
    optim.learning_rate_schedule(optim_config(**changes), 1000)


def tiny_params(name, arg='smoke'):
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  model = registry.build_model(config.model, num_classes=5)
  h, w = config.data.crop_size
  params = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(0)}, jnp.zeros((1, h, w, 3)),
      train=False))['params']
  return config, params


@pytest.mark.parametrize('name, depthwise_decayed', [
    ('quickstart', True), ('v1_voc', True), ('v3plus_voc', False),
    ('v3plus_mobilenet_voc', False), ('fc_densenet_camvid', True), ('unet_camvid', True), ('fcn_voc', True)])
def test_weight_decay_mask_on_real_parameter_trees(name, depthwise_decayed):
  """Decided from each array's shape alone: a 4-d array is a conv kernel ([kh, kw, in, out]);
  one with in == 1 is depthwise (one input channel per group); 1-d arrays are BatchNorm
  scales and offsets or biases."""
  config, params = tiny_params(name)
  mask = flax.traverse_util.flatten_dict(
      optim.weight_decay_mask(params, config.optim.weight_decay_pattern), sep='/')
  shapes = {k: v.shape for k, v in flax.traverse_util.flatten_dict(params, sep='/').items()}
  assert mask.keys() == shapes.keys()
  want = {k: len(s) == 4 and (depthwise_decayed or s[2] != 1) for k, s in shapes.items()}
  assert mask == want, sorted(k for k in want if mask[k] != want[k])
  # The tree has each kind the rule names, so no case is vacuous.
  assert any(len(s) == 1 for s in shapes.values())
  assert any(len(s) == 4 and s[2] == 1 for s in shapes.values()) == (not depthwise_decayed)
  classifier = {'fcn_voc': 'score_fr'}.get(name, 'classifier')
  assert not mask[f'{classifier}/bias'] and mask[f'{classifier}/kernel']


def test_optimizer_decays_only_the_masked_parameters():
  """With zero gradients SGD's first step is -lr * weight_decay * w on decayed parameters and
  exactly 0 on the others (momentum's trace starts from the first update)."""
  params = {'conv': {'kernel': jnp.full((3, 3, 2, 4), 2.0), 'bias': jnp.full((4,), 3.0)},
            'bn': {'scale': jnp.full((4,), 1.5), 'bias': jnp.full((4,), 0.5)},
            'sep': {'depthwise': {'kernel': jnp.full((3, 3, 1, 4), -1.0)}}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  for pattern, depthwise in ((r'.*/kernel$', -0.01 * 1e-4 * -1.0),
                             (r'(?!.*depthwise/kernel$).*/kernel$', 0.0)):
    tx = optim.make_optimizer(optim_config(weight_decay_pattern=pattern), 1000)
    updates, _ = tx.update(zeros, tx.init(params), params)
    updates = flax.traverse_util.flatten_dict(jax.device_get(updates), sep='/')
    np.testing.assert_allclose(updates['conv/kernel'], -0.01 * 1e-4 * 2.0, rtol=1e-6)
    for unmasked in ('conv/bias', 'bn/scale', 'bn/bias'):
      np.testing.assert_array_equal(updates[unmasked], 0.0)
    np.testing.assert_allclose(updates['sep/depthwise/kernel'], depthwise, rtol=1e-6)


def test_momentum_and_clipping_by_hand():
  """Two steps of SGD with momentum 0.9 on a constant gradient: -lr g, then -lr (g + 0.9 g);
  clipping scales the gradient to the global norm first."""
  params = {'w': {'kernel': jnp.zeros((2,))}}
  grads = {'w': {'kernel': jnp.array([3.0, 4.0])}}  # global norm 5
  tx = optim.make_optimizer(optim_config(weight_decay=0.0, learning_rate=0.1), 1000)
  state = tx.init(params)
  first, state = tx.update(grads, state, params)
  second, _ = tx.update(grads, state, params)
  lr1 = 0.1 * (1 - 1 / 1000) ** 0.9
  np.testing.assert_allclose(first['w']['kernel'], [-0.3, -0.4], rtol=1e-6)
  np.testing.assert_allclose(second['w']['kernel'], -lr1 * 1.9 * np.array([3.0, 4.0]),
                             rtol=1e-6)
  tx = optim.make_optimizer(optim_config(weight_decay=0.0, learning_rate=0.1,
                                         grad_clip_norm=1.0), 1000)
  clipped, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(clipped['w']['kernel'], [-0.06, -0.08], rtol=1e-6)


def test_lr_multipliers_scale_a_modules_steps_by_hand():
  """FastFCN's head and JPU at 10 x the rate: two SGD steps with momentum 0.9 and weight decay
  1e-4 on a constant gradient give the head -10 lr (g + wd w), then with momentum, as a
  parameter group at 10 lr would; the backbone keeps lr."""
  w = jnp.array([1.0, -2.0])
  params = {'backbone': {'kernel': w}, 'jpu': {'kernel': w}, 'aspp': {'bias': w}}
  grads = jax.tree.map(lambda _: jnp.array([3.0, 4.0]), params)
  c = optim_config(learning_rate=0.1, lr_multipliers=(('jpu', 10.0), ('aspp', 10.0)))
  tx = optim.make_optimizer(c, 1000)
  state = tx.init(params)
  first, state = tx.update(grads, state, params)
  second, _ = tx.update(grads, state, params)
  g = np.array([3.0, 4.0])
  decayed = g + 1e-4 * np.asarray(w)  # kernels only
  lr1 = 0.1 * (1 - 1 / 1000) ** 0.9
  np.testing.assert_allclose(first['backbone']['kernel'], -0.1 * decayed, rtol=1e-6)
  np.testing.assert_allclose(first['jpu']['kernel'], -1.0 * decayed, rtol=1e-6)
  np.testing.assert_allclose(first['aspp']['bias'], -1.0 * g, rtol=1e-6)
  np.testing.assert_allclose(second['jpu']['kernel'], -10 * lr1 * 1.9 * decayed, rtol=1e-6)
  np.testing.assert_allclose(second['backbone']['kernel'], -lr1 * 1.9 * decayed, rtol=1e-6)
  tx = optim.make_optimizer(optim_config(lr_multipliers=(('head', 10.0),)), 1000)
  with pytest.raises(UserError, match=r"optim.lr_multipliers names \['head'\], not top-level "
                     r"modules of the model, which has \['aspp', 'backbone', 'jpu'\]"):
    tx.init(params)
  with pytest.raises(UserError, match='each factor must be > 0'):
    optim.make_optimizer(optim_config(lr_multipliers=(('jpu', 0.0),)), 1000)


def test_bad_weight_decay_pattern_is_named():
  with pytest.raises(UserError, match=r"optim.weight_decay_pattern='\(' is not a regex"):
    optim.weight_decay_mask({'a': {'kernel': jnp.zeros(1)}}, '(')


def test_rmsprop_is_lasagnes_by_hand():
  """Lasagne's rmsprop (FC-DenseNet's code), in numpy: accu = 0.9 accu + 0.1 g^2, then
  w -= lr g / sqrt(accu + 1e-6), the accumulator starting at zero, on the step schedule."""
  params = {'w': {'kernel': jnp.zeros((2,))}}
  grads = [np.array([3.0, -4.0]), np.array([0.5, 2.0]), np.array([-1.0, 1e-3])]
  c = optim_config(optimizer='rmsprop', weight_decay=0.0, learning_rate=1e-3, schedule='step',
                   decay_every_steps=2, decay_factor=0.995)
  tx = optim.make_optimizer(c, 1000)
  state = tx.init(params)
  accu = np.zeros(2)
  for t, g in enumerate(grads):
    update, state = tx.update({'w': {'kernel': jnp.asarray(g)}}, state, params)
    accu = 0.9 * accu + 0.1 * g ** 2
    lr = 1e-3 * 0.995 ** (t // 2)
    np.testing.assert_allclose(update['w']['kernel'], -lr * g / np.sqrt(accu + 1e-6), rtol=1e-5)
  with pytest.raises(UserError, match="optim.optimizer='adam' is not one of"):
    optim.make_optimizer(optim_config(optimizer='adam'), 1000)
