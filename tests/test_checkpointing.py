"""Restoring a workdir's checkpoint: a checkpoint of another model is named, not a traceback."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import checkpointing
from deeplab_jax.errors import UserError


def _abstract(tree):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _save(workdir, state):
  manager = checkpointing.make_manager(str(workdir), keep=2)
  checkpointing.save(manager, 3, state)
  manager.wait_until_finished()
  return manager


def test_restore_of_the_same_model_round_trips(tmp_path):
  state = {'params': {'conv': {'kernel': jnp.arange(6.0).reshape(2, 3)}}, 'step': jnp.int32(3)}
  manager = _save(tmp_path, state)
  restored = checkpointing.restore(manager, 3, _abstract(state))
  np.testing.assert_array_equal(restored['params']['conv']['kernel'], state['params']['conv']['kernel'])


def test_restore_into_another_model_names_the_arrays_and_keeps_the_checkpoint(tmp_path):
  state = {'params': {'conv': {'kernel': jnp.zeros((3, 96))}, 'head': {'bias': jnp.zeros(5)}},
           'step': jnp.int32(3)}
  manager = _save(tmp_path, state)
  other = {'params': {'conv': {'kernel': jnp.zeros((3, 48))}, 'tail': {'bias': jnp.zeros(5)}},
           'step': jnp.int32(0)}
  with pytest.raises(UserError) as info:
    checkpointing.restore(manager, 3, _abstract(other))
  message = str(info.value)
  assert 'step 3' in message
  assert 'params/conv/kernel: saved (3, 96), this config (3, 48)' in message
  assert 'params/head/bias: only in the checkpoint' in message
  assert 'params/tail/bias: only in this config' in message
  assert manager.all_steps() == [3]  # kept
  restored = checkpointing.restore(manager, 3, _abstract(state))
  assert restored['params']['conv']['kernel'].shape == (3, 96)
