r"""What a config's model costs: parameters, multiply-adds, receptive field, ASPP taps.

  python -m deeplab_jax.summary --config=configs/v3plus_cityscapes.py --crop=513,513 [--json]
  python -m deeplab_jax.summary --table

`--table` prints README's model table: one Markdown row for each config of `TABLE_ROWS`, at
the config's own training crop (`config.data.crop_size`), without the receptive field.

Multiply-adds count every convolution (kernel taps x input channels per group x output
channels x output pixels) and transposed convolution (input pixels x taps x input x output
channels) of one image at inference, image pooling at its 1 x 1 size; the
bilinear resizes, BatchNorm and activations are not counted (the convention of the DeepLab
papers and model zoo). Parameters count trainable values (BatchNorm scale and offset, not
its running statistics), as torchvision's `parameters()` does.

The receptive field is measured, not derived: a copy of the network (8 channels per layer;
the field does not depend on width) with positive weights, max pooling replaced by average
pooling and ReLU6 by ReLU, so nothing cancels, is differentiated at the centre logit before
the final upsampling; the input rows with a non-zero gradient are the field. Image pooling
sees the whole image and is left out of this figure.

For each 3x3 ASPP branch: how many of its 9 taps land inside the feature map at this crop,
at the centre pixel and on average over all pixels (v3 paper, figure 4): at rates near the
feature size a 3x3 filter degenerates to its centre tap.
"""

import copy
import json
import math
import os
from typing import Any, Dict, Sequence, Tuple
from unittest import mock

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from deeplab_jax.errors import UserError
from deeplab_jax.models import fcn
from deeplab_jax.models import layers
from deeplab_jax.models import registry

FLAGS = flags.FLAGS
# The repository root: `TABLE_ROWS` name config files relative to it.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# README's model table: one row per system and variant, as `--config` names them.
TABLE_ROWS = (
    'configs/v1_voc.py',
    'configs/v2_voc.py',
    'configs/v3_voc.py',
    'configs/v3_voc.py:resnet50',
    'configs/v3_voc.py:cascade',
    'configs/v3_voc.py:context_module',
    'configs/v3_cityscapes.py',
    'configs/v3_torchvision.py:resnet50',
    'configs/v3_torchvision.py:resnet101',
    'configs/v3_torchvision.py:resnet50,aux,fcn',
    'configs/v3plus_voc.py',
    'configs/v3plus_voc.py:resnet101',
    'configs/v3plus_voc.py:xception71',
    'configs/v3plus_cityscapes.py',
    'configs/v3plus_ade20k.py',
    'configs/v3plus_mobilenet_voc.py',
    'configs/v3plus_mobilenet_voc.py:dm05',
    'configs/v3plus_camvid.py',
    'configs/v3plus_camvid.py:cpu',
    'configs/fcn_voc.py',
    'configs/fcn_voc.py:fcn16s',
    'configs/fcn_voc.py:fcn32s',
    'configs/unet_camvid.py',
    'configs/unet_camvid.py:same',
    'configs/unet_camvid.py:cpu',
    'configs/fc_densenet_camvid.py',
    'configs/fc_densenet_camvid.py:67',
    'configs/fc_densenet_camvid.py:56',
    'configs/fc_densenet_camvid.py:cpu',
    'configs/fastfcn_ade20k.py',
    'configs/fastfcn_ade20k.py:fcn',
    'configs/gscnn_cityscapes.py',
    'configs/gscnn_cityscapes.py:cpu',
    'configs/quickstart.py',
)
GSCNN_HEAD = 'gated shape stream + aspp with edge branch + decoder'
TABLE_COLUMNS = ('config', 'backbone', 'context', 'OS', 'crop', 'params', 'multiply-adds')


def define_flags():
  """The command line's flags (defined only when run as a program, so importing is free)."""
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_string('crop', '', 'H,W of the input; default: the config\'s crop size.')
  flags.DEFINE_bool('json', False, 'Print one JSON object.')
  flags.DEFINE_bool('table', False, 'Print the Markdown model table of TABLE_ROWS (README\'s); '
                    'takes no --config.')


def parse_crop(text: str) -> Tuple[int, int]:
  try:
    h, w = (int(v) for v in text.split(','))
  except ValueError:
    raise UserError(f'--crop={text!r} must be two integers H,W, like 513,513.') from None
  if h < 1 or w < 1:
    raise UserError(f'--crop={text!r} must be positive.')
  return h, w


def count_params(model, crop: Sequence[int]) -> int:
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *crop, 3)))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(variables['params'])))


def count_params_by_module(model, crop: Sequence[int]) -> Dict[str, int]:
  """Trainable parameters of each top-level module (backbone, jpu, aspp, decoder, ...)."""
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *crop, 3)))
  return {name: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
          for name, tree in variables['params'].items()}


def count_macs(model, crop: Sequence[int]) -> Tuple[int, Dict[str, int]]:
  """Multiply-adds of one inference forward pass, in total and by top-level module."""
  by_module: Dict[str, int] = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    macs = 0
    if isinstance(module, nn.Conv) and context.method_name == '__call__':
      cin = args[0].shape[-1]
      macs = (int(np.prod(out.shape[:-1])) * int(np.prod(module.kernel_size))
              * (cin // module.feature_group_count) * out.shape[-1])
    elif isinstance(module, nn.ConvTranspose) and context.method_name == '__call__':
      # Each input pixel scatters the whole kernel: input pixels x taps x in x out channels.
      cin = args[0].shape[-1]
      macs = (int(np.prod(args[0].shape[:-1])) * int(np.prod(module.kernel_size)) * cin
              * out.shape[-1])
    elif (isinstance(module, fcn.Upsample) and not module.learn
          and context.method_name == '__call__'):
      # FCN's frozen bilinear upsampling: a transposed conv with a constant kernel.
      macs = int(np.prod(args[0].shape[:-1])) * (2 * module.factor) ** 2 * out.shape[-1] ** 2
    if macs:
      top = module.scope.path[0] if module.scope.path else '?'
      by_module[top] = by_module.get(top, 0) + macs
    return out

  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *crop, 3)))
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, *crop, 3))), variables)
  return sum(by_module.values()), by_module


def _positive_variables(variables):
  """Weights that average (kernel 1 / fan-in), BatchNorm as identity, biases 0, in float64."""
  def fill(path, x):
    name = path[-1].key
    if name == 'kernel':
      return jnp.full(x.shape, 1.0 / np.prod(x.shape[:-1]), jnp.float64)
    if name in ('scale', 'var'):
      return jnp.ones(x.shape, jnp.float64)
    return jnp.zeros(x.shape, jnp.float64)
  return jax.tree_util.tree_map_with_path(fill, variables)


def receptive_field(model_config, max_size: int = 65537) -> Tuple[int, bool]:
  """Measured receptive field (input rows) of the centre logit; see the module docstring.

  The field is measured along the height of a tall, narrow input (64 columns): a filter's
  rows are reachable through its centre column alone, so the row span is the square field's
  side, and a tall input is cheap. The height doubles until the measured span stays the same
  and clear of the border: taps that fall into the zero padding carry nothing, so a too-small
  input gives a too-small field without touching the border.
  Returns (field, lower_bound): lower_bound is True when the field still grew at `max_size`.
  """
  c = copy.deepcopy(model_config)
  c.width_multiplier = 1e-3  # every layer at the 8-channel minimum
  c.aspp.image_pooling = False
  c.input_scales = (1.0,)
  c.aux_head.endpoint = ''
  c.dtype = 'float32'
  model = registry.build_model(c, num_classes=1).clone(dtype=jnp.float64)
  logits_module = 'aspp_l' if c.context == 'aspp_l' else 'classifier'

  def measure(height, width=64):
    x0 = jnp.ones((1, height, width, 3), jnp.float64)
    variables = _positive_variables(
        jax.eval_shape(model.init, jax.random.key(0), x0.astype(jnp.float32)))

    def centre_logit(x, variables):
      _, state = model.apply(variables, x, capture_intermediates=(
          lambda m, method: m.name == logits_module and method == '__call__'),
          mutable=['intermediates'])
      logits = state['intermediates'][logits_module]['__call__'][0]
      h, w = logits.shape[1:3]
      return logits[0, h // 2, w // 2, 0]

    # The weights go in as arguments: as constants XLA would fold the whole backward pass.
    grad = jax.jit(jax.grad(centre_logit))(x0, variables)
    rows = np.nonzero(np.asarray(jnp.any(grad[0] != 0, axis=(1, 2))))[0]
    return int(rows[-1] - rows[0] + 1), bool(rows[0] == 0 or rows[-1] == height - 1)

  with jax.enable_x64(True), \
      mock.patch.object(layers, 'max_pool', nn.avg_pool), mock.patch.object(nn, 'relu6', nn.relu):
    size, previous = 257, None
    while True:
      field, touches = measure(size)
      if not touches and field == previous:
        return field, False
      if size >= max_size:
        return field, True
      previous = None if touches else field
      size = 2 * size - 1


def aspp_taps(feature_size: Sequence[int], rate: int) -> Dict[str, float]:
  """Taps of a 3x3 filter at `rate` that land inside an h x w map (zero padding outside)."""
  def per_axis(n):
    pos = np.arange(n)
    return sum(((pos + o >= 0) & (pos + o < n)).astype(float) for o in (-rate, 0, rate))
  counts = [per_axis(n) for n in feature_size]
  centre = counts[0][feature_size[0] // 2] * counts[1][feature_size[1] // 2]
  return {'rate': rate, 'centre_taps': int(centre),
          'mean_taps': round(float(counts[0].mean() * counts[1].mean()), 3)}


def feature_size(crop: Sequence[int], output_stride: int) -> Tuple[int, int]:
  """SAME-padded stride-2 convs round up: 513 at OS16 -> 33."""
  return tuple(math.ceil(s / output_stride) for s in crop)


def summarize(config, crop=None, with_receptive_field: bool = True) -> Dict[str, Any]:
  # Imported here: the counts alone (benchmarks/jpu.py on an accelerator image) need no TFDS.
  from deeplab_jax import data  # pylint: disable=g-import-not-at-top
  num_classes = data.num_classes(config.data)
  crop = tuple(crop or config.data.crop_size)
  model = registry.build_model(config.model, num_classes)
  macs, by_module = count_macs(model, crop)
  m = config.model
  whole = m.name in registry.WHOLE_MODELS  # one network: no backbone or context module
  result = {
      'model': m.name, 'backbone': None if whole else m.backbone.name,
      # Gated-SCNN has its own head (its ASPP reads model.aspp), whatever model.context says.
      'context': None if whole else GSCNN_HEAD if m.name == 'gscnn' else m.context,
      'output_stride': m.output_stride, 'crop': list(crop), 'num_classes': num_classes,
      'params': count_params(model, crop), 'params_by_module': count_params_by_module(model, crop),
      'macs': macs, 'macs_by_module': by_module,
  }
  if not whole and m.context in ('aspp', 'aspp_l'):
    fs = feature_size(crop, 8 if m.neck == 'jpu' else m.output_stride)  # JPU upsamples to 8
    result['aspp_feature_size'] = list(fs)
    result['aspp_taps'] = [aspp_taps(fs, r) for r in m.aspp.atrous_rates]
  if with_receptive_field:
    rf, lower_bound = receptive_field(m)
    result['receptive_field'] = rf
    result['receptive_field_is_lower_bound'] = lower_bound
  return result


def format_text(r: Dict[str, Any]) -> str:
  name = (r['model'] if r['backbone'] is None
          else f"{r['model']} / {r['backbone']} / context {r['context']}")
  lines = [f"{name}, OS{r['output_stride']}, "
           f"{r['num_classes']} classes, input {r['crop'][0]} x {r['crop'][1]}",
           f"  parameters       {r['params']:,}  (" + ', '.join(
               f'{k} {v:,}' for k, v in r['params_by_module'].items()) + ')',
           f"  multiply-adds    {r['macs'] / 1e9:.2f} B  (" + ', '.join(
               f'{k} {v / 1e9:.2f} B' for k, v in r['macs_by_module'].items()) + ')']
  if 'receptive_field' in r:
    at_least = 'at least ' if r['receptive_field_is_lower_bound'] else ''
    lines.append(f"  receptive field  {at_least}{r['receptive_field']} px (image pooling: all)")
  if 'aspp_taps' in r:
    h, w = r['aspp_feature_size']
    lines.append(f'  ASPP 3x3 taps inside the {h} x {w} feature map (of 9):')
    for t in r['aspp_taps']:
      lines.append(f"    rate {t['rate']:>3}: centre {t['centre_taps']}, mean {t['mean_taps']}")
  return '\n'.join(lines)


def load_config(spec: str, root: str = ROOT):
  """The config that `--config=spec` gives (`path[:variant]`, path relative to `root`).

  Read by ml_collections' config_flags, as `--config` is: the file is loaded by its path and
  its `get_config(variant)` called. The file's own imports (`from configs import common`)
  need the repository root on `sys.path`, as `python -m` from the root gives.
  """
  path, colon, variant = spec.partition(':')
  full = os.path.join(root, path)
  if not os.path.isfile(full):
    raise UserError(f'config file {full!r} not found (from {spec!r}).')
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=flag_values, lock_config=False)
  flag_values(['summary', f'--config={full}{colon}{variant}'])
  return flag_values.config


def _one_decimal(value: float) -> str:
  """41.1 for 41,054,899 / 1e6; two significant digits below 1 (0.079), where 0.1 says little."""
  return f'{value:.1f}' if value >= 1 else f'{value:.2g}'


def table_row(spec: str, root: str = ROOT) -> Dict[str, str]:
  """One row of the model table (a cell per TABLE_COLUMNS) at the config's training crop.

  The backbone cell adds units per block where a config sets them and the channel multiplier
  where it is not 1; the context cell names a cascade (extra copies of block4), the v3+
  decoder, an auxiliary head and the input scales of a multi-scale model.
  """
  config = load_config(spec, root)
  r = summarize(config, with_receptive_field=False)
  m = config.model
  if r['backbone'] is None:  # a whole model (FCN, U-Net, FC-DenseNet) describes itself
    return _row(spec, r, *registry.WHOLE_MODELS[m.name].describe(m))
  heads = [f'cascade (blocks 5-{4 + m.backbone.extra_blocks})'] if m.backbone.extra_blocks else []
  if m.neck != 'none':
    heads.append(m.neck.upper())
  if r['context'] != 'none' or not heads:
    heads.append(r['context'])
  if r['model'] == 'deeplabv3plus':
    heads.append('decoder')
  if m.aux_head.endpoint:
    heads.append('aux')
  if len(m.input_scales) > 1:  # v2: the network runs on each scale (multiply-adds count all)
    heads.append(f'{len(m.input_scales)} scales')
  backbone = r['backbone']
  if m.backbone.units:
    backbone += f" ({'-'.join(str(u) for u in m.backbone.units)} units)"
  width = m.width_multiplier
  if r['backbone'] == 'mobilenetv2':
    width *= m.backbone.depth_multiplier
  if width != 1:
    backbone += f' x{width:g}'
  return _row(spec, r, backbone, ' + '.join(heads))


def _row(spec: str, r: Dict[str, Any], backbone: str, context: str) -> Dict[str, str]:
  return {'config': f'`{spec}`', 'backbone': backbone, 'context': context,
          'OS': str(r['output_stride']), 'crop': f"{r['crop'][0]} x {r['crop'][1]}",
          'params': f"{_one_decimal(r['params'] / 1e6)} M",
          'multiply-adds': f"{_one_decimal(r['macs'] / 1e9)} B"}


def format_table(rows: Sequence[Dict[str, str]]) -> str:
  lines = ['| ' + ' | '.join(TABLE_COLUMNS) + ' |',
           '|' + '|'.join('---:' if c in ('OS', 'params', 'multiply-adds') else '---'
                          for c in TABLE_COLUMNS) + '|']
  lines += ['| ' + ' | '.join(row[c] for c in TABLE_COLUMNS) + ' |' for row in rows]
  return '\n'.join(lines)


def main(argv):
  del argv
  config = FLAGS.config
  try:
    if FLAGS.table:
      if config is not None or FLAGS.crop or FLAGS.json:
        raise UserError('--table prints TABLE_ROWS at each config\'s own crop as Markdown; '
                        'it takes no --config, --crop or --json.')
      print(format_table([table_row(spec) for spec in TABLE_ROWS]))
      return
    if config is None:
      raise UserError('give --config=configs/NAME.py[:variant] (one model), or --table '
                      '(the model table of README).')
    crop = parse_crop(FLAGS.crop) if FLAGS.crop else None
    result = summarize(config, crop)
  except UserError as e:
    raise SystemExit(f'error: {e}')
  print(json.dumps(result) if FLAGS.json else format_text(result))


if __name__ == '__main__':
  jax.config.update('jax_platforms', 'cpu')
  define_flags()
  app.run(main)
