"""Assembles DeepLab v3 and v3+ from a config: backbone -> ASPP -> (decoder) -> classifier."""

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from deeplab_jax.errors import UserError
from deeplab_jax.models import aspp as aspp_lib
from deeplab_jax.models import decoder as decoder_lib
from deeplab_jax.models import layers
from deeplab_jax.models import resnet

BACKBONES = {
    'resnet50': resnet.ResNet50,
    'resnet101': resnet.ResNet101,
}
HEADS = ('deeplabv3', 'deeplabv3plus')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class DeepLab(nn.Module):
  """A DeepLab network; logits are resized bilinearly to the input size (float32)."""
  num_classes: int
  backbone: Callable[..., nn.Module]
  aspp: Callable[..., nn.Module]
  decoder: Optional[Callable[..., nn.Module]] = None
  low_level_endpoint: str = 'block1'
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    norm = layers.make_norm(train, self.bn_momentum, self.bn_epsilon, self.dtype)
    x = images.astype(self.dtype)
    endpoints = self.backbone(norm=norm, dtype=self.dtype, name='backbone')(x)
    x = self.aspp(norm=norm, dtype=self.dtype, name='aspp')(endpoints['features'], train)
    if self.decoder is not None:
      if self.low_level_endpoint not in endpoints:
        raise UserError(f'decoder low_level_endpoint={self.low_level_endpoint!r} is not an '
                         f'endpoint of the backbone; it has {sorted(endpoints)}.')
      x = self.decoder(norm=norm, dtype=self.dtype, name='decoder')(
          x, endpoints[self.low_level_endpoint])
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='classifier')(x)
    return layers.resize_bilinear(logits.astype(jnp.float32), images.shape[1:3])


def _choice(value, valid, field):
  if value not in valid:
    raise UserError(f'{field}={value!r} is not one of {tuple(valid)}.')
  return value


def build_model(model_config: ml_collections.ConfigDict, num_classes: int) -> DeepLab:
  """Builds the DeepLab module named by `model_config` (fields as in configs/common.py)."""
  c = model_config
  _choice(c.name, HEADS, 'model.name')
  _choice(c.backbone.name, BACKBONES, 'model.backbone.name')
  _choice(c.dtype, DTYPES, 'model.dtype')
  if c.output_stride not in resnet.OUTPUT_STRIDES:
    raise UserError(f'model.output_stride={c.output_stride} is not one of '
                     f'{resnet.OUTPUT_STRIDES}.')
  layers.check_rates(tuple(c.aspp.atrous_rates), 'model.aspp.atrous_rates')
  width = functools.partial(layers.scaled, width_multiplier=c.width_multiplier)
  backbone_kwargs = dict(output_stride=c.output_stride, beta_stem=c.backbone.beta_stem,
                         width_multiplier=c.width_multiplier,
                         multi_grid=tuple(c.backbone.multi_grid) if c.backbone.multi_grid else None)
  if c.backbone.units:
    backbone_kwargs['units'] = tuple(c.backbone.units)
  backbone = functools.partial(BACKBONES[c.backbone.name], **backbone_kwargs)
  aspp = functools.partial(aspp_lib.ASPP, atrous_rates=tuple(c.aspp.atrous_rates),
                           features=width(c.aspp.features), image_pooling=c.aspp.image_pooling,
                           dropout_rate=c.aspp.dropout_rate)
  decoder = None
  if c.name == 'deeplabv3plus':
    decoder = functools.partial(decoder_lib.Decoder,
                                low_level_features=width(c.decoder.low_level_features),
                                features=width(c.decoder.features))
  return DeepLab(num_classes=num_classes, backbone=backbone, aspp=aspp, decoder=decoder,
                 low_level_endpoint=c.decoder.low_level_endpoint, bn_momentum=c.bn_momentum,
                 bn_epsilon=c.bn_epsilon, dtype=DTYPES[c.dtype])
