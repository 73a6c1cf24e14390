"""Confusion matrix -> mIoU, per-class IoU and pixel accuracy."""

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
