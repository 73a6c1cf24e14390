"""Atrous Spatial Pyramid Pooling (DeepLab v3, section 3.3)."""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models import layers


class ASPP(nn.Module):
  """1x1 conv + one 3x3 atrous conv per rate + image pooling, concatenated and projected.

  Every branch is conv -> BN -> ReLU with `features` channels; the concatenation is
  projected by a 1x1 conv -> BN -> ReLU, then dropout.
  """
  atrous_rates: Sequence[int] = (6, 12, 18)
  features: int = 256
  image_pooling: bool = True
  dropout_rate: float = 0.1
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    layers.check_rates(tuple(self.atrous_rates), 'atrous_rates')
    conv = functools.partial(layers.ConvBN, self.features, norm=self.norm, dtype=self.dtype)
    branches = [conv(1, name='conv1x1')(x)]
    for i, rate in enumerate(self.atrous_rates):
      branches.append(conv(3, rate=rate, name=f'atrous{i + 1}')(x))
    if self.image_pooling:
      pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
      pooled = conv(1, name='image_pooling')(pooled)
      branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], pooled.shape[-1])))
    y = jnp.concatenate(branches, axis=-1)
    y = conv(1, name='projection')(y)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(y)
