"""Orbax checkpointing of the train state in the workdir: keep-N, asynchronous, resumable."""

import dataclasses
import json
import os

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from deeplab_jax import optim
from deeplab_jax.errors import UserError


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """A manager over WORKDIR/checkpoints; every process takes part in every save."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  directory = epath.Path(workdir if '://' in workdir else os.path.abspath(workdir))
  return ocp.CheckpointManager(directory / 'checkpoints', options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Starts an asynchronous save of `state` at `step` (written atomically by orbax)."""
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restores `step` into the shardings of `abstract_state` (ShapeDtypeStructs with shardings).

  A checkpoint of another model (another width, backbone or head: the config changed under a
  workdir) is a UserError that names the arrays that differ, before anything is read; the
  checkpoint is left as it is.

  A train state's average of the weights (its `ema` field, optim.ema_decay) may differ from
  the checkpoint's: one written without it (optim.ema_decay=0, or before the field existed)
  restores with the average started from its weights; one written with it, restored with
  optim.ema_decay=0, leaves it out. Each says so in one line."""
  metadata = _metadata(manager, step)
  if metadata is None or not hasattr(abstract_state, 'ema'):
    _check_fits(manager, step, abstract_state, metadata)
    return _restore(manager, step, abstract_state)
  wanted = abstract_state.ema is not None
  saved = any(k == 'ema' or k.startswith('ema/') for k in _flat_shapes(metadata))
  # The target names the fields the checkpoint has (an old one has no `ema` at all).
  target = {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)
            if f.metadata.get('pytree_node', True)}
  if saved:
    target['ema'] = abstract_state.ema if wanted else _ema_like(abstract_state)  # read anyway
  elif 'ema' in metadata.keys():
    target['ema'] = None
  else:
    del target['ema']
  _check_fits(manager, step, target, metadata)
  restored = _restore(manager, step, target)
  ema = restored.pop('ema', None)
  state = abstract_state.replace(**restored, ema=None)
  if wanted and saved:
    return state.replace(ema=ema)
  if wanted:
    logging.info('Checkpoint %d in %s holds no average of the weights (written with '
                 'optim.ema_decay=0): it starts from the checkpoint\'s weights.', step,
                 manager.directory)
    shardings = jax.tree.map(lambda x: x.sharding, abstract_state.ema)
    return state.replace(ema=jax.jit(optim.ema_start, out_shardings=shardings)(
        {'params': state.params, 'batch_stats': state.batch_stats}))
  if saved:
    logging.info('Checkpoint %d in %s holds an average of the weights, which '
                 'optim.ema_decay=0 leaves out: its raw weights are used.', step,
                 manager.directory)
  return state


def _restore(manager, step: int, target):
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return restored['state']


def _ema_like(abstract_state):
  """The abstract average of the weights: the params' and BatchNorm statistics' own shapes and
  shardings, in float32."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=x.sharding),
      {'params': abstract_state.params, 'batch_stats': abstract_state.batch_stats})


# What a damaged checkpoint raises: a truncated array file (TensorStore's OUT_OF_RANGE or
# DATA_LOSS), a file missing inside the step, a metadata file cut short (a JSON error). Any other
# error (storage, permissions, an accelerator's) stops the run with the checkpoint in place.
_DAMAGE_CODES = ('OUT_OF_RANGE', 'DATA_LOSS', 'NOT_FOUND')


def is_damaged(error: Exception) -> bool:
  """Whether `error`, raised by a restore, says the checkpoint is damaged (see above)."""
  if isinstance(error, (json.JSONDecodeError, FileNotFoundError)):
    return True
  return isinstance(error, ValueError) and any(code in str(error) for code in _DAMAGE_CODES)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, set_aside: bool = True):
  """Restores the newest checkpoint that can be read: (state, step), or (None, None) if there
  is none at all.

  A damaged checkpoint (a truncated or missing file inside it) is named in one warning and,
  with `set_aside`, moved, not deleted, to WORKDIR/checkpoints_unreadable/STEP, out of the
  manager's sight; the one before it is tried next. Without `set_aside` (an evaluator beside a
  running trainer, which must not move the trainer's files) it is only skipped. If none is left
  that can be read, the run stops rather than start again from scratch. A checkpoint of another
  model (UserError), any other error, and a damaged checkpoint when several processes share the
  workdir stop the run with the checkpoint in place."""
  skipped = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return restore(manager, step, abstract_state), step
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if not is_damaged(e):
        raise
      reason = _first_line(e)
      if set_aside and jax.process_count() > 1:  # one process moving what others read: a race
        raise UserError(
            f'the checkpoint of step {step} in {manager.directory} cannot be read ({reason}); '
            f'move it out of that directory (to {_set_aside_path(manager, step)}, say) and run '
            'again to resume from the one before it.') from e
      if not set_aside:
        logging.warning('Checkpoint %d in %s cannot be read (%s); trying the one before it.',
                        step, manager.directory, reason)
        skipped.append(str(manager.directory / str(step)))
        continue
      target = _set_aside_path(manager, step)
      target.parent.mkdir(parents=True, exist_ok=True)
      (manager.directory / str(step)).rename(target)
      manager.reload()
      skipped.append(str(target))
      logging.warning('Checkpoint %d in %s cannot be read (%s): moved to %s; trying the one '
                      'before it.', step, manager.directory, reason, target)
  if skipped:
    raise UserError(f'no checkpoint in {manager.directory} can be read ({", ".join(skipped)} '
                    'cannot); the run stops rather than start from scratch. Move them back '
                    'once repaired, or give another --workdir.')
  return None, None


def _set_aside_path(manager, step: int) -> epath.Path:
  """WORKDIR/checkpoints_unreadable/STEP, with a suffix if that is taken."""
  folder = manager.directory.parent / 'checkpoints_unreadable'
  target, n = folder / str(step), 1
  while target.exists():
    target, n = folder / f'{step}.{n}', n + 1
  return target


def _first_line(error: Exception, limit: int = 300) -> str:
  """The error's type and first line, without TensorStore's long spec."""
  text = str(error).split(' [tensorstore_spec=', 1)[0].strip().splitlines()
  text = f'{type(error).__name__}: {text[0] if text else ""}'
  return text if len(text) <= limit else text[:limit] + '...'


def _flat_shapes(tree) -> dict:
  """{'a/b/c': shape}: dict keys, dataclass fields and tuple indices alike, as orbax names them."""
  return {jax.tree_util.keystr(path, simple=True, separator='/'): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if getattr(leaf, 'shape', None) is not None}


def _metadata(manager, step: int):
  """The checkpoint's tree metadata; None without a metadata file (orbax's restore then reports
  what is missing)."""
  try:
    return ocp.StandardCheckpointHandler().metadata(manager.directory / str(step) / 'state')
  except FileNotFoundError:
    return None


def _check_fits(manager, step: int, abstract_state, metadata) -> None:
  if metadata is None:
    return
  saved = _flat_shapes(metadata)
  wanted = _flat_shapes(abstract_state)
  common = saved.keys() & wanted.keys()
  if not common:  # the trees name their leaves differently: leave it to orbax
    return
  problems = [f'{k}: saved {saved[k]}, this config {wanted[k]}' for k in sorted(common)
              if saved[k] != wanted[k]]
  problems += [f'{k}: only in the checkpoint' for k in sorted(saved.keys() - wanted.keys())]
  problems += [f'{k}: only in this config' for k in sorted(wanted.keys() - saved.keys())]
  if problems:
    more = f' (and {len(problems) - 3} more)' if len(problems) > 3 else ''
    raise UserError(
        f'the checkpoint of step {step} in {manager.directory} is of another model than this '
        f'config builds: {"; ".join(problems[:3])}{more}. It is left as it is: run with the '
        'config (and flags) it was trained with, or give another --workdir.')
