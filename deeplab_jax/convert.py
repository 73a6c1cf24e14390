r"""Converts pretrained weights into variables a run starts from (`config.init_from=DIR`).

  python -m deeplab_jax.convert --source=torchvision --input=deeplabv3_resnet50.pth \
      --config=configs/v3_torchvision.py:resnet50,aux --output=/tmp/tv_v3
  python -m deeplab_jax.main --config=configs/v3_torchvision.py:resnet50,aux \
      --config.init_from=/tmp/tv_v3 --workdir=/tmp/run ...

torchvision: ImageNet VGG-16 (convolutionalised into FCN's trunk, configs/fcn_voc.py, or
decimated into DeepLab-LargeFOV's, configs/v1_voc.py: from_torchvision_vgg16), ImageNet
ResNet-50/101 state dicts (the backbone; `fc` is dropped) and the full
`deeplabv3_resnet50/101` and `fcn_resnet50/101` models (backbone, DeepLabHead or FCNHead,
optional aux_classifier). Build the config in torchvision's layout (`configs/v3_torchvision.py`,
`:fcn` for FCN; for a backbone alone, any config with `model.backbone.layout='torchvision'`).
`.pth` files are read with `torch.load(weights_only=True)` (tensors only, no arbitrary
unpickling; needs torch), `.safetensors` files with the `safetensors` package (no torch).

tf: checkpoints of the public DeepLab code and TF-slim, read with `tf.train.load_checkpoint`
by their variable names (an ImageNet backbone's `logits`, `global_step` and optimizer slots
are dropped): the model zoo's DeepLabv3+ Xception-65 models (VOC, Cityscapes, ADE20K) and its
ImageNet Xception-65 and `resnet_v1_101_beta`, slim's `resnet_v1_50/101`, and the DeepLabv3+
checkpoints the DeepLab code writes for `resnet_v1_101_beta` (plain or separable ASPP and
decoder: configs/v3plus_voc.py:resnet101,tf_zoo, with model.aspp.separable and
model.decoder.separable as trained). Build the config in the TF code's form: the `tf_zoo`
variant of configs/v3plus_*.py (`common.use_tf_zoo`: pre-activation Xception modules,
corner-aligned resizes, inputs scaled to [-1, 1]); a ResNet needs
`model.backbone.layout='tfslim'` (and `beta_stem` for beta checkpoints), whose v3+ decoder
reads block1's unit-2 conv3 before the shortcut add, as the TF code does. The
zoo's ADE20K model has 151 outputs, the first for the ignored 'other': `--drop_first_class`
leaves our 150. MobileNet checkpoints are not converted (docs/tf_zoo_notes.md).

Every source tensor must land on a parameter of the config's model with the same shape, or
the conversion stops and names it; parameters the source lacks (the head, for an ImageNet
backbone) are listed as fresh: `init_from` initialises them. DIR gets `variables/` (an orbax
checkpoint of params and batch_stats) and `conversion.json`.

`--dump_logits=IN.npy:OUT.npy` runs the converted model on IN.npy (float NCHW, normalised as
the source expects) and writes its NCHW logits at input size to OUT.npy, to compare with the
source framework's own output.
"""

import os
import re
import sys
from typing import Dict, Iterable, Tuple

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from deeplab_jax import data
from deeplab_jax import pretrained
from deeplab_jax.errors import UserError
from deeplab_jax.models import registry

SOURCES = ('torchvision', 'tf')
# The ResNet layout each source's weights were trained in (the strides' places differ).
LAYOUTS = {'torchvision': 'torchvision', 'tf': 'tfslim'}


def read_torch_state_dict(path: str) -> Dict[str, np.ndarray]:
  """name -> float32/int numpy array from a .pth/.pt (weights_only) or .safetensors file."""
  if not os.path.isfile(path):
    raise UserError(f'--input={path!r} is not a file.')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return dict(load_file(path))
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(f'--input={path!r}: reading .pth needs torch (pip install torch), or save '
                    'the state dict as .safetensors.') from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'--input={path!r} is not a tensors-only PyTorch file '
                    f'(torch.load(weights_only=True) refused it: {e}).') from e
  if isinstance(state, dict) and 'model' in state and isinstance(state['model'], dict):
    state = state['model']  # torchvision's reference scripts save {'model': ..., ...}
  if not isinstance(state, dict):
    raise UserError(f'--input={path!r} holds a {type(state).__name__}, not a state dict.')
  return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, 'detach')}


# (pattern over a torchvision module name, our module path as a format string of the groups).
_TORCHVISION_RULES = [
    (r'(?:backbone\.)?conv1', 'backbone/stem_conv1/conv'),
    (r'(?:backbone\.)?bn1', 'backbone/stem_conv1/bn'),
    (r'(?:backbone\.)?layer(\d)\.(\d+)\.conv(\d)', 'backbone/block{0}_unit{1+}/conv{2}/conv'),
    (r'(?:backbone\.)?layer(\d)\.(\d+)\.bn(\d)', 'backbone/block{0}_unit{1+}/conv{2}/bn'),
    (r'(?:backbone\.)?layer(\d)\.(\d+)\.downsample\.0', 'backbone/block{0}_unit{1+}/shortcut/conv'),
    (r'(?:backbone\.)?layer(\d)\.(\d+)\.downsample\.1', 'backbone/block{0}_unit{1+}/shortcut/bn'),
    (r'classifier\.0\.convs\.0\.0', 'aspp/conv1x1/conv'),
    (r'classifier\.0\.convs\.0\.1', 'aspp/conv1x1/bn'),
    (r'classifier\.0\.project\.0', 'aspp/projection/conv'),
    (r'classifier\.0\.project\.1', 'aspp/projection/bn'),
    (r'classifier\.4', 'classifier'),
    (r'aux_classifier\.0', 'aux_head/conv/conv'),
    (r'aux_classifier\.1', 'aux_head/conv/bn'),
    (r'aux_classifier\.4', 'aux_head/classifier'),
]
# The head's first layers: DeepLabHead (ASPP, then a 3x3 conv + BN) or FCNHead (3x3 conv + BN,
# our context module with one rate-1 layer: configs/v3_torchvision.py:fcn).
_DEEPLAB_HEAD = [(r'classifier\.1', 'aspp/output_conv/conv'),
                 (r'classifier\.2', 'aspp/output_conv/bn')]
_FCN_HEAD = [(r'classifier\.0', 'context_module/conv1/conv'),
             (r'classifier\.1', 'context_module/conv1/bn')]
_DROPPED = re.compile(r'^fc\.(weight|bias)$')  # the ImageNet classifier of a backbone


def _aspp_branch(module: str, pooling_index: int):
  """torchvision's ASPP branches 1..n (conv, bn) and the pooling branch (pool, conv, bn)."""
  m = re.fullmatch(r'classifier\.0\.convs\.(\d+)\.(\d)', module)
  if not m or m.group(1) == '0':
    return None
  i, sub = int(m.group(1)), int(m.group(2))
  if i == pooling_index:
    return {1: 'aspp/image_pooling/conv', 2: 'aspp/image_pooling/bn'}.get(sub)
  return {0: f'aspp/atrous{i}/conv', 1: f'aspp/atrous{i}/bn'}.get(sub)


def torchvision_module(module: str, pooling_index: int):
  """Our module path for a torchvision module name, or None. pooling_index: the index of
  DeepLabHead's ASPP pooling branch, or -1 for an FCN head (or none)."""
  found = _aspp_branch(module, pooling_index)
  if found:
    return found
  head = _DEEPLAB_HEAD if pooling_index >= 0 else _FCN_HEAD
  for pattern, target in _TORCHVISION_RULES + head:
    m = re.fullmatch(pattern, module)
    if m:
      groups = m.groups()
      return re.sub(r'\{(\d)(\+?)\}',
                    lambda g: str(int(groups[int(g.group(1))]) + (1 if g.group(2) else 0)),
                    target)
  return None


def from_torchvision(state: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], dict, list]:
  """torchvision state dict -> ({'params/...' or 'batch_stats/...': array}, {that key: the
  source tensor's name}, dropped names)."""
  pools = [int(m.group(1)) for k in state
           for m in [re.match(r'classifier\.0\.convs\.(\d+)\.', k)] if m]
  pooling_index = max(pools) if pools else -1
  out, origin, dropped = {}, {}, []
  for name, value in state.items():
    module, _, leaf = name.rpartition('.')
    if leaf == 'num_batches_tracked':
      continue
    if _DROPPED.match(name):
      dropped.append(name)
      continue
    target = torchvision_module(module, pooling_index)
    if target is None:
      raise UserError(f'torchvision tensor {name!r} {tuple(value.shape)} has no counterpart in '
                      'deeplab_jax (ResNet backbones, DeepLabHead, FCNHead and the aux head '
                      'convert).')
    value = np.asarray(value, np.float32)
    if target.endswith('/bn'):
      key = {'weight': 'params/{}/scale', 'bias': 'params/{}/bias',
             'running_mean': 'batch_stats/{}/mean', 'running_var': 'batch_stats/{}/var'}.get(leaf)
    else:
      key = {'weight': 'params/{}/kernel', 'bias': 'params/{}/bias'}.get(leaf)
    if key is None:
      raise UserError(f'torchvision tensor {name!r}: {leaf!r} is not a tensor of its module.')
    if leaf == 'weight' and not target.endswith('/bn'):
      if value.ndim != 4:
        raise UserError(f'torchvision tensor {name!r} has shape {value.shape}; a conv weight '
                        'is [out, in, kh, kw].')
      value = value.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]
    out[key.format(target)] = value
    origin[key.format(target)] = name
  return out, origin, dropped


# torchvision's vgg16 `features` indices of the thirteen convs, in our names.
_VGG_CONVS = dict(zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
                      [f'conv{g + 1}_{i + 1}' for g, n in enumerate((2, 2, 3, 3, 3))
                       for i in range(n)]))
VGG_TARGETS = ('fcn', 'largefov')


def is_torchvision_vgg16(state: Dict[str, np.ndarray]) -> bool:
  return 'features.0.weight' in state and 'classifier.0.weight' in state


def from_torchvision_vgg16(state: Dict[str, np.ndarray],
                           target: str) -> Tuple[Dict[str, np.ndarray], dict, list]:
  """torchvision's ImageNet vgg16 -> FCN's or DeepLab-LargeFOV's convolutionalised VGG-16.

  fc6 (a Linear over the flattened 512 x 7 x 7 pool5, in torch's channel, row, column order)
  becomes a 7x7 conv and fc7 a 1x1 conv (FCN). For LargeFOV (`largefov`: the backbone of
  configs/v1_voc.py) both are decimated as the v1 paper describes (section 4.1: fc6 subsampled
  to 3 x 3 and both layers to 1024 channels): every 4th output channel from the first, every 3rd
  tap of fc6 (rows and columns 0, 3, 6) and every 4th input channel of fc7; the rule of the
  SSD VGG-16 conversion, which follows DeepLab's. fc8 (ImageNet's classes) is dropped.
  """
  if target not in VGG_TARGETS:
    raise UserError(f'VGG-16 converts into {VGG_TARGETS}, not {target!r}.')
  prefix = 'backbone/' if target == 'largefov' else ''
  out, origin, dropped = {}, {}, []
  for name, value in state.items():
    value = np.asarray(value, np.float32)
    module, _, leaf = name.rpartition('.')
    m = re.fullmatch(r'features\.(\d+)', module)
    if m and int(m.group(1)) in _VGG_CONVS and leaf in ('weight', 'bias'):
      ours = prefix + _VGG_CONVS[int(m.group(1))]
      if leaf == 'weight':
        value = value.transpose(2, 3, 1, 0)
    elif module in ('classifier.0', 'classifier.3') and leaf in ('weight', 'bias'):
      ours = prefix + ('fc6' if module == 'classifier.0' else 'fc7')
      if leaf == 'weight':
        out_channels, fan_in = value.shape
        if module == 'classifier.0':
          if fan_in % 49:
            raise UserError(f'torchvision tensor {name!r} {value.shape}: fc6 reads a 7 x 7 '
                            'pool5, so its inputs must be a multiple of 49.')
          value = value.reshape(out_channels, fan_in // 49, 7, 7)
        else:
          value = value.reshape(out_channels, fan_in, 1, 1)
        if target == 'largefov':
          value = value[::4, :, ::3, ::3] if module == 'classifier.0' else value[::4, ::4]
        value = value.transpose(2, 3, 1, 0)
      elif target == 'largefov':
        value = value[::4]
    elif module == 'classifier.6':
      dropped.append(name)
      continue
    else:
      raise UserError(f'torchvision tensor {name!r} {tuple(value.shape)} is not part of '
                      'torchvision\'s vgg16 (features, classifier).')
    key = f"params/{ours}/{'kernel' if leaf == 'weight' else 'bias'}"
    out[key], origin[key] = value, name
  return out, origin, dropped


def read_tf_checkpoint(path: str) -> Dict[str, np.ndarray]:
  """name -> array of every variable in a TF (slim) checkpoint: a prefix or its folder."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  prefix = path
  if os.path.isdir(path):  # its `checkpoint` file's latest, or its only checkpoint
    indexes = tf.io.gfile.glob(os.path.join(path, '*.index'))
    prefix = tf.train.latest_checkpoint(path) or (indexes[0][:-len('.index')]
                                                  if len(indexes) == 1 else '')
  if not prefix or not tf.io.gfile.exists(prefix + '.index'):
    raise UserError(f'--input={path!r} is not a TF checkpoint (a prefix with a .index file, '
                    'or a folder holding one).')
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


# Training state and classifiers that are not part of the network we build.
_TF_DROPPED = re.compile(r'^global_step$|/Momentum$|/ExponentialMovingAverage$|'
                         r'^(resnet_v1_\d+|xception_\d+)/logits/(weights|biases)$')
# (pattern over a TF module path, its kind, our module path as a format string of the groups).
# Kinds: 'conv' (slim conv + BatchNorm: our ConvBN), 'depthwise' and 'pointwise' (the two
# halves of a slim separable conv: our SeparableConvBN), 'logits' (conv + biases).
_X = r'xception_\d+/'
_XM = r'/unit_1/xception_module/'
_TF_MODULES = [
    (r'resnet_v1_\d+/conv1', 'conv', 'backbone/stem_conv1'),
    (r'resnet_v1_\d+/conv1_(\d)', 'conv', 'backbone/stem_conv{0}'),
    (r'resnet_v1_\d+/block(\d)/unit_(\d+)/bottleneck_v1/(conv\d|shortcut)', 'conv',
     'backbone/block{0}_unit{1}/{2}'),
    (_X + r'entry_flow/conv1_(\d)', 'conv', 'backbone/entry_conv{0}'),
    (_X + r'entry_flow/block(\d+)' + _XM + r'shortcut', 'conv', 'backbone/entry_block{0}/shortcut'),
    (_X + r'entry_flow/block(\d+)' + _XM + r'separable_conv(\d)_(depthwise|pointwise)', '{2}',
     'backbone/entry_block{0}/sepconv{1}'),
    (_X + r'middle_flow/block1/unit_(\d+)/xception_module/separable_conv(\d)_(depthwise|pointwise)',
     '{2}', 'backbone/middle_unit{0}/sepconv{1}'),
    (_X + r'exit_flow/block(\d)' + _XM + r'shortcut', 'conv', 'backbone/exit_block{0}/shortcut'),
    (_X + r'exit_flow/block(\d)' + _XM + r'separable_conv(\d)_(depthwise|pointwise)', '{2}',
     'backbone/exit_block{0}/sepconv{1}'),
    # The DeepLab head sits at the root scope (docs/tf_zoo_notes.md).
    (r'image_pooling', 'conv', 'aspp/image_pooling'),
    (r'aspp0', 'conv', 'aspp/conv1x1'),
    (r'aspp(\d)', 'conv', 'aspp/atrous{0}'),
    (r'aspp(\d)_(depthwise|pointwise)', '{1}', 'aspp/atrous{0}'),
    (r'concat_projection', 'conv', 'aspp/projection'),
    (r'decoder/feature_projection0', 'conv', 'decoder/low_level_projection'),
    # The plain decoder's two 3x3 convs come from slim.repeat(..., 2, scope='decoder_conv0'),
    # which names them decoder_conv0/decoder_conv0_1 and _2; the separable ones are split.
    (r'decoder/decoder_conv0/decoder_conv0_([12])', 'conv', 'decoder/conv{0}'),
    (r'decoder/decoder_conv([01])_(depthwise|pointwise)', '{1}', 'decoder/conv{0+}'),
    (r'logits/semantic', 'logits', 'classifier'),
]
_BN = {'BatchNorm/gamma': 'params/{}/scale', 'BatchNorm/beta': 'params/{}/bias',
       'BatchNorm/moving_mean': 'batch_stats/{}/mean',
       'BatchNorm/moving_variance': 'batch_stats/{}/var'}
# Per kind: TF leaf -> our variable (of the module path), and the BatchNorm's sub-module.
_TF_LEAVES = {
    'conv': ({'weights': 'params/{}/conv/kernel'}, 'bn'),
    'depthwise': ({'depthwise_weights': 'params/{}/depthwise/kernel'}, 'depthwise_bn'),
    'pointwise': ({'weights': 'params/{}/pointwise/kernel'}, 'pointwise_bn'),
    'logits': ({'weights': 'params/{}/kernel', 'biases': 'params/{}/bias'}, None),
}


def _fill(template: str, groups) -> str:
  """'{0}' -> group 0; '{0+}' -> group 0 plus one (TF counts some modules from 0)."""
  return re.sub(r'\{(\d)(\+?)\}', lambda g: (str(int(groups[int(g.group(1))]) + 1)
                                             if g.group(2) else groups[int(g.group(1))]),
                template)


def tf_variable(name: str):
  """Our 'params/...' or 'batch_stats/...' key for a TF variable name, or None."""
  for leaf in ('depthwise_weights', 'weights', 'biases', *_BN):
    if not name.endswith('/' + leaf):
      continue
    module = name[:-len(leaf) - 1]
    for pattern, kind, path in _TF_MODULES:
      m = re.fullmatch(pattern, module)
      if not m:
        continue
      kind, path = _fill(kind, m.groups()), _fill(path, m.groups())
      leaves, bn = _TF_LEAVES[kind]
      if leaf in leaves:
        return leaves[leaf].format(path)
      if bn and leaf in _BN:
        return _BN[leaf].format(path + '/' + bn)
      return None
    return None
  return None


def from_tf(state: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], dict, list]:
  """TF-slim / DeepLab checkpoint -> (variables by our path, origin, dropped).

  Backbones: ResNet v1 and v1 beta, Xception-65/71 (build the config with
  `common.use_tf_zoo`: the TF Xception's pre-activation modules). Heads: DeepLab's ASPP (plain
  or separable, with image pooling), v3+ decoder (plain or separable) and `logits/semantic`.
  TF concatenates the ASPP branches as [image pooling, 1x1, atrous...]; we put image pooling
  last, so the projection's input rows are rotated to match."""
  out, origin, dropped = {}, {}, []
  for name, value in state.items():
    if _TF_DROPPED.search(name):
      dropped.append(name)
      continue
    target = tf_variable(name)
    if target is None:
      raise UserError(f'TF variable {name!r} {tuple(np.shape(value))} has no counterpart: '
                      '--source=tf converts TF-slim ResNet v1 / v1 beta and the DeepLab '
                      'code\'s Xception backbones, ASPP, decoder and logits '
                      '(docs/tf_zoo_notes.md).')
    value = np.asarray(value, np.float32)
    if target.endswith('/depthwise/kernel'):
      if value.ndim != 4 or value.shape[3] != 1:
        raise UserError(f'TF variable {name!r} has shape {value.shape}; a depthwise kernel '
                        'with depth multiplier 1 is [kh, kw, channels, 1].')
      value = value.transpose(0, 1, 3, 2)  # [kh, kw, C, 1] -> flax's grouped [kh, kw, 1, C]
    out[target] = value
    origin[target] = name
  projection = 'params/aspp/projection/conv/kernel'
  pooling = 'params/aspp/image_pooling/conv/kernel'
  if projection in out and pooling in out:
    depth = out[pooling].shape[-1]
    k = out[projection]
    out[projection] = np.concatenate([k[:, :, depth:], k[:, :, :depth]], axis=2)
  return out, origin, dropped


def model_and_shapes(config, num_classes: int):
  model = registry.build_model(config.model, num_classes)
  h, w = config.data.crop_size
  shapes = jax.eval_shape(lambda: model.init({'params': jax.random.key(0),
                                               'dropout': jax.random.key(0)},
                                              jnp.zeros((1, h, w, 3)), train=False))
  return model, shapes


def place(converted: Dict[str, np.ndarray], origin: Dict[str, str], shapes) -> Tuple[dict, list]:
  """Checks every converted tensor against the model's shapes; returns (variables, fresh)."""
  want = {}
  for collection in ('params', 'batch_stats'):
    for path, leaf in flax.traverse_util.flatten_dict(
        flax.core.unfreeze(shapes.get(collection, {}))).items():
      want['/'.join((collection,) + path)] = leaf
  for name, value in converted.items():
    if name not in want:
      raise UserError(f'{origin[name]} -> {name} {value.shape} is not a parameter of the '
                      'config\'s model: build the config in the source\'s layout and depth '
                      '(e.g. configs/v3_torchvision.py, model.backbone.layout=torchvision).')
    if tuple(want[name].shape) != value.shape:
      raise UserError(f'{origin[name]} -> {name} has shape {value.shape} but the config\'s '
                      f'model has {tuple(want[name].shape)}.')
  fresh = sorted(set(want) - set(converted))
  variables = {}
  for collection in ('params', 'batch_stats'):
    prefix = collection + '/'
    variables[collection] = flax.traverse_util.unflatten_dict(
        {tuple(k[len(prefix):].split('/')): v for k, v in converted.items()
         if k.startswith(prefix)})
  return variables, fresh


def dump_logits(model, variables, shapes, spec: str) -> None:
  """Runs the model on IN.npy (NCHW) and saves NCHW logits to OUT.npy (fresh leaves: zeros)."""
  if spec.count(':') != 1:
    raise UserError(f'--dump_logits={spec!r} must be IN.npy:OUT.npy.')
  src, dst = spec.split(':')
  x = np.load(src)
  if x.ndim != 4 or x.shape[1] != 3:
    raise UserError(f'--dump_logits: {src} has shape {x.shape}; expected float NCHW with 3 '
                    'channels.')
  full = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), flax.core.unfreeze(shapes))
  for collection in ('params', 'batch_stats'):
    flat = flax.traverse_util.flatten_dict(full.get(collection, {}))
    flat.update(flax.traverse_util.flatten_dict(variables.get(collection, {})))
    full[collection] = flax.traverse_util.unflatten_dict(flat)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      full, jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32))
  np.save(dst, np.asarray(logits).transpose(0, 3, 1, 2))
  logging.info('Logits %s -> %s.', np.asarray(logits).shape, dst)


def convert(source: str, input_path: str, config, output: str, num_classes: int = 0,
            dump: str = '', drop_first_class: bool = False) -> dict:
  """The whole conversion; returns what it wrote to OUTPUT/conversion.json."""
  if source not in SOURCES:
    raise UserError(f'--source={source!r} is not one of {SOURCES}.')
  backbone = config.model.backbone
  whole = config.model.name in registry.WHOLE_MODELS  # no backbone field applies
  if not whole and backbone.name.startswith('resnet') and backbone.layout != LAYOUTS[source]:
    raise UserError(f'--source={source} weights need model.backbone.layout='
                    f'{LAYOUTS[source]!r} (where {source} puts the strides), not '
                    f'{backbone.layout!r}.')
  if source == 'tf' and backbone.name.startswith('xception') and not backbone.preactivation:
    raise UserError('--source=tf Xception weights need model.backbone.preactivation=True (the '
                    'TF code\'s modules; the tf_zoo config variant sets it): the same shapes '
                    'in the paper\'s form would be a different network.')
  if source == 'tf' and not config.model.align_corners:
    logging.warning('model.align_corners=False: the TF DeepLab code resizes with '
                    'align_corners=True (the tf_zoo config variant sets it).')
  if source == 'tf':
    converted, origin, dropped = from_tf(read_tf_checkpoint(input_path))
  else:
    state = read_torch_state_dict(input_path)
    if is_torchvision_vgg16(state):
      if config.model.name != 'fcn' and config.model.backbone.name != 'vgg16':
        raise UserError('torchvision vgg16 converts into an FCN (configs/fcn_voc.py) or a '
                        'VGG-16 backbone (configs/v1_voc.py), not model.name='
                        f'{config.model.name!r} on {config.model.backbone.name!r}.')
      converted, origin, dropped = from_torchvision_vgg16(
          state, 'fcn' if config.model.name == 'fcn' else 'largefov')
    else:
      converted, origin, dropped = from_torchvision(state)
  if drop_first_class:
    for key in ('params/classifier/kernel', 'params/classifier/bias'):
      if key not in converted:
        raise UserError('--drop_first_class: the source has no classifier.')
      converted[key] = converted[key][..., 1:]
  classes = converted.get('params/classifier/bias')
  if classes is not None:
    num_classes = num_classes or classes.shape[0]
  if not num_classes:
    spec = data.DATASETS.get(config.data.name)
    num_classes = spec.num_classes if spec else 0
  if not num_classes:
    raise UserError('--num_classes is needed: the source has no classifier and the config\'s '
                    f'data set {config.data.name!r} does not fix a class count.')
  model, shapes = model_and_shapes(config, num_classes)
  variables, fresh = place(converted, origin, shapes)
  info = {'source': source, 'input': os.path.abspath(input_path), 'num_classes': num_classes,
          'drop_first_class': drop_first_class,
          'converted': len(converted), 'dropped': dropped, 'fresh': fresh}
  pretrained.save_variables(output, variables, info)
  logging.info('Converted %d tensors into %s (dropped %s; %d parameters left fresh).',
               len(converted), output, dropped or 'none', len(fresh))
  if dump:
    dump_logits(model, variables, shapes, dump)
  return info


def main(argv: Iterable[str]):
  if len(list(argv)) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv)[1:]}')
  try:
    convert(FLAGS.source, FLAGS.input, FLAGS.config, FLAGS.output, FLAGS.num_classes,
            FLAGS.dump_logits, FLAGS.drop_first_class)
  except UserError as e:
    sys.exit(f'error: {e}')


FLAGS = flags.FLAGS

if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Config of the model to convert into.',
                                  lock_config=True)
  flags.DEFINE_enum('source', None, list(SOURCES), 'Where the weights come from.')
  flags.DEFINE_string('input', None, 'The weights: .pth, .pt or .safetensors (torchvision); a '
                      'checkpoint prefix or its folder (tf).')
  flags.DEFINE_string('output', None, 'Directory to write (config.init_from=DIR).')
  flags.DEFINE_integer('num_classes', 0, 'Class count (default: the source classifier\'s, or '
                       'the config\'s data set).')
  flags.DEFINE_string('dump_logits', '', 'IN.npy:OUT.npy: NCHW input -> NCHW logits.')
  flags.DEFINE_bool('drop_first_class', False, 'Drop the classifier\'s class 0 (the zoo\'s '
                    'ADE20K model: its ignored \'other\'; our ADE20K classes are its 1..150).')
  flags.mark_flags_as_required(['config', 'source', 'input', 'output'])
  app.run(main)
