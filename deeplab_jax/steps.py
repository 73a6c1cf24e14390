"""The train state, the config checks and the training step: what a step needs, no tf.data.

`train.py` runs the loop around these (input pipeline, checkpoints, metric writers);
`benchmarks/train_step.py` times the same step on a random batch. Nothing here imports
TensorFlow or clu, so the step runs where only JAX, flax, optax and ml_collections are
installed (an accelerator image without TensorFlow, say).
"""

import math
from typing import Any

from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from deeplab_jax import evaluate as evaluate_lib
from deeplab_jax import losses
from deeplab_jax import optim
from deeplab_jax import sharding
from deeplab_jax.errors import UserError


class TrainState(train_state.TrainState):
  """flax's TrainState (step, params, opt_state; apply_fn and tx static) with the BatchNorm
  statistics, as in flax's ImageNet example. Checkpoints name the leaves by field, so a
  checkpoint of a plain dataclass with the same four array fields restores into it.

  `ema`: with optim.ema_decay > 0, the moving average of the weights, {'params',
  'batch_stats'} in float32 (the rule: deeplab_jax/optim.py, "weight averaging"), which
  evaluation, predict and export use; None without it. A checkpoint written without it restores
  with the average started from its weights (checkpointing.restore)."""
  batch_stats: Any = None
  ema: Any = None


# --------------------------------------------------------------------------- config checks


def validate_config(config) -> None:
  """One-line errors for impossible settings, before anything is built. (Unknown fields
  cannot get here: configs/common.py locks the config, so ml_collections rejects them.)"""
  stride = config.model.output_stride
  for field, size in (('data.crop_size', config.data.crop_size),
                      ('eval.image_size', config.eval.image_size)):
    if len(size) != 2 or min(size) < stride:
      raise UserError(f'{field}={tuple(size)} is smaller than model.output_stride={stride}; '
                      f'each side must be at least {stride}.')
  if not 0 < config.data.min_scale <= config.data.max_scale:
    raise UserError(f'data.min_scale={config.data.min_scale}, data.max_scale='
                    f'{config.data.max_scale}: need 0 < min_scale <= max_scale.')
  evaluate_lib.check_eval_config(config)
  optim.check_ema_decay(config.optim.ema_decay)
  if config.train.num_steps < 1:
    raise UserError(f'train.num_steps={config.train.num_steps} must be at least 1.')
  if not 0 < config.train.top_k_percent_pixels <= 1:
    raise UserError(f'train.top_k_percent_pixels={config.train.top_k_percent_pixels} must be '
                    'in (0, 1]; 1 keeps every pixel.')
  if config.train.hard_example_mining_step < 0:
    raise UserError(f'train.hard_example_mining_step={config.train.hard_example_mining_step} '
                    'must be >= 0.')
  if config.model.name == 'gscnn' and (config.train.class_weights or
                                       config.train.top_k_percent_pixels < 1):
    raise UserError("model.name='gscnn' weights its cross-entropy per image (its dual-task "
                    'loss); leave train.class_weights=() and train.top_k_percent_pixels=1.')
  weights = tuple(config.train.class_weights)
  if weights and (not all(math.isfinite(w) and w >= 0 for w in weights) or max(weights) <= 0):
    raise UserError(f'train.class_weights={weights} must be finite and >= 0, at least one > 0 '
                    '(or () for none).')


def class_weights(config, num_classes: int):
  """config.train.class_weights as a tuple, None when empty; checks there is one per class."""
  weights = tuple(float(w) for w in config.train.class_weights)
  if not weights:
    return None
  if len(weights) != num_classes:
    raise UserError(f'train.class_weights has {len(weights)} weights; the data set has '
                    f'{num_classes} classes, one weight each.')
  return weights


# --------------------------------------------------------------------------- state and steps


def create_train_state(model, tx, config, mesh, rng):
  """Initialises the state straight into its (replicated) sharding; returns (init, abstract
  state, shardings). With optim.ema_decay > 0 the state's `ema` starts as a copy of the weights."""
  h, w = config.data.crop_size
  with_ema = config.optim.ema_decay > 0

  def init(rng):
    variables = model.init({'params': rng, 'dropout': rng}, jnp.zeros((1, h, w, 3)), train=False)
    weights = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
    state = TrainState.create(apply_fn=model.apply, tx=tx, **weights,
                              ema=optim.ema_start(weights) if with_ema else None)
    return state.replace(step=jnp.zeros((), jnp.int32))  # int32 as saved, not a weak type

  shapes = jax.eval_shape(init, rng)
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), shapes)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
  return jax.jit(init, out_shardings=shardings), abstract, shardings


def dual_task_loss(config):
  """config.model.gscnn.loss for Gated-SCNN (its dual-task loss), None for every other model."""
  return config.model.gscnn.loss if config.model.name == 'gscnn' else None


def make_train_step(model, tx, schedule, ignore_label: int, top_k_percent_pixels: float = 1.0,
                    hard_example_mining_step: int = 0, class_weights=None,
                    ema_decay: float = 0.0, dual_task=None):
  """One SGD step on a global batch; BatchNorm statistics are over the whole global batch.
  top_k_percent_pixels < 1: online hard example mining (see losses.hard_pixel_fraction);
  class_weights: a loss weight per class (see losses.pixel_cross_entropy), None for none;
  ema_decay > 0 (optim.ema_decay): the state's average of the weights moves towards the
  updated ones (optim.ema_update); the step itself uses and updates the raw weights.
  dual_task: Gated-SCNN's loss settings (dual_task_loss(config)): the loss is then
  losses.gscnn_losses' sum over the logits and the model's 'edge' output, each term also
  returned as `loss_<term>`."""
  def train_step(state, batch, rng):
    if state.tx is not tx:  # apply_gradients updates with the state's own optimizer
      raise ValueError('make_train_step: the state was created with another optimizer.')
    if (state.ema is not None) != (ema_decay > 0):
      raise ValueError(f'make_train_step: ema_decay={ema_decay}, but the state '
                       f'{"has" if state.ema is not None else "has no"} average of the weights '
                       '(create_train_state follows config.optim.ema_decay; pass the same).')
    dropout_rng = jax.random.fold_in(rng, state.step)
    fraction = losses.hard_pixel_fraction(state.step, top_k_percent_pixels,
                                          hard_example_mining_step)

    def loss_fn(params):
      (logits, extra), updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
          return_aux=True, mutable=['batch_stats'], rngs={'dropout': dropout_rng})
      batch_stats = updates.get('batch_stats', {})
      if dual_task is not None:
        terms = losses.gscnn_losses(logits, dict((n, t) for n, t, _ in extra)['edge'],
                                    batch['label'], ignore_label,
                                    jax.random.fold_in(dropout_rng, 1), dual_task)
        count = jnp.sum(batch['label'] != ignore_label)
        return sum(terms.values()), (batch_stats, count, terms)
      loss, count = losses.pixel_cross_entropy(logits, batch['label'], ignore_label, fraction,
                                               class_weights)
      # Extra losses: each input scale of a multi-scale model (v2), an auxiliary head.
      for _, extra_logits, weight in extra:
        loss = loss + weight * losses.pixel_cross_entropy(
            extra_logits, batch['label'], ignore_label, fraction, class_weights)[0]
      return loss, (batch_stats, count, {})

    (loss, (batch_stats, count, terms)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if ema_decay > 0:
      new_state = new_state.replace(ema=optim.ema_update(
          state.ema, {'params': new_state.params, 'batch_stats': new_state.batch_stats},
          ema_decay))
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in
                                jax.tree.leaves((new_state.params, new_state.batch_stats))]))
    return new_state, {'loss': loss, 'grad_norm': optax.tree.norm(grads), 'state_finite': finite,
                       'learning_rate': schedule(state.step), 'labelled_pixels': count,
                       **{f'loss_{k}': v for k, v in terms.items()}}
  return train_step
