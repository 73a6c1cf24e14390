"""Whole-split evaluation: confusion matrix over every example, mIoU, and prediction panels."""

import json
from typing import Callable, Dict

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from deeplab_jax import metrics
from deeplab_jax import sharding
from deeplab_jax.data import input_pipeline
from deeplab_jax.models import layers


def make_eval_step(model, num_classes: int, input_scale: float) -> Callable:
  """(state, batch) -> (confusion [K, K], predictions [B, H, W]) at the label's full size."""
  def eval_step(state, batch):
    images = batch['image']
    size = images.shape[1:3]
    if input_scale != 1.0:
      images = layers.resize_bilinear(
          images, tuple(max(1, round(s * input_scale)) for s in size))
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, images,
                         train=False)
    predictions = jnp.argmax(layers.resize_bilinear(logits, size), axis=-1)
    weights = jnp.broadcast_to(batch['mask'][:, None, None], batch['label'].shape)
    return metrics.confusion_matrix(batch['label'], predictions, num_classes, weights), predictions
  return eval_step


def colorize(label: np.ndarray, colors, ignore_label: int) -> np.ndarray:
  """uint8 RGB [H, W, 3] of a label map; the ignore label (and anything unknown) is white."""
  palette = np.full((256, 3), 255, np.uint8)
  palette[:len(colors)] = np.asarray(colors, np.uint8)
  palette[ignore_label] = 255
  return palette[np.clip(label, 0, 255)]


def panels(images, labels, predictions, dataset, mean, std) -> np.ndarray:
  """[N, H, 3W, 3] uint8: input | ground truth | prediction, in the data set's colours."""
  out = []
  for image, label, prediction in zip(images, labels, predictions):
    rgb = np.clip(image * np.asarray(std) + np.asarray(mean), 0, 255).astype(np.uint8)
    out.append(np.concatenate([rgb, colorize(label, dataset.colors, dataset.ignore_label),
                               colorize(prediction, dataset.colors, dataset.ignore_label)], 1))
  return np.stack(out)


def evaluate(config, state, eval_step, dataset, mesh, writer, workdir: str, step: int) -> Dict:
  """Evaluates `state` on `config.eval.split`; writes scalars, images and a line of evals.jsonl."""
  split = config.eval.split
  batches, num_batches = input_pipeline.eval_batches(dataset, config, split)
  confusion = np.zeros((dataset.num_classes,) * 2, np.int64)
  images_to_write = None
  for i, local in enumerate(batches):
    cm, predictions = eval_step(state, sharding.to_global(mesh, local))
    confusion += np.asarray(jax.device_get(cm), np.int64)
    if i == 0 and config.eval.num_images_to_write:
      # Process 0's rows come first in the global batch.
      predictions = multihost_utils.process_allgather(predictions, tiled=True)
      n = min(config.eval.num_images_to_write, int(local['mask'].sum()))
      images_to_write = panels(local['image'][:n], local['label'][:n], predictions[:n],
                               dataset, config.data.mean, config.data.std)
  assert i + 1 == num_batches, (i, num_batches)
  result = {'step': int(step), 'split': split, **metrics.summarize(confusion, dataset.class_names)}
  scalars = {f'{split}/miou': result['miou'], f'{split}/pixel_accuracy': result['pixel_accuracy']}
  scalars.update({f'{split}/iou/{k}': v for k, v in result['per_class_iou'].items()})
  writer.write_scalars(step, scalars)
  if images_to_write is not None and len(images_to_write):
    writer.write_images(step, {f'{split}/input_truth_prediction': images_to_write})
  if jax.process_index() == 0:
    path = epath.Path(workdir) / 'evals.jsonl'
    previous = path.read_text() if path.exists() else ''
    # Rewritten whole rather than appended: object stores (gs://) cannot append.
    path.write_text(previous + json.dumps(_nan_to_none(result)) + '\n')
  return result


def _nan_to_none(x):
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  return None if isinstance(x, float) and np.isnan(x) else x


def is_evaluated(workdir: str, split: str, step: int) -> bool:
  """Whether WORKDIR/evals.jsonl has `step` on `split`; process 0 decides for every host."""
  found = False
  if jax.process_index() == 0:
    path = epath.Path(workdir) / 'evals.jsonl'
    if path.exists():
      rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
      found = any(r['step'] == step and r.get('split') == split for r in rows)
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(found)))
