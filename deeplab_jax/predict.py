r"""Label maps and colour overlays for images, from a workdir's latest checkpoint.

  python -m deeplab_jax.predict --config=configs/v3plus_camvid.py:cpu --workdir=/tmp/camvid \
      --input=path/to/image_or_folder --output=/tmp/predictions

For each image (PNG or JPEG; a folder is searched recursively) it writes
`OUTPUT/<name>.png`, the label map in the data set's own format, and
`OUTPUT/<name>_overlay.png`, the image beside the prediction's colours blended over it, and for
Gated-SCNN `OUTPUT/<name>_boundary.png`, its shape stream's boundary probability (0..255).
Formats: Cityscapes label ids (what the official benchmark server takes), VOC palette
PNGs, ADE20K 1..150 (0 = other), and class indices for every other data set. Inference
follows config.eval (scales, flips, sliding windows, output stride, and the dense CRF when
eval.crf.enabled) on the whole image at its own size, padded to a multiple of the output
stride, with the checkpoint's average of the weights when optim.ema_decay > 0.
"""

import os
import sys
from typing import Dict, Iterator, Tuple

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags
from PIL import Image

from deeplab_jax import checkpointing
from deeplab_jax import data
from deeplab_jax import evaluate
from deeplab_jax import inference
from deeplab_jax import optim
from deeplab_jax import sharding
from deeplab_jax import steps
from deeplab_jax.data import base
from deeplab_jax.data import cityscapes
from deeplab_jax.data import folder
from deeplab_jax.data import validation
from deeplab_jax.errors import UserError
from deeplab_jax.models import registry
from deeplab_jax.postprocess import dense_crf

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a program, so importing is free)."""
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'The training run\'s directory.')
  flags.DEFINE_string('input', None, 'An image, or a folder of images.')
  flags.DEFINE_string('output', None, 'Folder for label PNGs and overlays.')

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


def class_info(data_config) -> Tuple[Tuple[str, ...], Tuple[Tuple[int, int, int], ...]]:
  """(class names, colours) of the config's data set, without preparing it."""
  name = data_config.name
  if name == 'folder':
    return folder.read_classes(data_config.root, data_config.ignore_label)
  if name not in data.DATASETS:
    raise UserError(f'data.name={name!r} is not one of {tuple(data.DATASETS)}.')
  builder = data.DATASETS[name].builder
  return tuple(builder.CLASS_NAMES), tuple(builder.COLORS)


def to_dataset_format(prediction: np.ndarray, dataset_name: str) -> Image.Image:
  """A [H, W] map of class indices as the data set's own label PNG."""
  prediction = prediction.astype(np.uint8)
  if dataset_name == 'cityscapes':
    to_label_id = np.zeros(256, np.uint8)
    for label_id, train_id, _, _ in cityscapes.CLASSES:
      to_label_id[train_id] = label_id
    return Image.fromarray(to_label_id[prediction])
  if dataset_name == 'voc':
    image = Image.fromarray(prediction, mode='P')
    image.putpalette(np.asarray(base.bitwise_palette(256), np.uint8).ravel().tolist())
    return image
  if dataset_name == 'ade20k':
    return Image.fromarray(prediction + 1)  # 0 is "other"
  return Image.fromarray(prediction)


def overlay(image: np.ndarray, prediction: np.ndarray, colors) -> np.ndarray:
  """[H, 2W, 3] uint8: the image | the prediction's colours blended over it."""
  palette = np.zeros((256, 3), np.uint8)
  palette[:len(colors)] = np.asarray(colors, np.uint8)
  blended = (0.5 * image + 0.5 * palette[prediction]).astype(np.uint8)
  return np.concatenate([image, blended], axis=1)


def list_images(path: str) -> Iterator[Tuple[str, str]]:
  """(file, name) of every image at `path`; names keep sub-folders, joined by '_'."""
  if os.path.isfile(path):
    yield path, os.path.splitext(os.path.basename(path))[0]
    return
  if not os.path.isdir(path):
    raise UserError(f'--input={path!r} is neither an image nor a folder.')
  for dirpath, _, files in sorted(os.walk(path)):
    for f in sorted(files):
      if f.lower().endswith(IMAGE_EXTENSIONS):
        relative = os.path.relpath(os.path.join(dirpath, f), path)
        yield os.path.join(dirpath, f), os.path.splitext(relative)[0].replace(os.sep, '_')


def load_latest(config, workdir: str, num_classes: int, what: str = 'predict with'):
  """(step, {'params', 'batch_stats'}) of the workdir's latest checkpoint: its average of the
  weights when optim.ema_decay > 0 (evaluate.eval_variables)."""
  mesh = sharding.make_mesh(config.mesh)
  trained = registry.build_model(config.model, num_classes)
  tx = optim.make_optimizer(config.optim, config.train.num_steps,
                           freeze_batch_norm=config.model.freeze_batch_norm_params)
  _, abstract, _ = steps.create_train_state(trained, tx, config, mesh, jax.random.key(0))
  manager = checkpointing.make_manager(workdir, config.train.keep_checkpoints)
  step = manager.latest_step()
  if step is None:
    raise UserError(f'no checkpoint in {workdir}/checkpoints to {what}.')
  state = checkpointing.restore(manager, step, abstract)
  return step, evaluate.eval_variables(state, config)


class Predictor:
  """The latest checkpoint of a workdir, ready to label images of any size."""

  def __init__(self, config, workdir: str):
    steps.validate_config(config)
    self.config = config
    self.class_names, self.colors = class_info(config.data)
    k = len(self.class_names)
    self.step, self.variables = load_latest(config, workdir, k)
    model = inference.build_eval_model(config, k)
    self._log_probs = jax.jit(
        lambda v, x: inference.predict_log_probs(model, v, x, config))
    self.multiple = config.eval.output_stride or config.model.output_stride
    self._boundary = None
    if config.model.name == 'gscnn':  # one pass on the whole image, as the network trained
      trained = registry.build_model(config.model, k)
      self._boundary = jax.jit(lambda v, x: jax.nn.sigmoid(dict(
          (n, t) for n, t, _ in trained.apply(v, x, train=False, return_aux=True)[1])['edge']))

  def _normalised(self, image: np.ndarray) -> np.ndarray:
    """[1, H', W', 3] float32: normalised, padded to a multiple of the output stride."""
    h, w = image.shape[:2]
    mean, std = np.asarray(self.config.data.mean), np.asarray(self.config.data.std)
    x = (image.astype(np.float32) - mean) / std
    ph, pw = (-h) % self.multiple, (-w) % self.multiple
    x = np.pad(x, ((0, ph), (0, pw), (0, 0)))  # zeros: the mean colour after normalising
    return x[None].astype(np.float32)

  def boundary(self, image: np.ndarray):
    """[H, W] boundary probabilities of Gated-SCNN's shape stream for a uint8 RGB image; None
    for models without one."""
    if self._boundary is None:
      return None
    h, w = image.shape[:2]
    return np.asarray(self._boundary(self.variables, self._normalised(image)))[0, :h, :w, 0]

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """[H, W] class indices of a uint8 RGB image [H, W, 3] (after the dense CRF when
    config.eval.crf.enabled)."""
    h, w = image.shape[:2]
    log_probs = self._log_probs(self.variables, self._normalised(image))[0, :h, :w]
    if self.config.eval.crf.enabled:
      log_probs = dense_crf(image, log_probs, **evaluate.crf_params(self.config.eval.crf))
    return np.asarray(jnp.argmax(log_probs, axis=-1))


def predict_files(config, workdir: str, input_path: str, output_dir: str) -> Dict[str, str]:
  """Writes a label PNG and an overlay per image; returns {name: label path}."""
  predictor = Predictor(config, workdir)
  os.makedirs(output_dir, exist_ok=True)
  written = {}
  for path, name in list_images(input_path):
    image = validation.read_image(path, 'RGB')
    prediction = predictor(image)
    label_path = os.path.join(output_dir, f'{name}.png')
    to_dataset_format(prediction, config.data.name).save(label_path)
    Image.fromarray(overlay(image, prediction, predictor.colors)).save(
        os.path.join(output_dir, f'{name}_overlay.png'))
    edges = predictor.boundary(image)
    if edges is not None:
      Image.fromarray(np.round(edges * 255).astype(np.uint8)).save(
          os.path.join(output_dir, f'{name}_boundary.png'))
    written[name] = label_path
  if not written:
    raise UserError(f'--input={input_path!r} holds no PNG or JPEG images.')
  logging.info('Wrote %d label maps and overlays to %s (checkpoint step %d).', len(written),
               output_dir, predictor.step)
  return written


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    predict_files(FLAGS.config, FLAGS.workdir, FLAGS.input, FLAGS.output)
  except UserError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  from deeplab_jax import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.configure_cpu()  # the trainer's CPU convolutions, before JAX starts a backend
  define_flags()
  flags.mark_flags_as_required(['config', 'workdir', 'input', 'output'])
  app.run(main)
