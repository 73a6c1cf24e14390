"""Boundary F-score (metrics.boundary_f_sums) against an independent numpy/scipy computation:
seg2bmap written pixel by pixel on each image's unpadded region, matches by Euclidean distance
transforms, with void pixels and padding; and on label maps whose answer is known."""

import numpy as np
import pytest
from scipy import ndimage

from deeplab_jax import metrics

VOID = 255


def _bmap(mask):
  """DAVIS's seg2bmap on one unpadded boolean mask, pixel by pixel."""
  h, w = mask.shape
  out = np.zeros_like(mask)
  for i in range(h):
    for j in range(w):
      e = mask[i, j + 1] if j + 1 < w else mask[i, j]
      s = mask[i + 1, j] if i + 1 < h else mask[i, j]
      se = mask[min(i + 1, h - 1), min(j + 1, w - 1)]
      out[i, j] = mask[i, j] != e or mask[i, j] != s or mask[i, j] != se
  return out


def _f(pred_edge, true_edge, radius):
  n_pred, n_true = pred_edge.sum(), true_edge.sum()
  if n_pred == 0 and n_true == 0:
    return 1.0
  if n_pred == 0 or n_true == 0:
    return 0.0
  # Distance from every pixel to the nearest boundary pixel of the other map.
  to_true = ndimage.distance_transform_edt(~true_edge)
  to_pred = ndimage.distance_transform_edt(~pred_edge)
  precision = np.mean(to_true[pred_edge] <= radius)
  recall = np.mean(to_pred[true_edge] <= radius)
  return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def reference(labels, predictions, sizes, weights, num_classes, radius):
  """Mean F per class over the images where it occurs, computed image by image."""
  total, images = np.zeros(num_classes), np.zeros(num_classes)
  for label, pred, (h, w), weight in zip(labels, predictions, sizes, weights):
    if not weight:
      continue
    label, pred = label[:h, :w], pred[:h, :w]
    void = (label < 0) | (label >= num_classes)
    for k in range(num_classes):
      truth = label == k
      if not truth.any():
        continue
      total[k] += _f(_bmap((pred == k) & ~void), _bmap(truth), radius)
      images[k] += 1
  return total, images


def random_maps(rng, b, h, w, num_classes):
  """Blocky label maps (so boundaries are lines, not noise) and predictions that mostly agree."""
  coarse = rng.integers(0, num_classes, (b, h // 4 + 1, w // 4 + 1))
  labels = np.repeat(np.repeat(coarse, 4, 1), 4, 2)[:, :h, :w]
  predictions = labels.copy()
  flip = rng.random((b, h, w)) < 0.05
  predictions[flip] = rng.integers(0, num_classes, flip.sum())
  predictions = np.roll(predictions, rng.integers(-2, 3), axis=2)
  return labels, predictions


@pytest.mark.parametrize('radius', [0, 1, 3])
def test_matches_an_independent_computation_with_void_and_padding(radius):
  rng = np.random.default_rng(radius)
  num_classes, b, h, w = 4, 4, 30, 37
  labels, predictions = random_maps(rng, b, h, w, num_classes)
  labels[0, 5:12, 8:20] = VOID                       # void pixels inside an image
  sizes = np.array([[30, 37], [24, 37], [30, 21], [17, 9]])
  for i, (sh, sw) in enumerate(sizes):               # what eval_batches pads with
    labels[i, sh:], labels[i, :, sw:] = VOID, VOID
    predictions[i, sh:], predictions[i, :, sw:] = 0, 0
  weights = np.array([1, 1, 1, 0])                   # the last example is batch padding
  got = np.asarray(metrics.boundary_f_sums(labels, predictions, num_classes, sizes, weights,
                                           radius))
  want_total, want_images = reference(labels, predictions, sizes, weights, num_classes, radius)
  np.testing.assert_array_equal(got[1], want_images)
  np.testing.assert_allclose(got[0], want_total, rtol=1e-5, atol=1e-6)
  assert 0 < want_total.sum() < want_images.sum()  # neither perfect nor empty


def test_known_answers():
  """A 10 x 10 square of class 1 on class 0 in a 20 x 20 image: predicted exactly, F = 1 for
  both classes; predicted 2 px to the right, every boundary pixel is within 2 px (F = 1 at
  radius 2) and the square's left and right sides are not within 1 px."""
  label = np.zeros((1, 20, 20), np.int64)
  label[0, 5:15, 5:15] = 1
  sizes, weights = np.array([[20, 20]]), np.array([1])
  exact = metrics.boundary_f_sums(label, label, 2, sizes, weights, 0)
  np.testing.assert_allclose(np.asarray(exact), [[1.0, 1.0], [1.0, 1.0]])
  shifted = np.roll(label, 2, axis=2)
  assert np.allclose(np.asarray(metrics.boundary_f_sums(label, shifted, 2, sizes, weights, 2))[0],
                     1.0)
  near = np.asarray(metrics.boundary_f_sums(label, shifted, 2, sizes, weights, 1))[0]
  assert np.all(near < 0.9) and np.all(near > 0.3)
  # The image's own border is no boundary: a class filling the image has none, and predicting
  # it everywhere is perfect.
  full = np.ones((1, 20, 20), np.int64)
  np.testing.assert_allclose(np.asarray(metrics.boundary_f_sums(full, full, 2, sizes, weights,
                                                                1)), [[0.0, 1.0], [0.0, 1.0]])
  summary = metrics.boundary_f_score(np.asarray(exact), ['a', 'b'])
  assert summary['boundary_f'] == 1.0 and summary['per_class_boundary_f'] == {'a': 1.0, 'b': 1.0}


def test_radius_from_a_fraction_of_the_diagonal():
  """The paper's 3, 5, 9 and 12 px at 1024 x 2048 as fractions of the diagonal give those pixels
  back, and at CamVid's 360 x 480 (diagonal 600) 1, 2, 3 and 4 px."""
  diagonal = np.hypot(1024, 2048)
  fractions = [px / diagonal for px in (3, 5, 9, 12)]
  assert [metrics.boundary_radius(f, 1024, 2048) for f in fractions] == [3, 5, 9, 12]
  assert [metrics.boundary_radius(f, 360, 480) for f in fractions] == [1, 2, 3, 4]
  assert metrics.boundary_radius(2, 360, 480) == 2
