"""Restoring a workdir's checkpoint: a checkpoint of another model is named, not a traceback;
an unreadable one is set aside; checkpoints of a plain-dataclass train state still restore."""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from deeplab_jax import checkpointing
from deeplab_jax import steps
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


@flax.struct.dataclass
class _OldTrainState:
  """A plain-dataclass train state with TrainState's four array fields, whose checkpoints
  must still restore."""
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: optax.OptState


class _ConvBN(flax.linen.Module):
  @flax.linen.compact
  def __call__(self, x, train=False):
    x = flax.linen.Conv(4, (3, 3))(x)
    return flax.linen.BatchNorm(use_running_average=not train)(x)


def test_a_checkpoint_of_the_old_train_state_restores_into_flax_train_state(tmp_path):
  model, tx = _ConvBN(), optax.sgd(0.1, momentum=0.9)
  variables = model.init(jax.random.key(0), jnp.ones((1, 5, 5, 3)))
  stats = jax.tree.map(lambda x: x + 0.25, variables['batch_stats'])
  momentum = jax.tree.map(lambda x: x + 0.5, tx.init(variables['params']))
  old = _OldTrainState(step=jnp.int32(7), params=variables['params'], batch_stats=stats,
                       opt_state=momentum)
  manager = _save(tmp_path, old)  # saved as step 3
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  config = ml_collections.ConfigDict({'data': {'crop_size': (5, 5)}, 'optim': {'ema_decay': 0.0}})
  _, abstract, _ = steps.create_train_state(model, tx, config, mesh, jax.random.key(1))
  restored = checkpointing.restore(manager, 3, abstract)
  assert isinstance(restored, steps.TrainState) and restored.tx is tx
  assert int(restored.step) == 7
  for got, want in ((restored.params, old.params), (restored.batch_stats, stats),
                    (restored.opt_state, momentum)):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), jax.device_get(want))
  # And it trains on: apply_gradients with the restored momentum.
  grads = jax.tree.map(jnp.ones_like, restored.params)
  stepped = restored.apply_gradients(grads=grads)
  np.testing.assert_allclose(stepped.params['Conv_0']['bias'],
                             old.params['Conv_0']['bias'] - 0.1 * (1 + 0.9 * 0.5), rtol=1e-6)
  assert int(stepped.step) == 8


def test_metadata_that_cannot_be_read_is_reported(tmp_path):
  """A missing metadata file is left to orbax; one that is there but unreadable is an error,
  not skipped."""
  state = {'params': {'conv': {'kernel': jnp.ones((2, 3))}}}
  manager = _save(tmp_path, state)
  metadata = tmp_path / 'checkpoints' / '3' / 'state' / '_METADATA'
  metadata.write_text('{"tree_metadata": ')
  with pytest.raises(ValueError):  # json's JSONDecodeError
    checkpointing.restore(manager, 3, _abstract(state))


def truncate_data_files(step_dir):
  """Halves the array data files of a checkpoint (TensorStore's OCDBT `d/` files), as a disk
  that filled up would; returns their paths relative to `step_dir`."""
  files = [p for p in step_dir.rglob('*') if p.is_file() and p.parent.name == 'd']
  assert files, f'no OCDBT data files under {step_dir}'
  for p in files:
    p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
  return [p.relative_to(step_dir) for p in files]


def test_an_unreadable_latest_checkpoint_is_set_aside_and_the_one_before_restored(tmp_path,
                                                                                  caplog):
  state = {'params': {'conv': {'kernel': jnp.arange(96.0).reshape(8, 12)}}}
  manager = checkpointing.make_manager(str(tmp_path), keep=3)
  for step in (2, 4, 6):
    checkpointing.save(manager, step, jax.tree.map(lambda x, s=step: x + s, state))
  manager.wait_until_finished()
  truncated = {step: truncate_data_files(tmp_path / 'checkpoints' / str(step))
               for step in (6, 4)}
  with caplog.at_level('WARNING'):
    restored, step = checkpointing.restore_latest(manager, _abstract(state))
  assert step == 2 and manager.all_steps() == [2]
  np.testing.assert_array_equal(restored['params']['conv']['kernel'],
                                np.arange(96.0).reshape(8, 12) + 2)
  # Both set aside whole, not deleted, where the manager does not look.
  for step in (6, 4):
    aside = tmp_path / 'checkpoints_unreadable' / str(step)
    assert all((aside / f).is_file() for f in truncated[step])
    assert (aside / 'state' / '_METADATA').is_file()
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2']
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 2 and all('\n' not in w for w in warnings), warnings
  assert warnings[0].startswith('Checkpoint 6 in ') and 'cannot be read' in warnings[0]
  assert str(tmp_path / 'checkpoints_unreadable' / '6') in warnings[0]
  # A fresh manager (the next run) sees the same.
  assert checkpointing.make_manager(str(tmp_path), keep=3).latest_step() == 2


def test_other_errors_stop_and_nothing_readable_stops_too(tmp_path, monkeypatch):
  state = {'params': {'conv': {'kernel': jnp.arange(96.0).reshape(8, 12)}}}
  manager = _save(tmp_path, state)
  for error in (PermissionError('denied'), ValueError('UNAVAILABLE: the bucket is gone'),
                RuntimeError('INTERNAL: an accelerator error')):
    monkeypatch.setattr(checkpointing, 'restore',
                        lambda *a, e=error: (_ for _ in ()).throw(e))
    with pytest.raises(type(error)):
      checkpointing.restore_latest(manager, _abstract(state))
    assert manager.all_steps() == [3]  # kept in place
  monkeypatch.undo()
  truncate_data_files(tmp_path / 'checkpoints' / '3')
  # An evaluator skips it without moving the trainer's files; nothing readable is an error.
  with pytest.raises(UserError, match='no checkpoint .* can be read'):
    checkpointing.restore_latest(manager, _abstract(state), set_aside=False)
  assert manager.all_steps() == [3]
  with pytest.raises(UserError, match='checkpoints_unreadable/3'):
    checkpointing.restore_latest(manager, _abstract(state))
  assert (tmp_path / 'checkpoints_unreadable' / '3').is_dir()


def test_an_evaluator_skips_a_damaged_checkpoint_without_moving_it(tmp_path):
  state = {'params': {'conv': {'kernel': jnp.arange(96.0).reshape(8, 12)}}}
  manager = checkpointing.make_manager(str(tmp_path), keep=3)
  for step in (2, 4):
    checkpointing.save(manager, step, jax.tree.map(lambda x, s=step: x + s, state))
  manager.wait_until_finished()
  truncate_data_files(tmp_path / 'checkpoints' / '4')
  restored, step = checkpointing.restore_latest(manager, _abstract(state), set_aside=False)
  assert step == 2 and manager.all_steps() == [2, 4]
  np.testing.assert_array_equal(restored['params']['conv']['kernel'],
                                np.arange(96.0).reshape(8, 12) + 2)
  assert not (tmp_path / 'checkpoints_unreadable').exists()


def test_another_model_is_not_set_aside(tmp_path):
  manager = _save(tmp_path, {'params': {'conv': {'kernel': jnp.zeros((3, 96))}}})
  with pytest.raises(UserError, match='another model'):
    checkpointing.restore_latest(manager, _abstract({'params': {'conv': {
        'kernel': jnp.zeros((3, 48))}}}))
  assert manager.all_steps() == [3]
