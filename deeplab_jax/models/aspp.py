"""Atrous Spatial Pyramid Pooling (DeepLab v3, section 3.3; v3+ section 3.2)."""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models import layers


class ASPP(nn.Module):
  """1x1 conv + one 3x3 atrous conv per rate + image pooling, concatenated and projected.

  Every branch is conv -> BN -> ReLU with `features` channels (`separable`: the 3x3 branches
  are depthwise-separable, as v3+ uses with Xception); the concatenation is projected by a
  1x1 conv -> BN -> ReLU, then dropout. `output_conv` adds torchvision's extra 3x3 conv ->
  BN -> ReLU after the dropout.
  """
  atrous_rates: Sequence[int] = (6, 12, 18)
  features: int = 256
  image_pooling: bool = True
  dropout_rate: float = 0.1
  separable: bool = False
  output_conv: bool = False
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    layers.check_rates(tuple(self.atrous_rates), 'atrous_rates')
    conv = functools.partial(layers.ConvBN, self.features, norm=self.norm, dtype=self.dtype)
    conv3x3 = functools.partial(layers.conv_bn(self.separable), self.features, norm=self.norm,
                                dtype=self.dtype)
    branches = [conv(1, name='conv1x1')(x)]
    for i, rate in enumerate(self.atrous_rates):
      branches.append(conv3x3(3, rate=rate, name=f'atrous{i + 1}')(x))
    if self.image_pooling:
      pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
      pooled = conv(1, name='image_pooling')(pooled)
      branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], pooled.shape[-1])))
    y = jnp.concatenate(branches, axis=-1)
    y = conv(1, name='projection')(y)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    if self.output_conv:
      y = conv(3, name='output_conv')(y)
    return y
