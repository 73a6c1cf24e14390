"""mIoU from the confusion matrix against an independent numpy computation."""

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import losses
from deeplab_jax import metrics
from deeplab_jax import per_image_counts

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'launch'))
import bootstrap  # pylint: disable=g-import-not-at-top,wrong-import-position


def numpy_miou(labels, predictions, num_classes, ignore_label):
  """Per-class IoU by counting pixels directly, skipping ignored pixels and absent classes."""
  keep = labels != ignore_label
  labels, predictions = labels[keep], predictions[keep]
  ious = []
  for c in range(num_classes):
    intersection = np.sum((labels == c) & (predictions == c))
    union = np.sum((labels == c) | (predictions == c))
    ious.append(intersection / union if union else np.nan)
  return np.nanmean(ious), ious, np.mean(labels == predictions)


def test_miou_matches_numpy_with_ignore_label_and_mask():
  rng = np.random.default_rng(0)
  k, ignore = 6, 255
  labels = rng.integers(0, k, (4, 13, 17))
  labels[rng.random(labels.shape) < 0.2] = ignore
  labels[labels == 4] = 2  # class 4 absent from the ground truth ...
  predictions = rng.integers(0, k, labels.shape)
  predictions[predictions == 5] = 0  # ... and class 5 never predicted
  labels[labels == 5] = 1  # so class 5 occurs nowhere: left out of the mean
  mask = np.array([1, 1, 1, 0])  # the last example is padding
  weights = np.broadcast_to(mask[:, None, None], labels.shape)
  cm = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(predictions), k,
                                jnp.asarray(weights))
  got = metrics.summarize(np.asarray(cm), [str(i) for i in range(k)])
  miou, ious, accuracy = numpy_miou(labels[:3], predictions[:3], k, ignore)
  assert np.isclose(got['miou'], miou)
  assert np.isclose(got['pixel_accuracy'], accuracy)
  assert np.isnan(got['per_class_iou']['5']) and got['per_class_iou']['4'] == 0.0
  np.testing.assert_allclose([got['per_class_iou'][str(i)] for i in range(k)], ious)
  assert int(np.asarray(cm).sum()) == int(np.sum(labels[:3] != ignore))


def test_cross_entropy_ignores_ignore_label():
  logits = jnp.array([[[[2.0, 0.0], [0.0, 3.0], [5.0, -5.0]]]])  # [1, 1, 3, 2]
  labels = jnp.array([[[0, 1, 255]]])
  loss, count = losses.pixel_cross_entropy(logits, labels, 255)
  expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-3.0))])
  assert int(count) == 2 and np.isclose(float(loss), expected, atol=1e-6)


def test_per_image_counts_match_numpy_and_add_up_to_the_split():
  """Each image's ground-truth, predicted and intersecting pixels per class, counted over the
  pixels with a real label (ignore 255 and a stray -1 count nothing, a prediction there too);
  added over images they give mIoU as the confusion matrix does."""
  rng = np.random.default_rng(3)
  k = 5
  labels = rng.integers(0, k, (4, 7, 9))
  labels[rng.random(labels.shape) < 0.2] = 255
  labels[0, 0, 0] = -1
  labels[2] = 255                                 # an image with nothing labelled
  predictions = rng.integers(0, k, labels.shape)
  counts = np.asarray(metrics.per_image_counts(jnp.asarray(labels), jnp.asarray(predictions), k))
  assert counts.shape == (4, 3, k) and counts.dtype == np.int32
  for b in range(4):
    for c in range(k):
      keep = (labels[b] >= 0) & (labels[b] < k)
      assert counts[b, 0, c] == np.sum(keep & (labels[b] == c))
      assert counts[b, 1, c] == np.sum(keep & (predictions[b] == c))
      assert counts[b, 2, c] == np.sum(keep & (labels[b] == c) & (predictions[b] == c))
  assert not counts[2].any()
  expected, _, _ = numpy_miou(np.where(labels < 0, 255, labels), predictions, k, 255)
  # launch/bootstrap.py's mIoU of summed counts, the one summaries use.
  assert bootstrap.miou(*counts.sum(0)) == pytest.approx(expected)
  assert bootstrap.miou(*counts[[0, 1, 3]].sum(0)) == pytest.approx(expected)


def test_per_image_counts_refuse_an_image_seen_twice(tmp_path):
  row = {'step': 1, 'split': 'val', 'protocol': 'p'}
  counts = np.ones((3, 3, 2), np.int64)
  with pytest.raises(ValueError, match=r'saw images \[4\] twice'):
    per_image_counts.write(str(tmp_path), row, np.array([4, 0, 4]), counts, 'ab')
  counts = counts * np.arange(1, 4)[None, :, None]
  name = per_image_counts.write(str(tmp_path), row, np.array([2, 0, 1]), counts, 'ab')
  index, back = per_image_counts.read(str(tmp_path), {'per_image_counts': name})
  np.testing.assert_array_equal(index, [0, 1, 2])
  np.testing.assert_array_equal(back, counts)
