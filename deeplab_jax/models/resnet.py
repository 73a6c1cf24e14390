"""Dilated (atrous) ResNet v1 for DeepLab.

The output stride is set by replacing the stride of the late blocks with atrous
convolutions (v3 paper, section 3.2): at OS16 block4 runs at rate 2, at OS8
block3 runs at rate 2 and block4 at rate 4. Multi-grid multiplies the rates of
block4's units. The stride of a block sits on the 3x3 conv of its first unit
(the torchvision layout).
"""

import functools
from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.errors import UserError
from deeplab_jax.models import layers

OUTPUT_STRIDES = (8, 16, 32)


def block_strides_and_rates(output_stride: int, num_blocks: int = 4):
  """Per-block (stride, rate) for blocks 1..num_blocks after a stride-4 stem."""
  if output_stride not in OUTPUT_STRIDES:
    raise UserError(f'output_stride={output_stride} is not one of {OUTPUT_STRIDES}.')
  current, rate, out = 4, 1, []
  for i in range(num_blocks):
    stride = 1 if i == 0 else 2
    if stride > 1 and current >= output_stride:
      rate *= stride
      stride = 1
    elif stride > 1:
      current *= stride
    out.append((stride, rate))
  return out


class Bottleneck(nn.Module):
  """ResNet v1 bottleneck unit: 1x1 -> 3x3 (strided, atrous) -> 1x1, expansion 4."""
  filters: int
  strides: int = 1
  rate: int = 1
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(layers.ConvBN, norm=self.norm, dtype=self.dtype)
    shortcut = x
    if x.shape[-1] != self.filters * 4 or self.strides != 1:
      shortcut = conv(self.filters * 4, 1, self.strides, relu=False, name='shortcut')(x)
    y = conv(self.filters, 1, name='conv1')(x)
    y = conv(self.filters, 3, self.strides, self.rate, name='conv2')(y)
    y = conv(self.filters * 4, 1, relu=False, name='conv3')(y)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """Dilated ResNet v1 returning named endpoints.

  Attributes:
    units: units per block, (3, 4, 6, 3) for ResNet-50.
    output_stride: 8, 16 or 32.
    multi_grid: rate multipliers for the units of the last block, or None.
    beta_stem: three 3x3 convs (64, 64, 128) in place of the 7x7 stem.
    width_multiplier: scales every channel count (tiny test models).
  Returns a dict: `stem` (stride 4), `block1`..`block4`, and `features` (the last).
  """
  units: Sequence[int] = (3, 4, 6, 3)
  output_stride: int = 16
  multi_grid: Optional[Sequence[int]] = None
  beta_stem: bool = False
  width_multiplier: float = 1.0
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x) -> Dict[str, Any]:
    w = functools.partial(layers.scaled, width_multiplier=self.width_multiplier)
    conv = functools.partial(layers.ConvBN, norm=self.norm, dtype=self.dtype)
    plan = block_strides_and_rates(self.output_stride, len(self.units))
    multi_grid = tuple(self.multi_grid) if self.multi_grid else (1,) * self.units[-1]
    if len(multi_grid) != self.units[-1]:
      raise UserError(f'multi_grid={multi_grid} needs one rate per unit of the last block '
                       f'({self.units[-1]} units).')
    layers.check_rates(multi_grid, 'multi_grid')

    if self.beta_stem:
      x = conv(w(64), 3, 2, name='stem_conv1')(x)
      x = conv(w(64), 3, name='stem_conv2')(x)
      x = conv(w(128), 3, name='stem_conv3')(x)
    else:
      x = conv(w(64), 7, 2, name='stem_conv1')(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    endpoints = {'stem': x}
    for b, (num_units, (stride, rate)) in enumerate(zip(self.units, plan)):
      last = b == len(self.units) - 1
      for u in range(num_units):
        unit_rate = rate * (multi_grid[u] if last else 1)
        x = Bottleneck(w(64 * 2**b), stride if u == 0 else 1, unit_rate, norm=self.norm,
                       dtype=self.dtype, name=f'block{b + 1}_unit{u + 1}')(x)
      endpoints[f'block{b + 1}'] = x
    endpoints['features'] = x
    return endpoints


ResNet50 = functools.partial(ResNet, units=(3, 4, 6, 3))
ResNet101 = functools.partial(ResNet, units=(3, 4, 23, 3))
