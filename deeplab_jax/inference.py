"""Inference under config.eval's protocol, shared by evaluate.py, predict.py and export.py.

The model runs at eval.output_stride (the trained one by default), on whole images or on
sliding windows (overlapping windows' logits averaged), at each of eval.scales (times
eval.input_scale), with and without left-right flips. The passes (scales x flips), each
resized back to the image, are combined as eval.average says:

- 'probabilities' (default): the mean of each pass's softmax, as the public TF DeepLab code
  that produced the papers' multi-scale figures does (predict_labels_multi_scale);
- 'logits': the mean of the passes' logits.

With a single pass both give that pass's logits unchanged.
"""

import math

import jax
import jax.numpy as jnp

from deeplab_jax.errors import UserError
from deeplab_jax.models import layers
from deeplab_jax.models import registry
from deeplab_jax.models import unet

AVERAGES = ('probabilities', 'logits')


def build_eval_model(config, num_classes: int):
  """The model evaluation runs: the trained one, or the same weights at eval.output_stride.

  Evaluating an OS16 model at OS8 (v3 paper, section 4.1) removes one more stride and doubles
  every rate after it, those of the context module in use included, so each filter still sees
  the same image area; the parameters are unchanged (models/registry.at_output_stride).
  """
  eval_stride = config.eval.output_stride or config.model.output_stride
  return registry.build_model(registry.at_output_stride(config.model, eval_stride), num_classes)


def _starts(size: int, window: int, stride: int):
  """Window offsets that cover [0, size): a regular grid plus one flush with the end."""
  if size <= window:
    return [0]
  return sorted(set(range(0, size - window, stride)) | {size - window})


def sliding_window_logits(apply_fn, images, window, overlap: float, tile=None):
  """Logits of overlapping windows (all run as one batch), averaged where they overlap.

  tile: None, or (margin, input_size) for a network that reads `margin` px of real image around
  each window (the valid U-Net's overlap-tile): each window is cut input_size(window) px large
  from the image mirrored only past its border, and apply_fn's logits are cropped to the window.
  """
  b, h, w, _ = images.shape
  wh, ww = min(window[0], h), min(window[1], w)
  stride_h = max(1, int(math.ceil(wh * (1 - overlap))))
  stride_w = max(1, int(math.ceil(ww * (1 - overlap))))
  offsets = [(t, l) for t in _starts(h, wh, stride_h) for l in _starts(w, ww, stride_w)]
  ih, iw, source = wh, ww, images
  if tile:
    margin, input_size = tile
    ih, iw = input_size(wh), input_size(ww)
    source = unet.mirror_pad(images, ((margin, ih - wh - margin), (margin, iw - ww - margin)))
  windows = jnp.concatenate([source[:, t:t + ih, l:l + iw] for t, l in offsets], axis=0)
  logits = apply_fn(windows)[:, :wh, :ww].reshape(len(offsets), b, wh, ww, -1)
  total = jnp.zeros((b, h, w, logits.shape[-1]), jnp.float32)
  count = jnp.zeros((1, h, w, 1), jnp.float32)
  for i, (t, l) in enumerate(offsets):
    total = total.at[:, t:t + wh, l:l + ww].add(logits[i])
    count = count.at[:, t:t + wh, l:l + ww].add(1.0)
  return total / count


def num_passes(eval_config) -> int:
  """How many passes the protocol averages: scales times flips."""
  return len(eval_config.scales) * (2 if eval_config.flip else 1)


def averages_probabilities(eval_config) -> bool:
  """Whether predict_scores returns log-probabilities (more than one pass, averaged as
  probabilities) rather than logits."""
  return eval_config.average == 'probabilities' and num_passes(eval_config) > 1


def check_config(config) -> None:
  """One-line errors for impossible inference settings."""
  e = config.eval
  if e.average not in AVERAGES:
    raise UserError(f'eval.average={e.average!r} is not one of {AVERAGES}.')


def pass_logits(model, variables, images, config):
  """Yields each pass's logits (float32), resized to the images' size (a generator: the passes
  are traced one after the other)."""
  e = config.eval
  size = images.shape[1:3]
  window = tuple(e.window_size) or tuple(config.data.crop_size)
  apply_fn = lambda x: model.apply(variables, x, train=False)
  window_fn, tile = apply_fn, None
  if e.mode == 'sliding' and config.model.name == 'unet' and config.model.unet.padding == 'valid':
    # Overlap-tile inside the image too: each window reads its real surroundings.
    tiled = model.clone(given_context=True)
    window_fn = lambda x: tiled.apply(variables, x, train=False)
    tile = (unet.VALID_MARGIN, unet.valid_input_size)
  for scale in e.scales:
    s = scale * e.input_scale
    scaled = images if s == 1.0 else layers.resize_bilinear(
        images, tuple(max(1, round(d * s)) for d in size))
    for flip in ((False, True) if e.flip else (False,)):
      x = scaled[:, :, ::-1] if flip else scaled
      if e.mode == 'sliding':
        logits = sliding_window_logits(window_fn, x, window, e.window_overlap, tile)
      else:
        logits = apply_fn(x)
      logits = logits[:, :, ::-1] if flip else logits
      yield layers.resize_bilinear(logits, size)


def predict_scores(model, variables, images, config):
  """[B, H, W, K] float32 scores at the images' size whose argmax is the prediction.

  With one pass, or eval.average='logits', these are the (mean) logits; with several passes
  and eval.average='probabilities', the log of the mean softmax probability, summed in log
  space (logaddexp) so that it stays finite where a probability underflows.
  """
  e = config.eval
  if not averages_probabilities(e):
    total, n = 0.0, 0
    for logits in pass_logits(model, variables, images, config):
      total, n = total + logits, n + 1
    return total if n == 1 else total / n
  total, n = None, 0
  for logits in pass_logits(model, variables, images, config):
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    total, n = (log_probs if total is None else jnp.logaddexp(total, log_probs)), n + 1
  return total - math.log(n)


def predict_log_probs(model, variables, images, config):
  """[B, H, W, K] float32 log-probabilities under the protocol (the dense CRF's unary)."""
  scores = predict_scores(model, variables, images, config)
  if averages_probabilities(config.eval):
    return scores
  return jax.nn.log_softmax(scores, axis=-1)


def predict_labels(model, variables, images, config):
  """[B, H, W] int32 class indices under the protocol."""
  return jnp.argmax(predict_scores(model, variables, images, config), axis=-1).astype(jnp.int32)
