"""Orbax checkpointing of the train state in the workdir: keep-N, asynchronous, resumable."""

import os

from etils import epath
import orbax.checkpoint as ocp


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
  """Restores `step` into the shardings of `abstract_state` (ShapeDtypeStructs with shardings)."""
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return restored['state']

