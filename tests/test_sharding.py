"""One device and eight devices give the same train step: BatchNorm is synchronised."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from deeplab_jax import optim
from deeplab_jax import sharding
from deeplab_jax import steps
from deeplab_jax.errors import UserError
from deeplab_jax.models import deeplab
from deeplab_jax.models import registry


def one_step(mesh_config, devices):
  config = quickstart.get_config('smoke')
  config.model.aspp.dropout_rate = 0.0
  mesh = sharding.make_mesh(mesh_config, devices)
  model = registry.build_model(config.model, num_classes=5)
  schedule = optim.learning_rate_schedule(config.optim, config.train.num_steps)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  rng = jax.random.key(0)
  init, _, shardings = steps.create_train_state(model, tx, config, mesh, rng)
  state = init(rng)
  step = jax.jit(steps.make_train_step(model, tx, schedule, ignore_label=255),
                 in_shardings=(shardings, None, sharding.replicated(mesh)))
  data_rng = np.random.default_rng(0)
  batch = {'image': data_rng.normal(size=(8, 48, 48, 3)).astype(np.float32),
           'label': data_rng.integers(0, 5, (8, 48, 48)).astype(np.int32)}
  batch['label'][:, :5] = 255
  global_batch = sharding.to_global(mesh, batch)
  if mesh.devices.size > 1:
    assert len(global_batch['image'].sharding.device_set) == mesh.devices.size
  before = jax.device_get(state.params)
  state, metrics = step(state, global_batch, rng)
  updates = jax.tree.map(lambda a, b: a - b, jax.device_get(state.params), before)
  return updates, jax.device_get(state.batch_stats), float(metrics['loss'])


@pytest.mark.slow
def test_eight_devices_match_one_device(monkeypatch):
  """Loss and BatchNorm statistics agree in float32 with the batch over 8 devices; with the
  batch over 2 and the height over 4 they agree in float64 to a rounding, and so do the
  parameter updates. In float32 the (2, 4) mesh's updates agree with one device's to 1 % of
  each update's largest entry: the summation order alone moves them that much."""
  assert jax.device_count() == 8, 'tests/conftest.py forces 8 CPU devices'

  def check(got, reference):
    np.testing.assert_allclose(got[2], reference[2], rtol=1e-6)
    # BatchNorm statistics equal the single-device ones: means over the global batch.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 got[1], reference[1])

  single = one_step((('data', 1),), jax.devices()[:1])
  check(one_step((('data', -1),), jax.devices()), single)
  spatial = one_step((('data', 2), ('spatial', 4)), jax.devices())
  check(spatial, single)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=0.01 * np.abs(b).max()),
               spatial[0], single[0])
  monkeypatch.setitem(deeplab.DTYPES, 'float32', jnp.float64)
  with jax.enable_x64(True):
    reference = one_step((('data', 1),), jax.devices()[:1])
    got = one_step((('data', 2), ('spatial', 4)), jax.devices())
    check(got, reference)
    # Updates are differences of float32 parameters: equal up to one rounding of a parameter.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-7),
                 got[0], reference[0])


@pytest.mark.parametrize('mesh_config, message', [
    ((('data', 3),), 'needs 3 devices; there are 8'),
    ((('model', -1),), "mesh axis 'model'"),
    ((('data', -1), ('spatial', -1)), 'more than one -1'),
])
def test_bad_meshes_are_named(mesh_config, message):
  with pytest.raises(UserError, match=message.replace('(', '\\(')):
    sharding.make_mesh(mesh_config)


def test_make_mesh_sizes_and_axis_types():
  mesh = sharding.make_mesh((('data', -1), ('spatial', 2)))
  assert dict(mesh.shape) == {'data': 4, 'spatial': 2}
  # Auto axes: jit places the collectives (jax.make_mesh's default would be Explicit).
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 2
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
  one = sharding.make_mesh((('data', 1),), jax.devices()[:1])
  assert one.devices.size == 1
