"""FastFCN's Joint Pyramid Upsampling (Wu et al. 2019, arXiv 1903.11816): a neck that gives an
undilated output-stride-32 backbone the stride-8 features a dilated one would.

  stride 8, 16, 32 features -> each 3x3 conv -> BN -> ReLU to `features` (512)
  -> upsampled bilinearly (corners aligned, as the official code) to stride 8, concatenated
     (stride 32's first, as the official code: 3 x 512 channels)
  -> four depthwise-separable 3x3 convs at dilations 1, 2, 4, 8 (depthwise -> BN -> pointwise
     -> BN -> ReLU: no ReLU between the halves, as the official code's SeparableConv2d)
  -> concatenated: 4 x 512 = 2048 channels at stride 8, which the head (ASPP at the stride-8
     rates, or FCN's head) reads as it would a dilated ResNet's block4.

With ResNet's 512 / 1024 / 2048 channels it has 19,735,552 parameters (the official code's
count). models/deeplab.py runs it between the backbone and the context module (`model.neck`).
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models import layers


class JPU(nn.Module):
  """`__call__((stride 8, stride 16, stride 32 features), train)` -> stride-8 features."""
  features: int = 512
  dilations: Sequence[int] = (1, 2, 4, 8)
  norm: Callable[..., nn.Module] = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, maps, train: bool = False):
    del train  # the norm partial carries the mode
    size = maps[0].shape[1:3]
    # conv5 reads stride 32, conv4 stride 16, conv3 stride 8 (the official names).
    names = {0: 'conv3', 1: 'conv4', 2: 'conv5'}
    reduced = [layers.ConvBN(self.features, 3, norm=self.norm, dtype=self.dtype,
                             name=names[i])(x) for i, x in enumerate(maps)]
    reduced = [layers.resize_bilinear(x, size, align_corners=True) for x in reduced]
    x = jnp.concatenate(reduced[::-1], axis=-1)
    return jnp.concatenate([
        layers.SeparableConvBN(self.features, 3, rate=d, inner_relu=False, norm=self.norm,
                               dtype=self.dtype, name=f'dilation{i + 1}')(x)
        for i, d in enumerate(self.dilations)], axis=-1)
