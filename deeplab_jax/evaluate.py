"""Whole-split evaluation: confusion matrix over every example, mIoU, and prediction panels.

Inference follows config.eval: whole (padded) images or sliding windows, any set of input
scales with or without left-right flips (logits averaged), at the trained output stride or
another one (OS8 for a model trained at OS16), and optionally the dense CRF of DeepLab v1/v2
(config.eval.crf) on the full-resolution probabilities.
"""

import copy
import json
import math
from typing import Callable, Dict

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from deeplab_jax import metrics
from deeplab_jax import sharding
from deeplab_jax.errors import UserError
from deeplab_jax.models import deeplab
from deeplab_jax.models import layers
from deeplab_jax.postprocess import dense_crf


EVAL_MODES = ('whole', 'sliding')


def build_eval_model(config, num_classes: int):
  """The model evaluation runs: the trained one, or the same weights at eval.output_stride.

  Evaluating an OS16 model at OS8 (v3 paper, section 4.1) removes one more stride and doubles
  every rate after it, the context module's included, so each filter still sees the same
  image area; the parameters are unchanged.
  """
  c = config.model
  eval_stride = config.eval.output_stride or c.output_stride
  if eval_stride not in deeplab.OUTPUT_STRIDES:
    raise UserError(f'eval.output_stride={eval_stride} is not one of {deeplab.OUTPUT_STRIDES} '
                    '(or 0: the model\'s own).')
  if eval_stride == c.output_stride:
    return deeplab.build_model(c, num_classes)
  c = copy.deepcopy(c)
  factor = c.output_stride / eval_stride

  def rescale(rates, field):
    scaled = tuple(r * factor for r in rates)
    if any(r != int(r) or r < 1 for r in scaled):
      raise UserError(f'eval.output_stride={eval_stride} with model.output_stride='
                      f'{c.output_stride} turns {field}={tuple(rates)} into {scaled}; rates '
                      'must stay whole numbers.')
    return tuple(int(r) for r in scaled)

  c.output_stride = eval_stride
  c.aspp.atrous_rates = rescale(c.aspp.atrous_rates, 'model.aspp.atrous_rates')
  c.context_module.atrous_rates = rescale(c.context_module.atrous_rates,
                                          'model.context_module.atrous_rates')
  if c.backbone.name == 'vgg16':
    c.backbone.fc6_rate = rescale((c.backbone.fc6_rate,), 'model.backbone.fc6_rate')[0]
  return deeplab.build_model(c, num_classes)


def _starts(size: int, window: int, stride: int):
  """Window offsets that cover [0, size): a regular grid plus one flush with the end."""
  if size <= window:
    return [0]
  return sorted(set(range(0, size - window, stride)) | {size - window})


def sliding_window_logits(apply_fn, images, window, overlap: float):
  """Logits of overlapping windows (all run as one batch), averaged where they overlap."""
  b, h, w, _ = images.shape
  wh, ww = min(window[0], h), min(window[1], w)
  stride_h = max(1, int(math.ceil(wh * (1 - overlap))))
  stride_w = max(1, int(math.ceil(ww * (1 - overlap))))
  offsets = [(t, l) for t in _starts(h, wh, stride_h) for l in _starts(w, ww, stride_w)]
  windows = jnp.concatenate([images[:, t:t + wh, l:l + ww] for t, l in offsets], axis=0)
  logits = apply_fn(windows).reshape(len(offsets), b, wh, ww, -1)
  total = jnp.zeros((b, h, w, logits.shape[-1]), jnp.float32)
  count = jnp.zeros((1, h, w, 1), jnp.float32)
  for i, (t, l) in enumerate(offsets):
    total = total.at[:, t:t + wh, l:l + ww].add(logits[i])
    count = count.at[:, t:t + wh, l:l + ww].add(1.0)
  return total / count


def predict_logits(model, variables, images, config):
  """Float32 logits at the images' size under config.eval's protocol.

  Each of eval.scales (times eval.input_scale) resizes the image; eval.flip adds the
  left-right mirror of each; eval.mode 'sliding' runs windows of eval.window_size (default
  data.crop_size) with eval.window_overlap. The logits of all passes, resized to the image,
  are averaged.
  """
  e = config.eval
  size = images.shape[1:3]
  window = tuple(e.window_size) or tuple(config.data.crop_size)
  apply_fn = lambda x: model.apply(variables, x, train=False)
  total, passes = 0.0, 0
  for scale in e.scales:
    s = scale * e.input_scale
    scaled = images if s == 1.0 else layers.resize_bilinear(
        images, tuple(max(1, round(d * s)) for d in size))
    for flip in ((False, True) if e.flip else (False,)):
      x = scaled[:, :, ::-1] if flip else scaled
      if e.mode == 'sliding':
        logits = sliding_window_logits(apply_fn, x, window, e.window_overlap)
      else:
        logits = apply_fn(x)
      logits = logits[:, :, ::-1] if flip else logits
      total = total + layers.resize_bilinear(logits, size)
      passes += 1
  return total / passes


def make_eval_step(model, num_classes: int, config) -> Callable:
  """(state, batch) -> (confusion [K, K], predictions [B, H, W]) at the label's full size."""
  def eval_step(state, batch):
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    predictions = jnp.argmax(predict_logits(model, variables, batch['image'], config), axis=-1)
    weights = jnp.broadcast_to(batch['mask'][:, None, None], batch['label'].shape)
    return metrics.confusion_matrix(batch['label'], predictions, num_classes, weights), predictions
  return eval_step


def crf_params(crf_config) -> Dict:
  """dense_crf's keyword arguments from config.eval.crf."""
  return {k: crf_config[k] for k in ('w1', 's_alpha', 's_beta', 'w2', 's_gamma', 'iterations')}


def denormalise(images, mean, std) -> np.ndarray:
  """uint8 RGB from the pipeline's normalised float images."""
  rgb = np.asarray(images) * np.asarray(std) + np.asarray(mean)
  return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def make_eval_fn(model, num_classes: int, config, mesh) -> Callable:
  """(state, global batch) -> (confusion [K, K] over all processes, predictions [B, H, W]).

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
      lambda state, batch: jax.nn.log_softmax(predict_logits(
          model, {'params': state.params, 'batch_stats': state.batch_stats}, batch['image'],
          config), axis=-1), out_shardings=whole_rows)
  gather_rows = jax.jit(lambda x: x, out_shardings=whole_rows)
  spec = jax.sharding.PartitionSpec('data')
  params = crf_params(config.eval.crf)

  def eval_fn(state, batch):
    local = lambda x: np.asarray(multihost_utils.global_array_to_host_local_array(
        gather_rows(x), mesh, spec))
    log_probs = local(log_probs_fn(state, batch))
    image, label, mask, size = (local(batch[k]) for k in ('image', 'label', 'mask', 'size'))
    h, w = label.shape[1:]
    valid = ((np.arange(h)[None, :, None] < size[:, :1, None]) &
             (np.arange(w)[None, None, :] < size[:, 1:, None]))
    rgb = denormalise(image, config.data.mean, config.data.std)
    probs = dense_crf(rgb, log_probs, valid=valid, **params)
    predictions = np.asarray(jnp.argmax(probs, axis=-1))
    weights = np.broadcast_to(mask[:, None, None], label.shape)
    confusion = np.asarray(metrics.confusion_matrix(label, predictions, num_classes, weights))
    if jax.process_count() > 1:
      confusion = np.asarray(multihost_utils.process_allgather(confusion)).sum(0)
    return confusion, predictions

  return eval_fn


def protocol(config) -> str:
  """The evaluation protocol in words, kept with each line of evals.jsonl."""
  e = config.eval
  words = [e.mode]
  if e.mode == 'sliding':
    window = tuple(e.window_size) or tuple(config.data.crop_size)
    words.append(f'window={window[0]}x{window[1]},overlap={e.window_overlap:.2f}')
  words.append(f'scales={",".join(str(s) for s in e.scales)}')
  if e.flip:
    words.append('flip')
  words.append(f'os={e.output_stride or config.model.output_stride}')
  if e.crf.enabled:
    words.append('crf(' + ','.join(f'{k}={v:g}' for k, v in crf_params(e.crf).items()) + ')')
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
  # The confusion matrix (rows: ground truth, columns: prediction, in pixels) goes into the
  # line too, for what a class is mistaken for.
  result = {'step': int(step), 'split': split, 'protocol': protocol(config),
            **metrics.summarize(confusion, dataset.class_names),
            'confusion': confusion.tolist()}
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


def is_evaluated(workdir: str, config, step: int) -> bool:
  """Whether WORKDIR/evals.jsonl has `step` on config.eval.split under the config's protocol;
  process 0 decides for every host."""
  found = False
  if jax.process_index() == 0:
    path = epath.Path(workdir) / 'evals.jsonl'
    if path.exists():
      rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
      found = any(r['step'] == step and r.get('split') == config.eval.split
                  and r.get('protocol') == protocol(config) for r in rows)
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(found)))
