"""Restoring a workdir's checkpoint: a checkpoint of another model is named, not a traceback."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
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
  np.testing.assert_array_equal(restored['params']['conv']['kernel'],
                                state['params']['conv']['kernel'])


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


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def _train_state(width):
  params = {'conv': {'kernel': jnp.ones((3, width)), 'bias': jnp.zeros(width)}}
  tx = optax.chain(optax.add_decayed_weights(1e-4, mask={'conv': {'kernel': True, 'bias': False}}),
                   optax.sgd(0.1, momentum=0.9))
  return _State(step=jnp.int32(3), params=params, opt_state=tx.init(params))


def test_a_train_state_with_optimizer_state_resumes_and_a_wider_one_is_named(tmp_path):
  """Dataclass fields, optax's namedtuples and its empty states name their leaves as the saved
  tree does, so a resume of the same model passes the check and another width does not."""
  manager = _save(tmp_path, _train_state(96))
  restored = checkpointing.restore(manager, 3, _abstract(_train_state(96)))
  assert restored.opt_state[1][0].trace['conv']['kernel'].shape == (3, 96)
  with pytest.raises(UserError) as info:
    checkpointing.restore(manager, 3, _abstract(_train_state(48)))
  assert 'params/conv/bias: saved (96,), this config (48,)' in str(info.value)
  assert '(and ' in str(info.value)  # the kernels and the momentum traces differ too
