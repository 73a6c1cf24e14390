r"""Exports a trained model as a serving function: a TF SavedModel or a StableHLO artifact.

  python -m deeplab_jax.export --config=configs/quickstart.py --workdir=/tmp/quickstart \
      --format=savedmodel --output=/tmp/quickstart_savedmodel [--probabilities]

A config that evaluates with windows or at another input scale (configs/v3plus_camvid.py:cpu)
needs --config.eval.mode=whole --config.eval.scales='(1.0,)' --config.eval.input_scale=1.0.

The function takes uint8 RGB images [B, H, W, 3] of any batch and size and returns int32
label maps [B, H, W] (and, with --probabilities, float32 softmax probabilities [B, H, W, K]).
It normalises with config.data's mean and std, pads to a multiple of the evaluation output
stride, runs the latest checkpoint's weights (their average with optim.ema_decay > 0, as
evaluation does) under config.eval's protocol (its flips too, combined as eval.average says;
the scales must be (1.0,) and the mode 'whole', since the sizes are symbolic), and crops back.
The dense CRF (eval.crf) runs on the host after the network and is not part of the artifact.

- savedmodel: OUTPUT is a TF SavedModel whose `serving_default` signature takes `images`
  (uint8 [None, None, None, 3]) and returns `labels` (and `probabilities`). The network is
  embedded as StableHLO (jax2tf) and the weights are tf.Variables.
  `tf.saved_model.load(OUTPUT).signatures['serving_default'](images=...)`.
- stablehlo: OUTPUT/model.jax_exported is `jax.export`'s serialisation (StableHLO with
  symbolic batch and size, weights embedded): `jax.export.deserialize(bytes).call(images)`
  returns (labels,) or (labels, probabilities). OUTPUT/signature.json describes it.
"""

import functools
import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from deeplab_jax import inference
from deeplab_jax import predict
from deeplab_jax import steps
from deeplab_jax.errors import UserError
from deeplab_jax.models import layers
from deeplab_jax.models import registry

FORMATS = ('savedmodel', 'stablehlo')
STABLEHLO_FILE = 'model.jax_exported'


def check_exportable(config) -> None:
  e = config.eval
  if e.mode != 'whole' or tuple(e.scales) != (1.0,) or e.input_scale != 1.0:
    raise UserError(f'export serves whole images at their own size: eval.mode={e.mode!r}, '
                    f'eval.scales={tuple(e.scales)}, eval.input_scale={e.input_scale} must be '
                    "'whole', (1.0,) and 1.0 (sizes are symbolic in the artifact).")
  if e.crf.enabled:
    logging.warning('eval.crf is enabled: the dense CRF runs on the host and is not exported; '
                    'the artifact returns the network\'s labels.')


def make_serving_fn(config, num_classes: int, probabilities: bool):
  """(variables, uint8 images [B, H, W, 3]) -> (int32 labels [B, H, W],) or (labels,
  float32 probabilities [B, H, W, K]); traceable with symbolic B, H and W."""
  model = inference.build_eval_model(config, num_classes)
  multiple = config.eval.output_stride or config.model.output_stride
  mean = np.asarray(config.data.mean, np.float32)
  std = np.asarray(config.data.std, np.float32)

  def serve(variables, images):
    h, w = images.shape[1], images.shape[2]
    x = (images.astype(jnp.float32) - mean) / std
    # Zeros (the mean colour after normalising) up to a multiple of the output stride.
    x = layers.pad_to_multiple(x, multiple)
    scores = inference.predict_scores(model, variables, x, config)[:, :h, :w]
    labels = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    if not probabilities:
      return (labels,)
    if inference.averages_probabilities(config.eval):
      return labels, jnp.exp(scores)  # the log of the passes' mean probability
    return labels, jax.nn.softmax(scores, axis=-1)
  return serve


def export_stablehlo(serve, variables, output: str, probabilities: bool) -> str:
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  images = jax.ShapeDtypeStruct((*jax_export.symbolic_shape('b, h, w'), 3), jnp.uint8)
  exported = jax_export.export(jax.jit(functools.partial(serve, variables)))(images)
  os.makedirs(output, exist_ok=True)
  path = os.path.join(output, STABLEHLO_FILE)
  with open(path, 'wb') as f:
    f.write(exported.serialize())
  outputs = ['labels int32 [b, h, w]'] + (['probabilities float32 [b, h, w, K]']
                                          if probabilities else [])
  with open(os.path.join(output, 'signature.json'), 'w') as f:
    json.dump({'inputs': ['images uint8 [b, h, w, 3]'], 'outputs': outputs,
               'load': 'jax.export.deserialize(open(path, "rb").read()).call(images)'}, f,
              indent=1)
  return path


def export_savedmodel(serve, variables, output: str, probabilities: bool) -> str:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  tf_fn = jax2tf.convert(serve, polymorphic_shapes=[None, '(b, h, w, 3)'], with_gradient=False)
  module = tf.Module()
  module.weights = tf.nest.map_structure(tf.Variable, jax.tree.map(np.asarray, variables))
  names = ('labels', 'probabilities') if probabilities else ('labels',)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name='images')],
               autograph=False)
  def serving_default(images):
    return dict(zip(names, tf_fn(module.weights, images)))

  module.serving_default = serving_default
  tf.saved_model.save(module, output, signatures={'serving_default': serving_default})
  return output


def export_model(config, workdir: str, fmt: str, output: str, probabilities: bool = False):
  """Exports the workdir's latest checkpoint; returns the artifact's path."""
  if fmt not in FORMATS:
    raise UserError(f'--format={fmt!r} is not one of {FORMATS}.')
  steps.validate_config(config)
  check_exportable(config)
  num_classes = len(predict.class_info(config.data)[0])
  step, variables = predict.load_latest(config, workdir, num_classes, what='export')
  variables = jax.device_get(variables)
  serve = make_serving_fn(config, num_classes, probabilities)
  writer = export_savedmodel if fmt == 'savedmodel' else export_stablehlo
  path = writer(serve, variables, output, probabilities)
  logging.info('Exported step %d of %s as %s%s: %s.', step, workdir, fmt,
               ' (its average of the weights)' if config.optim.ema_decay else '', path)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    export_model(FLAGS.config, FLAGS.workdir, FLAGS.format, FLAGS.output, FLAGS.probabilities)
  except UserError as e:
    sys.exit(f'error: {e}')


FLAGS = flags.FLAGS

if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'The training run\'s directory (latest checkpoint).')
  flags.DEFINE_enum('format', None, list(FORMATS), 'savedmodel or stablehlo.')
  flags.DEFINE_string('output', None, 'Where to write the artifact.')
  flags.DEFINE_bool('probabilities', False, 'Also return softmax probabilities.')
  flags.mark_flags_as_required(['config', 'workdir', 'format', 'output'])
  app.run(main)
