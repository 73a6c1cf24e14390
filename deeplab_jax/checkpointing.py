"""Orbax checkpointing of the train state in the workdir: keep-N, asynchronous, resumable."""

import os

from etils import epath
import jax
import orbax.checkpoint as ocp

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
  checkpoint is left as it is."""
  _check_fits(manager, step, abstract_state)
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return restored['state']


def _flat_shapes(tree) -> dict:
  """{'a/b/c': shape}: dict keys, dataclass fields and tuple indices alike, as orbax names them."""
  return {jax.tree_util.keystr(path, simple=True, separator='/'): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if getattr(leaf, 'shape', None) is not None}


def _check_fits(manager, step: int, abstract_state) -> None:
  try:
    metadata = ocp.StandardCheckpointHandler().metadata(manager.directory / str(step) / 'state')
  except Exception:  # pylint: disable=broad-except  (no metadata: let orbax report)
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
