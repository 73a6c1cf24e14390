"""The optax chain: poly (or step) schedule with linear warmup, SGD momentum, masked weight decay."""

import re

import flax
import jax
import optax

from deeplab_jax.errors import UserError


SCHEDULES = ('poly', 'step')


def learning_rate_schedule(optim_config, num_steps: int) -> optax.Schedule:
  """Linear warmup to lr0, then lr0 * (1 - t / T) ** power down to end_learning_rate ('poly',
  v2 onwards), or lr0 times decay_factor every decay_every_steps ('step', the v1 paper)."""
  c = optim_config
  if not 0 <= c.warmup_steps < num_steps:
    raise UserError(f'optim.warmup_steps={c.warmup_steps} must be in [0, train.num_steps='
                    f'{num_steps}).')
  if c.schedule not in SCHEDULES:
    raise UserError(f'optim.schedule={c.schedule!r} is not one of {SCHEDULES}.')
  if c.schedule == 'step':
    if c.decay_every_steps < 1:
      raise UserError(f'optim.decay_every_steps={c.decay_every_steps} must be >= 1.')
    poly = optax.exponential_decay(c.learning_rate, c.decay_every_steps, c.decay_factor,
                                   staircase=True)
  else:
    poly = optax.polynomial_schedule(c.learning_rate, c.end_learning_rate, c.power,
                                     transition_steps=num_steps - c.warmup_steps)
  if not c.warmup_steps:
    return poly
  warmup = optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps)
  return optax.join_schedules([warmup, poly], [c.warmup_steps])


def weight_decay_mask(params, pattern: str):
  """True for the parameters whose 'a/b/name' path matches `pattern` (full match)."""
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise UserError(f'optim.weight_decay_pattern={pattern!r} is not a regex ({e}).') from None
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  mask = {k: bool(regex.fullmatch(k)) for k in flat}
  return flax.traverse_util.unflatten_dict(mask, sep='/')


def batch_norm_mask(params):
  """True for the scale and offset of every norm layer: the parameters of each module that has
  a `scale` (flax's BatchNorm names its parameters scale and bias; convs have none)."""
  flat = flax.traverse_util.flatten_dict(params)
  norms = {path[:-1] for path in flat if path[-1] == 'scale'}
  return flax.traverse_util.unflatten_dict({path: path[:-1] in norms for path in flat})


def make_optimizer(optim_config, num_steps: int,
                   freeze_batch_norm: bool = False) -> optax.GradientTransformation:
  """SGD with momentum on the poly schedule; L2 weight decay added to the masked gradients.

  `freeze_batch_norm` (model.freeze_batch_norm_params): BatchNorm's scale and offset get no
  update at all, neither from the gradient nor from weight decay (`batch_norm_mask`).
  """
  c = optim_config
  chain = []
  if c.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(c.grad_clip_norm))
  if c.weight_decay:
    chain.append(optax.add_decayed_weights(
        c.weight_decay, mask=lambda p: weight_decay_mask(p, c.weight_decay_pattern)))
  chain.append(optax.sgd(learning_rate_schedule(c, num_steps), momentum=c.momentum or None,
                         nesterov=c.nesterov))
  tx = optax.chain(*chain)
  if not freeze_batch_norm:
    return tx
  labels = lambda p: jax.tree.map(lambda frozen: 'frozen' if frozen else 'trained',
                                  batch_norm_mask(p))
  return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)

