"""The optax chain: poly (or step) schedule with linear warmup, SGD momentum (or RMSprop),
masked weight decay; and the exponential moving average of the weights (optim.ema_decay)."""

import re

import flax
import jax
import jax.numpy as jnp
import optax

from deeplab_jax.errors import UserError


SCHEDULES = ('poly', 'step')
OPTIMIZERS = ('sgd', 'rmsprop')


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
  """SGD with momentum (or RMSprop: optim.optimizer) on the schedule; L2 weight decay added to
  the masked gradients.

  RMSprop is Lasagne's (FC-DenseNet's code): accu = decay accu + (1 - decay) g^2, step
  lr g / sqrt(accu + eps), with eps inside the root and no momentum.

  `freeze_batch_norm` (model.freeze_batch_norm_params): BatchNorm's scale and offset get no
  update at all, neither from the gradient nor from weight decay (`batch_norm_mask`).
  `optim.lr_multipliers`, ((top-level module, factor), ...): that module's updates scaled by
  the factor, as a PyTorch parameter group at factor x the learning rate (FastFCN's 10 on its
  head and JPU): with SGD's momentum and weight decay the update is linear in the rate.
  """
  c = optim_config
  chain = []
  if c.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(c.grad_clip_norm))
  if c.weight_decay:
    chain.append(optax.add_decayed_weights(
        c.weight_decay, mask=lambda p: weight_decay_mask(p, c.weight_decay_pattern)))
  if c.optimizer not in OPTIMIZERS:
    raise UserError(f'optim.optimizer={c.optimizer!r} is not one of {OPTIMIZERS}.')
  schedule = learning_rate_schedule(c, num_steps)
  if c.optimizer == 'rmsprop':
    if not 0 <= c.rmsprop_decay < 1 or c.rmsprop_eps <= 0:
      raise UserError(f'optim.rmsprop_decay={c.rmsprop_decay} must be in [0, 1) and '
                      f'optim.rmsprop_eps={c.rmsprop_eps} above 0.')
    chain.append(optax.rmsprop(schedule, decay=c.rmsprop_decay, eps=c.rmsprop_eps,
                               eps_in_sqrt=True))
  else:
    chain.append(optax.sgd(schedule, momentum=c.momentum or None, nesterov=c.nesterov))
  multipliers = dict(c.lr_multipliers)
  if any(not f > 0 for f in multipliers.values()):
    raise UserError(f'optim.lr_multipliers={tuple(c.lr_multipliers)}: each factor must be > 0.')
  if multipliers:

    def module_labels(params):
      unknown = sorted(set(multipliers) - set(params))
      if unknown:
        raise UserError(f'optim.lr_multipliers names {unknown}, not top-level modules of the '
                        f'model, which has {sorted(params)}.')
      return {k: jax.tree.map(lambda _, k=k: k if k in multipliers else '', v)
              for k, v in params.items()}
    chain.append(optax.multi_transform(
        {'': optax.identity(), **{k: optax.scale(f) for k, f in multipliers.items()}},
        module_labels))
  tx = optax.chain(*chain)
  if not freeze_batch_norm:
    return tx
  labels = lambda p: jax.tree.map(lambda frozen: 'frozen' if frozen else 'trained',
                                  batch_norm_mask(p))
  return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)



# --------------------------------------------------------------------------- weight averaging
#
# optim.ema_decay = d > 0 keeps an exponential moving average of the weights, params and
# BatchNorm statistics alike, in float32: it starts at the initial weights (step 0, or those
# init_from loaded, or those of a resumed checkpoint written without one) and after every
# optimizer step becomes d * ema + (1 - d) * new, with no debiasing (timm's ModelEmaV2;
# optax.ema(debias=False) started from the first value rather than zeros). d = 0: none.


def check_ema_decay(decay) -> None:
  if not 0 <= decay < 1:
    raise UserError(f'optim.ema_decay={decay} must be in [0, 1): 0 turns the weight average '
                    'off, 0.999 averages over about the last 1000 steps.')


def ema_start(variables):
  """The average's first value: a float32 copy of {'params', 'batch_stats'} (its own buffers,
  so that a donated train state never holds one buffer twice)."""
  return jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), variables)


def ema_update(ema, variables, decay: float):
  """decay * ema + (1 - decay) * variables, leaf by leaf, in float32."""
  variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), variables)
  return optax.incremental_update(variables, ema, step_size=1.0 - decay)
