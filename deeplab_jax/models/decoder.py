"""The DeepLab v3+ decoder (v3+ paper, section 3.1)."""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models import layers


class Decoder(nn.Module):
  """Low-level features -> 1x1 conv (48); encoder output upsampled to their size and
  concatenated; two 3x3 convs of `features` channels (depthwise-separable if `separable`)."""
  low_level_features: int = 48
  features: int = 256
  separable: bool = False
  align_corners: bool = False  # the public TF code's resize
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, low_level):
    conv = functools.partial(layers.ConvBN, norm=self.norm, dtype=self.dtype)
    low_level = conv(self.low_level_features, 1, name='low_level_projection')(low_level)
    x = layers.resize_bilinear(x, low_level.shape[1:3], self.align_corners)
    x = x.astype(low_level.dtype)
    x = jnp.concatenate([x, low_level], axis=-1)
    conv3x3 = functools.partial(layers.conv_bn(self.separable), self.features, 3,
                                norm=self.norm, dtype=self.dtype)
    x = conv3x3(name='conv1')(x)
    return conv3x3(name='conv2')(x)
