"""The pixel loss: ignore labels, online hard example mining (top_k_percent_pixels), class
weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from deeplab_jax import losses
from deeplab_jax import steps
from deeplab_jax.errors import UserError


def batch(seed=0):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(0, 2, (2, 6, 5, 4)), jnp.float32)
  labels = rng.integers(0, 4, (2, 6, 5))
  labels[0, :2] = 255
  return logits, jnp.asarray(labels)


def per_pixel(logits, labels):
  logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
  labels = np.asarray(labels)
  valid = labels != 255
  out = np.zeros(labels.shape)
  out[valid] = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0][valid]
  return out, valid


def test_mean_over_labelled_pixels_and_fraction_one_is_the_same():
  logits, labels = batch()
  want, valid = per_pixel(logits, labels)
  loss, count = losses.pixel_cross_entropy(logits, labels, 255)
  assert int(count) == valid.sum()
  np.testing.assert_allclose(float(loss), want[valid].mean(), rtol=1e-5)
  traced = jax.jit(lambda f: losses.pixel_cross_entropy(logits, labels, 255, f)[0])(1.0)
  np.testing.assert_allclose(float(traced), want[valid].mean(), rtol=1e-5)


@pytest.mark.parametrize('fraction', [0.25, 0.5])
def test_hard_example_mining_keeps_the_largest_losses(fraction):
  logits, labels = batch(1)
  want, valid = per_pixel(logits, labels)
  k = int(np.ceil(fraction * want.size))
  hardest = np.sort(want.reshape(-1))[::-1][:k]
  loss, count = jax.jit(lambda f: losses.pixel_cross_entropy(logits, labels, 255, f))(fraction)
  np.testing.assert_allclose(float(loss), hardest[hardest > 0].mean(), rtol=1e-5)
  assert int(count) == valid.sum()   # the labelled pixels, whatever the loss kept
  # Only the kept pixels get a gradient; ignored ones never do.
  grad = jax.grad(lambda x: losses.pixel_cross_entropy(x, labels, 255, fraction)[0])(logits)
  touched = np.abs(np.asarray(grad)).sum(-1) > 0
  assert touched.sum() == k and not touched[~valid].any()
  assert np.all(want[touched] >= hardest[-1] - 1e-6)


@pytest.mark.parametrize('size', [1, 5, 1000])
def test_kth_largest_is_exact_with_ties_zeros_and_infinity(size):
  rng = np.random.default_rng(size)
  values = rng.exponential(1.0, size).astype(np.float32)
  values[rng.random(size) < 0.3] = 0.0
  values[: size // 4] = values[0]          # ties
  values[-1] = np.inf if size > 1 else values[-1]
  kth = jax.jit(losses.kth_largest)
  for k in sorted({1, 2, size // 3, size // 2, size - 1, size} & set(range(1, size + 1))):
    assert float(kth(jnp.asarray(values), k)) == np.sort(values)[::-1][k - 1], k
  # Negatives (a cross-entropy a rounding below 0) and -0.0 count as 0; so does all zeros.
  np.testing.assert_array_equal([float(kth(jnp.asarray([-1e-7, 2.0, -0.0]), k))
                                 for k in (1, 2, 3)], [2.0, 0.0, 0.0])
  assert float(kth(jnp.zeros(4), 2)) == 0.0
  assert 'sort' not in jax.jit(losses.kth_largest).lower(jnp.asarray(values), 2).as_text()


def test_a_label_outside_the_classes_makes_the_loss_nan():
  logits, labels = batch()
  labels = labels.at[1, 0, 0].set(4)       # 4 classes: 0..3, and the ignore label 255
  for fraction in (1.0, 0.5):
    assert np.isnan(float(losses.pixel_cross_entropy(logits, labels, 255, fraction)[0]))


def test_the_fraction_ramps_down_as_in_deeplab():
  assert losses.hard_pixel_fraction(5, 1.0, 100) == 1.0
  assert losses.hard_pixel_fraction(0, 0.2, 0) == 0.2
  np.testing.assert_allclose([float(losses.hard_pixel_fraction(s, 0.2, 100))
                              for s in (0, 50, 100, 200)], [1.0, 0.6, 0.2, 0.2], rtol=1e-6)


@pytest.mark.parametrize('field, value, message', [
    ('top_k_percent_pixels', 0.0, r'train.top_k_percent_pixels=0.0 must be in \(0, 1\]'),
    ('top_k_percent_pixels', 20.0, r'train.top_k_percent_pixels=20.0 must be in \(0, 1\]'),
    ('hard_example_mining_step', -1, 'train.hard_example_mining_step=-1 must be >= 0'),
])
def test_bad_mining_settings_are_named(field, value, message):
  config = quickstart.get_config('smoke')
  config.train[field] = value
  with pytest.raises(UserError, match=message):
    steps.validate_config(config)


WEIGHTS = (0.5, 2.0, 0.0, 3.0)


def test_class_weights_give_the_weighted_mean():
  logits, labels = batch(2)
  want, valid = per_pixel(logits, labels)
  w = np.where(valid, np.asarray(WEIGHTS)[np.where(valid, labels, 0)], 0.0)
  loss, count = losses.pixel_cross_entropy(logits, labels, 255, class_weights=WEIGHTS)
  np.testing.assert_allclose(float(loss), (w * want).sum() / w.sum(), rtol=1e-5)
  assert int(count) == valid.sum()
  uniform = losses.pixel_cross_entropy(logits, labels, 255, class_weights=(3.0,) * 4)[0]
  np.testing.assert_allclose(float(uniform), want[valid].mean(), rtol=1e-5)
  # Class 2 has weight 0: its pixels get no gradient.
  grad = jax.grad(lambda x: losses.pixel_cross_entropy(x, labels, 255,
                                                       class_weights=WEIGHTS)[0])(logits)
  touched = np.abs(np.asarray(grad)).sum(-1) > 0
  assert not touched[np.asarray(labels) == 2].any() and touched[w > 0].all()


def test_class_weights_with_hard_example_mining():
  logits, labels = batch(3)
  want, valid = per_pixel(logits, labels)
  w = np.where(valid, np.asarray(WEIGHTS)[np.where(valid, labels, 0)], 0.0)
  weighted = (w * want).reshape(-1)
  k = int(np.ceil(0.5 * weighted.size))
  chosen = (weighted >= np.sort(weighted)[::-1][k - 1]) & (weighted > 0)
  loss, _ = losses.pixel_cross_entropy(logits, labels, 255, 0.5, WEIGHTS)
  np.testing.assert_allclose(float(loss), weighted[chosen].sum() / w.reshape(-1)[chosen].sum(),
                             rtol=1e-5)


def test_median_frequency_weights():
  # freq = (10/100, 30/100, 5/50, 0): median of the present ones is 0.1.
  weights = losses.median_frequency_weights([10, 30, 5, 0], [100, 100, 50, 0])
  np.testing.assert_allclose(weights, [1.0, 1 / 3, 1.0, 0.0])
  np.testing.assert_array_equal(losses.median_frequency_weights([0, 0], [0, 0]), [0, 0])
  np.testing.assert_allclose(losses.median_frequency_weights([10, 30, 5, 0], [100, 100, 50, 0],
                                                             power=0.5),
                             [1.0, 3 ** -0.5, 1.0, 0.0])
  with pytest.raises(ValueError, match='power=0 must be > 0'):
    losses.median_frequency_weights([1], [1], power=0)


@pytest.mark.parametrize('weights, message', [
    ((1.0, -1.0), r'train.class_weights=\(1.0, -1.0\) must be finite and >= 0'),
    ((0.0, 0.0), r'at least one > 0'),
    ((1.0, float('nan')), 'must be finite'),
])
def test_bad_class_weights_are_named(weights, message):
  config = quickstart.get_config('smoke')
  config.train.class_weights = weights
  with pytest.raises(UserError, match=message):
    steps.validate_config(config)


def test_class_weights_need_one_per_class():
  config = quickstart.get_config('smoke')
  config.train.class_weights = (1.0, 2.0)
  with pytest.raises(UserError, match='has 2 weights; the data set has 5 classes'):
    steps.class_weights(config, 5)
  config.train.class_weights = ()
  assert steps.class_weights(config, 5) is None
