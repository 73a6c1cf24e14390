"""Models by name: model.backbone.name -> backbone, model.name -> system, and the model at
another output stride.

A new backbone is a module with a `from_config(model_config) -> (backbone partial, its stride-4
endpoint)` and a line in BACKBONES; a new system is a module with a
`from_config(model_config, num_classes, backbone, low_level_endpoint)` and a line in MODELS, or,
where it is one network with no backbone to choose (FCN, U-Net, FC-DenseNet), a module with a
`from_config(model_config, num_classes)` and a `describe(model_config)` (the model table's
backbone and context cells) and a line in WHOLE_MODELS; model.backbone is not read.
"""

import copy

import flax.linen as nn
import ml_collections

from deeplab_jax.errors import UserError
from deeplab_jax.models import deeplab
from deeplab_jax.models import fc_densenet
from deeplab_jax.models import fcn
from deeplab_jax.models import gscnn
from deeplab_jax.models import mobilenet
from deeplab_jax.models import resnet
from deeplab_jax.models import strides
from deeplab_jax.models import unet
from deeplab_jax.models import vgg
from deeplab_jax.models import xception

BACKBONES = {
    'resnet50': resnet.from_config,
    'resnet101': resnet.from_config,
    'xception65': xception.from_config,
    'xception71': xception.from_config,
    'vgg16': vgg.from_config,
    'mobilenetv2': mobilenet.from_config,
}
MODELS = {
    'deeplabv1': deeplab.from_config,
    'deeplabv2': deeplab.from_config,
    'deeplabv3': deeplab.from_config,
    'deeplabv3plus': deeplab.from_config,
    'gscnn': gscnn.from_config,
}
WHOLE_MODELS = {
    'fcn': fcn,
    'fc_densenet': fc_densenet,
    'unet': unet,
}
# The atrous rates, after the backbone, that a model at another output stride rescales: those
# of the context module in use (model.context) and those of a backbone's own head layers.
CONTEXT_RATES = {'aspp': 'aspp.atrous_rates', 'aspp_l': 'aspp.atrous_rates',
                 'context_module': 'context_module.atrous_rates', 'fcn': None, 'none': None}
BACKBONE_RATES = {'vgg16': ('backbone.fc6_rate',)}


def _choice(value, valid, field):
  if value not in valid:
    raise UserError(f'{field}={value!r} is not one of {tuple(valid)}.')


def build_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The network `model_config` names (fields as in configs/common.py)."""
  c = model_config
  _choice(c.name, {**MODELS, **WHOLE_MODELS}, 'model.name')
  if c.name in WHOLE_MODELS:
    _choice(c.dtype, deeplab.DTYPES, 'model.dtype')
    return WHOLE_MODELS[c.name].from_config(c, num_classes)
  _choice(c.backbone.name, BACKBONES, 'model.backbone.name')
  strides.check_output_stride(c.output_stride, 'model.output_stride')
  if c.freeze_batch_norm_params and c.fine_tune_batch_norm:
    raise UserError('model.freeze_batch_norm_params=True needs model.fine_tune_batch_norm=False '
                    '(frozen scale and offset over batch statistics that still change).')
  backbone, low_level_endpoint = BACKBONES[c.backbone.name](c)
  return MODELS[c.name](c, num_classes, backbone, low_level_endpoint)


def at_output_stride(model_config: ml_collections.ConfigDict, output_stride: int,
                     field: str = 'eval.output_stride') -> ml_collections.ConfigDict:
  """A copy of `model_config` for the same weights run at `output_stride`.

  Evaluating an OS16 model at OS8 (v3 paper, section 4.1) removes one more stride and doubles
  every rate after it, so each filter still sees the same image area: the backbone's rates
  follow from model.output_stride, and the rates of the context module in use (and VGG's fc6)
  are rescaled here. Fields of modules not in use are left alone. `field` names the setting
  in errors: a rate that stops being a whole number, an output stride not in OUTPUT_STRIDES.
  """
  c = copy.deepcopy(model_config)
  strides.check_output_stride(output_stride, field)
  if output_stride == c.output_stride:
    return c
  if c.name in WHOLE_MODELS:
    raise UserError(f'{field}={output_stride}: model.name={c.name!r} has no atrous rates to '
                    f'rescale; it runs at its own output stride, {c.output_stride}.')
  if c.name == 'gscnn':
    raise UserError(f"{field}={output_stride}: model.name='gscnn' runs at output stride 8 only "
                    '(its shape stream reads stride-4 and -8 features); leave it unset.')
  if c.neck != 'none':
    raise UserError(f'{field}={output_stride}: model.neck={c.neck!r} runs its backbone at output '
                    f'stride {c.output_stride} and upsamples to 8 itself; leave {field} unset.')
  _choice(c.context, CONTEXT_RATES, 'model.context')
  paths = ((CONTEXT_RATES[c.context],) if CONTEXT_RATES[c.context] else ()) + BACKBONE_RATES.get(
      c.backbone.name, ())
  for path in paths:
    *parents, name = path.split('.')
    target = c
    for p in parents:
      target = target[p]
    rates = target[name]
    scaled = strides.rescale_rates(rates if isinstance(rates, (tuple, list)) else (rates,),
                                   c.output_stride, output_stride, f'model.{path}', field)
    target[name] = scaled if isinstance(rates, (tuple, list)) else scaled[0]
  c.output_stride = output_stride
  return c
