"""Confusion matrix -> mIoU, per-class IoU and pixel accuracy; boundary F-score."""

import math
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     weights: jax.Array) -> jax.Array:
  """[K, K] counts, rows = ground truth, columns = prediction; pixels of weight 0 count nothing.

  Labels outside [0, K) (the ignore label) are dropped.
  """
  labels = labels.reshape(-1)
  predictions = predictions.reshape(-1)
  weights = weights.reshape(-1) * (labels >= 0) * (labels < num_classes)
  index = jnp.where(weights > 0, labels * num_classes + predictions, 0)
  counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index].add(weights.astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def per_image_counts(labels: jax.Array, predictions: jax.Array, num_classes: int) -> jax.Array:
  """[B, 3, K] int32 per image and class: ground-truth pixels, predicted pixels and their
  intersection, over the pixels whose label is in [0, K) (the confusion matrix's pixels: its
  row sums, column sums and diagonal, one image at a time). Union = the first two - the third."""
  b = labels.shape[0]
  labels = labels.reshape(b, -1)
  predictions = predictions.reshape(b, -1)
  valid = ((labels >= 0) & (labels < num_classes)).astype(jnp.int32)
  row = jnp.arange(b)[:, None] * num_classes
  bins = lambda index, weight: jnp.zeros(b * num_classes, jnp.int32).at[
      (row + jnp.where(weight > 0, index, 0)).reshape(-1)].add(weight.reshape(-1))
  truth = bins(labels, valid)
  predicted = bins(predictions, valid)
  both = bins(labels, valid * (labels == predictions))
  return jnp.stack([truth, predicted, both], 0).reshape(3, b, num_classes).transpose(1, 0, 2)


def summarize(confusion: np.ndarray, class_names: Sequence[str]) -> Dict:
  """mIoU over classes present in the ground truth or predictions, per-class IoU, pixel accuracy.

  A class that never occurs and is never predicted has IoU NaN and is left out of the mean.
  """
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, tp / union, np.nan)
  total = confusion.sum()
  return {
      'miou': float(np.nanmean(iou)) if np.any(union > 0) else float('nan'),
      'pixel_accuracy': float(tp.sum() / total) if total else float('nan'),
      'per_class_iou': {name: float(v) for name, v in zip(class_names, iou)},
  }


# Boundary F-score (Gated-SCNN's evaluation, after the DAVIS benchmark's db_eval_boundary): for
# each image and class, the class's boundary pixels in the prediction and in the ground truth;
# precision is the share of predicted boundary pixels within `radius` of a true one, recall the
# share of true boundary pixels within `radius` of a predicted one, F their harmonic mean. F is
# averaged over the images where the class occurs, then over those classes.


def boundary_radius(tolerance: float, height: int, width: int) -> int:
  """A tolerance in pixels (>= 1) or as a fraction of the image diagonal (< 1), rounded up as
  db_eval_boundary's bound_th."""
  pixels = tolerance if tolerance >= 1 else tolerance * math.hypot(height, width)
  return int(math.ceil(pixels - 1e-9))  # a fraction of the diagonal times it is not exact


def boundaries(masks: jax.Array, sizes: jax.Array) -> jax.Array:
  """Thin boundaries of [B, H, W, K] boolean masks, as DAVIS's seg2bmap: a pixel differs from
  its right, lower or lower-right neighbour, the image's last row and column compared with
  themselves (so an image's own border is no boundary). `sizes` [B, 2] are the images' real
  heights and widths inside the padded masks; outside them there is no boundary."""
  _, h, w, _ = masks.shape
  rows, cols = jnp.arange(h), jnp.arange(w)
  below = jnp.minimum(rows[None] + 1, sizes[:, :1] - 1)  # [B, H]
  right = jnp.minimum(cols[None] + 1, sizes[:, 1:] - 1)  # [B, W]
  take_rows = lambda x: jnp.take_along_axis(x, below[:, :, None, None], axis=1)
  take_cols = lambda x: jnp.take_along_axis(x, right[:, None, :, None], axis=2)
  south = take_rows(masks)
  edge = (masks != take_cols(masks)) | (masks != south) | (masks != take_cols(south))
  inside = ((rows[None, :, None] < sizes[:, :1, None]) &
            (cols[None, None, :] < sizes[:, 1:, None]))
  return edge & inside[..., None]


def _dilate(x: jax.Array, radius: int) -> jax.Array:
  """Binary dilation of [B, H, W, K] by a disk of `radius` (x^2 + y^2 <= radius^2)."""
  if radius == 0:
    return x
  r = np.arange(-radius, radius + 1)
  disk = (r[:, None] ** 2 + r[None, :] ** 2 <= radius ** 2).astype(np.float32)
  k = x.shape[-1]
  kernel = jnp.asarray(np.broadcast_to(disk[:, :, None, None], disk.shape + (1, k)))
  y = jax.lax.conv_general_dilated(
      x.astype(jnp.float32), kernel, (1, 1), [(radius, radius)] * 2,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=k)
  return y > 0.5


def boundary_f_sums(labels: jax.Array, predictions: jax.Array, num_classes: int,
                    sizes: jax.Array, weights: jax.Array, radius: int) -> jax.Array:
  """[2, K]: the sum of each class's boundary F over the images where the class occurs in the
  ground truth, and the number of those images. Labels outside [0, K) are void: predicted
  pixels there are not counted (db_eval_boundary's void_pixels). `weights` [B] masks padded
  examples. Sums add over batches and hosts; `boundary_f_score` divides them."""
  void = (labels < 0) | (labels >= num_classes)
  classes = jnp.arange(num_classes)
  truth = labels[..., None] == classes
  predicted = (predictions[..., None] == classes) & ~void[..., None]
  true_edge, pred_edge = boundaries(truth, sizes), boundaries(predicted, sizes)
  count = lambda x: jnp.sum(x, axis=(1, 2)).astype(jnp.float32)  # [B, K]
  n_true, n_pred = count(true_edge), count(pred_edge)
  recall_hits = count(true_edge & _dilate(pred_edge, radius))
  precision_hits = count(pred_edge & _dilate(true_edge, radius))
  # db_eval_boundary's cases: no boundary predicted or none true.
  precision = jnp.where(n_pred > 0, precision_hits / jnp.maximum(n_pred, 1), 1.0)
  recall = jnp.where(n_true > 0, recall_hits / jnp.maximum(n_true, 1), 1.0)
  precision = jnp.where((n_pred > 0) & (n_true == 0), 0.0, precision)
  recall = jnp.where((n_pred == 0) & (n_true > 0), 0.0, recall)
  f = jnp.where(precision + recall > 0,
                2 * precision * recall / jnp.maximum(precision + recall, 1e-12), 0.0)
  occurs = (jnp.sum(truth, axis=(1, 2)) > 0) & (weights[:, None] > 0)
  return jnp.stack([jnp.sum(jnp.where(occurs, f, 0.0), 0), jnp.sum(occurs, 0).astype(f.dtype)])


def boundary_f_score(sums: np.ndarray, class_names: Sequence[str]) -> Dict:
  """Mean boundary F over the classes that occur, and per class (NaN where a class never
  occurs), from boundary_f_sums added over a split."""
  total, images = np.asarray(sums, np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_class = np.where(images > 0, total / images, np.nan)
  return {'boundary_f': float(np.nanmean(per_class)) if np.any(images > 0) else float('nan'),
          'per_class_boundary_f': {n: float(v) for n, v in zip(class_names, per_class)}}
