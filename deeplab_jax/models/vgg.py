"""VGG-16 as in DeepLab-LargeFOV (v1 paper, section 4.1; v2 paper, section 4).

Thirteen 3x3 convs (with bias, no BatchNorm) in five groups, each followed by a 3x3 max
pool (padding 1). At output stride 8 pool4 and pool5 keep stride 1 and conv5 runs at
rate 2; at OS16 only pool5 keeps stride 1. The fully connected layers become convs: fc6
is a 3x3 conv of 1024 channels at rate `fc6_rate` (12 in LargeFOV), fc7 a 1x1 conv of
1024, each followed by ReLU and dropout.

Endpoints: `conv1`..`conv5` (each group's last conv, `conv3` at stride 4 for a decoder),
`pool5`, `fc7`, and `features` (= `fc7`).
"""

import functools
from typing import Any, Dict

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models import layers
from deeplab_jax.models import strides

GROUPS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (channels, convs)


class VGG16(nn.Module):
  """VGG-16 LargeFOV backbone; `fc_features=0` stops at pool5."""
  output_stride: int = 8
  fc6_rate: int = 12
  fc_features: int = 1024
  dropout_rate: float = 0.5
  width_multiplier: float = 1.0
  norm: Any = None  # VGG-16 has no BatchNorm; accepted for a uniform interface.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, Any]:
    layers.check_rates((self.fc6_rate,), 'model.backbone.fc6_rate')
    w = functools.partial(layers.scaled, width_multiplier=self.width_multiplier)
    # Each conv group and the pool after it form a unit: the group runs at the unit's rate, the
    # pool strides by the unit's stride (1 where the output stride removed it).
    plan = strides.unit_plan([2, 2, 2, 2, 2], self.output_stride, current_stride=1)
    endpoints = {}
    for g, ((channels, convs), (pool_stride, rate)) in enumerate(zip(GROUPS, plan)):
      for i in range(convs):
        x = layers.Conv(w(channels), (3, 3), padding=layers.atrous_padding(3, rate),
                        kernel_dilation=(rate, rate), dtype=self.dtype,
                        name=f'conv{g + 1}_{i + 1}')(x)
        x = nn.relu(x)
      endpoints[f'conv{g + 1}'] = x
      x = layers.max_pool(x, (3, 3), strides=(pool_stride, pool_stride), padding=((1, 1), (1, 1)))
    endpoints['pool5'] = x
    if self.fc_features:
      dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
      x = layers.Conv(w(self.fc_features), (3, 3),
                      padding=layers.atrous_padding(3, self.fc6_rate),
                      kernel_dilation=(self.fc6_rate, self.fc6_rate), dtype=self.dtype,
                      name='fc6')(x)
      x = dropout(nn.relu(x))
      x = layers.Conv(w(self.fc_features), (1, 1), dtype=self.dtype, name='fc7')(x)
      x = dropout(nn.relu(x))
      endpoints['fc7'] = x
    endpoints['features'] = x
    return endpoints


def from_config(model_config):
  """(VGG16 partial, its stride-4 endpoint) from the model config (configs/common.py)."""
  c, b = model_config, model_config.backbone
  layers.reject_backbone_fields(b, 'units', 'preactivation', 'extra_blocks')
  return functools.partial(VGG16, output_stride=c.output_stride,
                           width_multiplier=c.width_multiplier, fc6_rate=b.fc6_rate,
                           fc_features=b.fc_features, dropout_rate=b.dropout_rate), 'conv3'
