"""Whole-split evaluation: confusion matrices over every example and host, mIoU, prediction
panels, and WORKDIR/evals.jsonl (one line per evaluation, rewritten atomically).

Inference (output stride, sliding windows, scales, flips and how passes are averaged) is
deeplab_jax/inference.py's; the dense CRF of DeepLab v1/v2 (config.eval.crf) runs on the
host on its full-resolution log-probabilities. On a mesh with a `spatial` axis each eval
batch is padded at the bottom to sharding.padded_height: the padded rows carry the ignore
label, so they count in no metric.
"""

import json
import os
import uuid
from typing import Callable, Dict, List, Tuple

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from deeplab_jax import inference
from deeplab_jax import metrics
from deeplab_jax import per_image_counts as per_image_file
from deeplab_jax import sharding
from deeplab_jax.errors import UserError
from deeplab_jax.postprocess import dense_crf

EVALS_FILE = 'evals.jsonl'
EVAL_MODES = ('whole', 'sliding')
PER_IMAGE = ('per_image', 'index', 'valid')  # counts' fields of one image each, not sums


def eval_variables(state, config):
  """The variables evaluation, predict and export use: the state's average of the weights
  ({'params', 'batch_stats'}) when optim.ema_decay > 0, else its params and batch_stats."""
  if config.optim.ema_decay > 0:
    if getattr(state, 'ema', None) is None:
      raise ValueError(f'optim.ema_decay={config.optim.ema_decay}, but the state has no '
                       'average of the weights.')
    return state.ema
  return {'params': state.params, 'batch_stats': state.batch_stats}


def boundary_radii(config) -> Tuple[int, ...]:
  """config.eval.boundary_tolerances in pixels, at eval.image_size's diagonal."""
  h, w = config.eval.image_size
  return tuple(metrics.boundary_radius(t, h, w) for t in config.eval.boundary_tolerances)


def counts(labels, predictions, batch, num_classes: int, config) -> Dict:
  """What a batch adds to a split's scores: 'confusion' [K, K]; with eval.boundary_tolerances
  'boundary_f' [tolerances, 2, K] (metrics.boundary_f_sums); with eval.per_image_counts and
  the batch's example 'index' [B], the images' own counts: 'per_image' [B, 3, K]
  (metrics.per_image_counts), 'index' and 'valid' (the batch's mask)."""
  weights = jnp.broadcast_to(jnp.asarray(batch['mask'])[:, None, None], labels.shape)
  out = {'confusion': metrics.confusion_matrix(labels, predictions, num_classes, weights)}
  if config.eval.per_image_counts and 'index' in batch:
    out.update(per_image=metrics.per_image_counts(labels, predictions, num_classes),
               index=jnp.asarray(batch['index']), valid=jnp.asarray(batch['mask']))
  if config.eval.boundary_tolerances:
    out['boundary_f'] = jnp.stack([
        metrics.boundary_f_sums(labels, predictions, num_classes, batch['size'], batch['mask'], r)
        for r in boundary_radii(config)])
  return out


def make_eval_step(model, num_classes: int, config) -> Callable:
  """(state, batch) -> (counts, predictions [B, H, W]) at the label's full size, of the state's
  eval_variables; counts as `counts` gives them."""
  def eval_step(state, batch):
    variables = eval_variables(state, config)
    predictions = inference.predict_labels(model, variables, batch['image'], config)
    return counts(batch['label'], predictions, batch, num_classes, config), predictions
  return eval_step


def crf_params(crf_config) -> Dict:
  """dense_crf's keyword arguments from config.eval.crf."""
  return {k: crf_config[k] for k in ('w1', 's_alpha', 's_beta', 'w2', 's_gamma', 'iterations')}


def denormalise(images, mean, std) -> np.ndarray:
  """uint8 RGB from the pipeline's normalised float images."""
  rgb = np.asarray(images) * np.asarray(std) + np.asarray(mean)
  return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def make_eval_fn(model, num_classes: int, config, mesh) -> Callable:
  """(state, global batch) -> (counts over all processes, predictions [B, H, W]); counts as
  `counts` gives them (the confusion matrix, and boundary F's sums where configured).

  Without the CRF this is one jitted step. With config.eval.crf.enabled the jitted step stops
  at the log-probabilities; each process then runs dense_crf on its own images (the padding
  masked out by each example's size) and the confusion matrices are summed across processes.
  """
  step = jax.jit(make_eval_step(model, num_classes, config), out_shardings=(
      sharding.replicated(mesh), sharding.batch_sharding(mesh, 3)))
  if not config.eval.crf.enabled:
    return step
  whole_rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  log_probs_fn = jax.jit(
      lambda state, batch: inference.predict_log_probs(
          model, eval_variables(state, config), batch['image'], config),
      out_shardings=whole_rows)
  gather_rows = jax.jit(lambda x: x, out_shardings=whole_rows)
  spec = jax.sharding.PartitionSpec('data')
  params = crf_params(config.eval.crf)

  def eval_fn(state, batch):
    local = lambda x: np.asarray(multihost_utils.global_array_to_host_local_array(
        gather_rows(x), mesh, spec))
    log_probs = local(log_probs_fn(state, batch))
    image, label, mask, size = (local(batch[k]) for k in ('image', 'label', 'mask', 'size'))
    extra = {'index': local(batch['index'])} if 'index' in batch else {}
    h, w = label.shape[1:]
    valid = ((np.arange(h)[None, :, None] < size[:, :1, None]) &
             (np.arange(w)[None, None, :] < size[:, 1:, None]))
    rgb = denormalise(image, config.data.mean, config.data.std)
    probs = dense_crf(rgb, log_probs, valid=valid, **params)
    predictions = np.asarray(jnp.argmax(probs, axis=-1))
    local_counts = jax.device_get(counts(label, predictions,
                                         {'mask': mask, 'size': size, **extra},
                                         num_classes, config))
    if jax.process_count() > 1:  # split totals add up; each image's own counts line up
      local_counts = {k: np.asarray(multihost_utils.process_allgather(v, tiled=k in PER_IMAGE))
                      if k in PER_IMAGE else
                      np.asarray(multihost_utils.process_allgather(v)).sum(0)
                      for k, v in local_counts.items()}
    return local_counts, predictions

  return eval_fn


def protocol(config) -> str:
  """The evaluation protocol in words, kept with each line of evals.jsonl (and how resume tells
  whether a step is evaluated). With several passes it names their averaging (avg=probs or
  avg=logits); one pass has nothing to average, and its words are those of older lines. With
  optim.ema_decay > 0 it ends in ema=DECAY: the average of the weights was scored."""
  e = config.eval
  words = [e.mode]
  if e.mode == 'sliding':
    window = tuple(e.window_size) or tuple(config.data.crop_size)
    words.append(f'window={window[0]}x{window[1]},overlap={e.window_overlap:.2f}')
  words.append(f'scales={",".join(str(s) for s in e.scales)}')
  if e.flip:
    words.append('flip')
  if inference.num_passes(e) > 1:
    words.append('avg=probs' if e.average == 'probabilities' else 'avg=logits')
  words.append(f'os={e.output_stride or config.model.output_stride}')
  if e.crf.enabled:
    words.append('crf(' + ','.join(f'{k}={v:g}' for k, v in crf_params(e.crf).items()) + ')')
  if e.boundary_tolerances:
    words.append('boundary_f=' + ','.join(f'{r}px' for r in boundary_radii(config)))
  if config.optim.ema_decay > 0:
    words.append(f'ema={config.optim.ema_decay!r}')
  return ' '.join(words)


def check_eval_config(config) -> None:
  """One-line errors for impossible evaluation settings."""
  e = config.eval
  if e.mode not in EVAL_MODES:
    raise UserError(f'eval.mode={e.mode!r} is not one of {EVAL_MODES}.')
  if not e.scales or any(s <= 0 for s in e.scales):
    raise UserError(f'eval.scales={tuple(e.scales)} needs at least one scale, each > 0.')
  if not 0 <= e.window_overlap < 1:
    raise UserError(f'eval.window_overlap={e.window_overlap} must be in [0, 1).')
  window = tuple(e.window_size) or tuple(config.data.crop_size)
  if len(window) != 2 or min(window) < 1:
    raise UserError(f'eval.window_size={tuple(e.window_size)} must be (height, width).')
  inference.check_config(config)
  multiple = config.data.pad_height_multiple
  if int(multiple) != multiple or multiple < 1:
    raise UserError(f'data.pad_height_multiple={multiple} must be an integer >= 1.')
  tolerances = tuple(e.boundary_tolerances)
  if any(not t > 0 for t in tolerances):
    raise UserError(f'eval.boundary_tolerances={tolerances} must each be > 0 (below 1: a fraction '
                    'of the diagonal; else pixels).')
  if len(set(boundary_radii(config))) != len(tolerances):
    raise UserError(f'eval.boundary_tolerances={tolerances} give the radii '
                    f'{boundary_radii(config)} px at eval.image_size '
                    f'{tuple(e.image_size)}: each must give its own.')
  crf = e.crf
  for name in ('s_alpha', 's_beta', 's_gamma'):
    if not crf[name] > 0:
      raise UserError(f'eval.crf.{name}={crf[name]} must be > 0.')
  if int(crf.iterations) != crf.iterations or crf.iterations < 0:
    raise UserError(f'eval.crf.iterations={crf.iterations} must be an integer >= 0.')


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
    rgb = denormalise(image, mean, std)
    out.append(np.concatenate([rgb, colorize(label, dataset.colors, dataset.ignore_label),
                               colorize(prediction, dataset.colors, dataset.ignore_label)], 1))
  return np.stack(out)


def evaluate(config, state, eval_step, dataset, mesh, writer, workdir: str, step: int) -> Dict:
  """Evaluates `state` on `config.eval.split`; writes scalars, images and a line of evals.jsonl."""
  # Imported here: the rest of this module (the eval model and step, the config checks that
  # steps.validate_config runs) works without TensorFlow.
  from deeplab_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  split = config.eval.split
  batches, num_batches = input_pipeline.eval_batches(dataset, config, split)
  height = sharding.padded_height(config.eval.image_size[0], mesh,
                                  config.data.pad_height_multiple)
  confusion = np.zeros((dataset.num_classes,) * 2, np.int64)
  radii = boundary_radii(config)
  boundary = np.zeros((len(radii), 2, dataset.num_classes))
  images_to_write = None
  per_image, indices = [], []
  for i, local in enumerate(batches):
    padded = sharding.pad_height(local, height, dataset.ignore_label)
    batch_counts, predictions = eval_step(state, sharding.to_global(mesh, padded))
    confusion += np.asarray(jax.device_get(batch_counts['confusion']), np.int64)
    if 'boundary_f' in batch_counts:
      boundary += np.asarray(jax.device_get(batch_counts['boundary_f']), np.float64)
    if 'per_image' in batch_counts:
      valid = np.asarray(jax.device_get(batch_counts['valid']), bool)
      per_image.append(np.asarray(jax.device_get(batch_counts['per_image']))[valid])
      indices.append(np.asarray(jax.device_get(batch_counts['index']))[valid])
    if i == 0 and config.eval.num_images_to_write:
      predictions = _local_rows(predictions, mesh)
      n = min(config.eval.num_images_to_write, int(local['mask'].sum()))
      h = local['label'].shape[1]
      images_to_write = panels(local['image'][:n], local['label'][:n], predictions[:n, :h],
                               dataset, config.data.mean, config.data.std)
  assert i + 1 == num_batches, (i, num_batches)
  # The confusion matrix (rows: ground truth, columns: prediction, in pixels) goes into the
  # line too, for what a class is mistaken for.
  result = {'step': int(step), 'split': split, 'protocol': protocol(config),
            **metrics.summarize(confusion, dataset.class_names),
            'confusion': confusion.tolist()}
  scalars = {f'{split}/miou': result['miou'], f'{split}/pixel_accuracy': result['pixel_accuracy']}
  scalars.update({f'{split}/iou/{k}': v for k, v in result['per_class_iou'].items()})
  for radius, sums in zip(radii, boundary):
    scores = metrics.boundary_f_score(sums, dataset.class_names)
    result[f'boundary_f_{radius}px'] = scores['boundary_f']
    result[f'per_class_boundary_f_{radius}px'] = scores['per_class_boundary_f']
    scalars[f'{split}/boundary_f_{radius}px'] = scores['boundary_f']
  if per_image and jax.process_index() == 0:
    result['per_image_counts'] = per_image_file.write(
        workdir, result, np.concatenate(indices), np.concatenate(per_image), dataset.class_names)
  writer.write_scalars(step, scalars)
  if images_to_write is not None and len(images_to_write):
    writer.write_images(step, {f'{split}/input_truth_prediction': images_to_write})
  if jax.process_index() == 0:
    append_evaluation(workdir, result)
  return result


def _local_rows(predictions, mesh) -> np.ndarray:
  """This process's rows of the predictions, in its local batch's order: the mesh's device
  order (jax.make_mesh's, topology-aware) need not put process 0's rows first."""
  if not isinstance(predictions, jax.Array) or predictions.is_fully_addressable:
    return np.asarray(predictions)  # the CRF path's are local already; one process: all
  return np.asarray(multihost_utils.global_array_to_host_local_array(
      predictions, mesh, predictions.sharding.spec))


def _nan_to_none(x):
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  return None if isinstance(x, float) and np.isnan(x) else x


def read_evaluations(workdir: str) -> List[Tuple[str, Dict]]:
  """(line, row) of each readable line of WORKDIR/evals.jsonl, in order; [] without the file.

  A line that is not a JSON object with a step (one cut short by a kill mid-write, under an
  older version that wrote in place) is skipped with a warning rather than stopping resume.
  """
  path = epath.Path(workdir) / EVALS_FILE
  if not path.exists():
    return []
  rows = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      logging.warning('%s line %d is damaged (%s); skipping it.', path, number, e)
      continue
    if not isinstance(row, dict) or 'step' not in row:
      logging.warning('%s line %d is not an evaluation; skipping it.', path, number)
      continue
    rows.append((line, row))
  return rows


def _key(row: Dict) -> Tuple:
  return row['step'], row.get('split'), row.get('protocol')


def append_evaluation(workdir: str, result: Dict) -> None:
  """Adds `result` as a line of WORKDIR/evals.jsonl, keeping the readable lines before it.

  A line of the same step, split and protocol (a checkpoint scored again with --mode=eval) is
  replaced, so each figure appears once and summaries do not count it twice.
  The file is rewritten whole, as object stores (gs://) cannot append, and atomically: a temp
  file in the same folder replaces it, so a kill leaves the old file or the new one.
  """
  path = epath.Path(workdir) / EVALS_FILE
  key = _key(result)
  lines = [line for line, row in read_evaluations(workdir) if _key(row) != key]
  lines.append(json.dumps(_nan_to_none(result)))
  temp = path.parent / f'.{EVALS_FILE}.{uuid.uuid4().hex}.tmp'
  text = '\n'.join(lines) + '\n'
  if '://' in str(path):
    temp.write_text(text)
  else:  # on a local disk the data must reach it before the rename, or a crash may empty it
    with open(temp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
  temp.replace(path)


def is_evaluated(workdir: str, config, step: int) -> bool:
  """Whether WORKDIR/evals.jsonl has `step` on config.eval.split under the config's protocol;
  process 0 decides for every host."""
  found = False
  if jax.process_index() == 0:
    found = any(r['step'] == step and r.get('split') == config.eval.split
                and r.get('protocol') == protocol(config) for _, r in read_evaluations(workdir))
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(found)))
