"""MobileNetV2 as the public DeepLab model zoo uses it (up to the 320-channel layer).

Layer numbers follow TF-slim's `mobilenet_v2`: layer1 is the 3x3 stem conv, layer2 the
first (unexpanded) inverted residual, layer3..layer18 the rest; the final 1x1 conv of 1280
is not part of DeepLab's feature extractor. Inverted residual: 1x1 expand (x6) -> BN ->
ReLU6 -> depthwise 3x3 (strided or atrous) -> BN -> ReLU6 -> 1x1 project -> BN, with a
residual when stride 1 and the channels match. `depth_multiplier` scales every layer,
rounded to a multiple of 8 as slim and torchvision do.

Endpoints: `layerN` for every layer, `layerN_depthwise` (the depthwise output;
`layer4_depthwise` is the v3+ decoder's stride-4 input in the public code), `features`.
"""

import functools
from typing import Any, Dict

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.errors import UserError
from deeplab_jax.models import layers
from deeplab_jax.models import strides

# (expansion, channels, repeats, stride) after the stem, as in the MobileNetV2 paper's table 2.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8, minimum: int = 8) -> int:
  """Rounds channels to a multiple of `divisor`, never down by more than 10%."""
  rounded = max(minimum, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
  features: int
  expansion: int
  strides: int = 1
  rate: int = 1
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(layers.Conv, use_bias=False, dtype=self.dtype)
    y = x
    if self.expansion != 1:
      y = conv(make_divisible(x.shape[-1] * self.expansion), (1, 1), name='expand')(y)
      y = nn.relu6(self.norm(name='expand_bn')(y))
    y = conv(y.shape[-1], (3, 3), strides=(self.strides, self.strides),
             padding=layers.atrous_padding(3, self.rate), kernel_dilation=(self.rate, self.rate),
             feature_group_count=y.shape[-1], name='depthwise')(y)
    depthwise = y = nn.relu6(self.norm(name='depthwise_bn')(y))
    y = conv(self.features, (1, 1), name='project')(y)
    y = self.norm(name='project_bn')(y)
    if self.strides == 1 and x.shape[-1] == self.features:
      y = y + x
    return y, depthwise


class MobileNetV2(nn.Module):
  output_stride: int = 16
  depth_multiplier: float = 1.0
  width_multiplier: float = 1.0  # further scaling for tiny test models
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, Any]:
    del train
    if self.depth_multiplier <= 0:
      raise UserError(f'model.backbone.depth_multiplier={self.depth_multiplier} must be > 0.')
    scale = self.depth_multiplier * self.width_multiplier
    x = layers.Conv(make_divisible(32 * scale), (3, 3), strides=(2, 2),
                    padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype, name='layer1')(x)
    x = nn.relu6(self.norm(name='layer1_bn')(x))
    endpoints = {'layer1': x}
    units = [(t, c, s if i == 0 else 1) for t, c, n, s in SETTINGS for i in range(n)]
    plan = strides.unit_plan([s for _, _, s in units], self.output_stride, current_stride=2)
    for i, ((t, c, _), (stride, rate)) in enumerate(zip(units, plan)):
      name = f'layer{i + 2}'
      x, depthwise = InvertedResidual(make_divisible(c * scale), t, stride, rate,
                                      norm=self.norm, dtype=self.dtype, name=name)(x)
      endpoints[name] = x
      endpoints[f'{name}_depthwise'] = depthwise
    endpoints['features'] = x
    return endpoints


def from_config(model_config):
  """(MobileNetV2 partial, its stride-4 endpoint) from the model config (configs/common.py)."""
  c, b = model_config, model_config.backbone
  layers.reject_backbone_fields(b, 'units', 'preactivation', 'extra_blocks')
  return functools.partial(MobileNetV2, output_stride=c.output_stride,
                           width_multiplier=c.width_multiplier,
                           depth_multiplier=b.depth_multiplier), 'layer4_depthwise'
