"""Dilated (atrous) ResNet v1 for DeepLab, in three layouts.

The output stride is set by replacing the stride of the late blocks with atrous
convolutions (v3 paper, section 3.2): at OS16 block4 runs at rate 2, at OS8 block3 runs
at rate 2 and block4 at rate 4. Multi-grid multiplies the rates of block4's units.

Layouts (`layout`), so that weights of either public kind can be loaded:
  'deeplab'      stride on the 3x3 conv of a block's first unit; every unit of a block whose
                 stride became atrous runs at the block's rate (the v3 paper's description).
  'torchvision'  the same parameters; the first unit of a dilated block runs at the previous
                 rate, as torchvision's `replace_stride_with_dilation` does.
  'tfslim'       stride on the 3x3 conv of a block's last unit (blocks 1-3), the shortcut of a
                 strided unit subsampled; rates as slim's `stack_blocks_dense`.
`extra_blocks` appends copies of block4 as blocks 5, 6, ... (the v3 paper's cascaded
"going deeper" model): each would halve the resolution, so each doubles the rate instead.
"""

import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.errors import UserError
from deeplab_jax.models import layers
from deeplab_jax.models import strides

LAYOUTS = ('deeplab', 'torchvision', 'tfslim')


def block_strides_and_rates(output_stride: int, num_blocks: int = 4):
  """Per-block (stride, rate) for blocks 1..num_blocks after a stride-4 stem ('deeplab')."""
  return strides.unit_plan([1] + [2] * (num_blocks - 1), output_stride, 4, rate_change='at')


def unit_strides_and_rates(units: Sequence[int], output_stride: int,
                           layout: str) -> List[List[Tuple[int, int]]]:
  """(stride, rate) of every unit, block by block, for one of LAYOUTS."""
  if layout not in LAYOUTS:
    raise UserError(f'model.backbone.layout={layout!r} is not one of {LAYOUTS}.')
  # Nominal unit strides: the first unit of blocks 2.. halves the resolution.
  unit_strides = [[2 if (b > 0 and u == 0) else 1 for u in range(n)]
                  for b, n in enumerate(units)]
  if layout == 'tfslim':  # the same strides, each moved to the last unit of the block before
    unit_strides = [[1] * (n - 1) + [2 if b + 1 < len(units) else 1] for b, n in enumerate(units)]
  # 'deeplab' runs a whole dilated block at its rate; the others its first unit at the rate
  # before.
  flat = strides.unit_plan([s for block in unit_strides for s in block], output_stride, 4,
                           rate_change='at' if layout == 'deeplab' else 'after')
  out, i = [], 0
  for n in units:
    out.append(flat[i:i + n])
    i += n
  return out


class Bottleneck(nn.Module):
  """ResNet v1 bottleneck unit: 1x1 -> 3x3 (strided, atrous) -> 1x1, expansion 4.

  Returns (output, conv3): the unit's output and its last conv's BatchNorm output before the
  shortcut is added, which TF-slim collects as `.../bottleneck_v1/conv3` and the public
  DeepLab code's v3+ decoder reads.
  """
  filters: int
  strides: int = 1
  rate: int = 1
  subsample_shortcut: bool = False  # TF-slim: identity shortcut subsampled when strided
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(layers.ConvBN, norm=self.norm, dtype=self.dtype)
    shortcut = x
    if x.shape[-1] != self.filters * 4:
      shortcut = conv(self.filters * 4, 1, self.strides, relu=False, name='shortcut')(x)
    elif self.strides != 1:
      if self.subsample_shortcut:
        shortcut = x[:, ::self.strides, ::self.strides]
      else:
        shortcut = conv(self.filters * 4, 1, self.strides, relu=False, name='shortcut')(x)
    y = conv(self.filters, 1, name='conv1')(x)
    y = conv(self.filters, 3, self.strides, self.rate, name='conv2')(y)
    y = conv(self.filters * 4, 1, relu=False, name='conv3')(y)
    return layers.materialize(nn.relu(y + shortcut)), y


class ResNet(nn.Module):
  """Dilated ResNet v1 returning named endpoints.

  Attributes:
    units: units per block, (3, 4, 6, 3) for ResNet-50.
    output_stride: 8, 16 or 32.
    multi_grid: rate multipliers for the units of the last block (and of every extra block).
    beta_stem: three 3x3 convs (64, 64, 128) in place of the 7x7 stem.
    layout: one of LAYOUTS.
    extra_blocks: copies of block4 appended as blocks 5.. (cascaded DeepLabv3).
    width_multiplier: scales every channel count (tiny test models).
  Returns a dict: `stem_stride2` (the stem's convs, before its max pool), `stem` (stride 4),
  `blockB_unitU` for every unit and `blockB_unitU_conv3` (its residual branch before the
  shortcut is added), `block1`.. (the last unit of each block), and `features` (the last block).
  """
  units: Sequence[int] = (3, 4, 6, 3)
  output_stride: int = 16
  multi_grid: Optional[Sequence[int]] = None
  beta_stem: bool = False
  layout: str = 'deeplab'
  extra_blocks: int = 0
  width_multiplier: float = 1.0
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, Any]:
    del train  # BatchNorm's mode comes with `norm`.
    w = functools.partial(layers.scaled, width_multiplier=self.width_multiplier)
    conv = functools.partial(layers.ConvBN, norm=self.norm, dtype=self.dtype)
    if self.extra_blocks < 0:
      raise UserError(f'model.backbone.extra_blocks={self.extra_blocks} must be >= 0.')
    units = tuple(self.units) + (self.units[-1],) * self.extra_blocks
    plan = unit_strides_and_rates(units, self.output_stride, self.layout)
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
    stride2 = x  # Gated-SCNN's stride-2 taps
    # TF-slim pools with TF's SAME padding: (0, 1) on even sizes, where PyTorch pads (1, 1).
    x = layers.max_pool(x, (3, 3), strides=(2, 2),
                        padding='SAME' if self.layout == 'tfslim' else ((1, 1), (1, 1)))
    endpoints = {'stem_stride2': stride2, 'stem': x}
    for b, block_plan in enumerate(plan):
      grid = multi_grid if b >= len(self.units) - 1 else (1,) * len(block_plan)
      filters = w(64 * 2**min(b, 3))
      for u, (stride, rate) in enumerate(block_plan):
        x, conv3 = Bottleneck(filters, stride, rate * grid[u],
                              subsample_shortcut=self.layout == 'tfslim', norm=self.norm,
                              dtype=self.dtype, name=f'block{b + 1}_unit{u + 1}')(x)
        endpoints[f'block{b + 1}_unit{u + 1}'] = x
        endpoints[f'block{b + 1}_unit{u + 1}_conv3'] = conv3
      endpoints[f'block{b + 1}'] = x
    endpoints['features'] = x
    return endpoints


def default_low_level_endpoint(units: Sequence[int], layout: str) -> str:
  """The stride-4 endpoint the v3+ decoder reads: block1; for 'tfslim', as the public DeepLab
  code, the pre-shortcut conv3 of the unit before block1's stride (its `block1/unit_2/
  bottleneck_v1/conv3`), or the stem when block1 has one unit."""
  if layout != 'tfslim':
    return 'block1'
  return f'block1_unit{units[0] - 1}_conv3' if units[0] > 1 else 'stem'


ResNet50 = functools.partial(ResNet, units=(3, 4, 6, 3))
ResNet101 = functools.partial(ResNet, units=(3, 4, 23, 3))


def from_config(model_config):
  """(ResNet partial, its stride-4 endpoint) from the model config (configs/common.py)."""
  c, b = model_config, model_config.backbone
  layers.reject_backbone_fields(b, 'preactivation')
  if b.layout not in LAYOUTS:
    raise UserError(f'model.backbone.layout={b.layout!r} is not one of {LAYOUTS}.')
  variant = {'resnet50': ResNet50, 'resnet101': ResNet101}[b.name]
  units = tuple(b.units) or variant.keywords['units']
  if len(units) != 4 or min(units) < 1:
    raise UserError(f'model.backbone.units={units} needs 4 blocks of at least 1 unit.')
  backbone = functools.partial(
      variant, units=units, output_stride=c.output_stride, width_multiplier=c.width_multiplier,
      multi_grid=tuple(b.multi_grid) if b.multi_grid else None, beta_stem=b.beta_stem,
      layout=b.layout, extra_blocks=b.extra_blocks)
  return backbone, default_low_level_endpoint(units, b.layout)
