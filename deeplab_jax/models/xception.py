"""Aligned Xception-65 and Xception-71 (DeepLabv3+ paper, section 3.2 and figure 4).

Every 3x3 conv is depthwise-separable: depthwise 3x3 (atrous where the output stride asks
for it) -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU. Max pooling is replaced by a
strided separable conv (the last of a module's three), with a strided 1x1 conv + BN on
the shortcut. Output strides below 32 replace strides by rates with the TF-slim rule
(`strides.unit_plan`), as the public DeepLab code does.

This is the paper's (and REFERENCE.md's) post-activation form. `preactivation=True` is the
public TF code's (and its checkpoints'): every module but exit_block2 applies a ReLU before
each separable conv and none inside it (depthwise -> BN -> pointwise -> BN); exit_block2 is
the same in both. The parameters are the same; the decoder's stride-4 endpoint is then the
BN output before any ReLU, as in the TF code.

Endpoints: `entry_blockI` (module outputs), `entry_blockI_sepconv2` (each entry module's
second separable conv, before its stride: the decoder's stride-4 features),
`middle`, `exit_block1`, and `features`.
"""

import functools
from typing import Any, Dict, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.errors import UserError
from deeplab_jax.models import layers
from deeplab_jax.models import strides

# Entry-flow modules: (channels, stride). Each has three separable convs and a conv shortcut.
ENTRY_FLOWS = {
    'xception65': ((128, 2), (256, 2), (728, 2)),
    'xception71': ((128, 2), (256, 1), (256, 2), (728, 1), (728, 2)),
}
LOW_LEVEL_ENDPOINTS = {'xception65': 'entry_block2_sepconv2',
                       'xception71': 'entry_block3_sepconv2'}


class XceptionModule(nn.Module):
  """Three separable convs; the last one strided; shortcut 'conv', 'sum' or 'none'."""
  depths: Sequence[int]
  skip: str = 'conv'
  strides: int = 1
  rate: int = 1
  unit_rates: Sequence[int] = (1, 1, 1)
  preactivation: bool = False  # ReLU -> depthwise -> BN -> pointwise -> BN, three times
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    post = not self.preactivation
    sep = functools.partial(layers.SeparableConvBN, relu=post, inner_relu=post, norm=self.norm,
                            dtype=self.dtype)
    y, inner = x, []
    for i, depth in enumerate(self.depths):
      if self.preactivation:
        y = nn.relu(y)  # a new tensor: the shortcut still takes the module's input
      y = sep(depth, strides=self.strides if i == 2 else 1, rate=self.rate * self.unit_rates[i],
              name=f'sepconv{i + 1}')(y)
      inner.append(y)
    if self.skip == 'conv':
      y = y + layers.ConvBN(self.depths[-1], 1, self.strides, relu=False, norm=self.norm,
                            dtype=self.dtype, name='shortcut')(x)
    elif self.skip == 'sum':
      y = y + x
    return y, inner[1]


class Xception(nn.Module):
  """Aligned Xception; `middle_units` is 16 in Xception-65 and -71."""
  entry_flow: Sequence[Sequence[int]] = ENTRY_FLOWS['xception65']
  middle_units: int = 16
  output_stride: int = 16
  multi_grid: Sequence[int] = (1, 1, 1)  # rates of the last module's three separable convs
  width_multiplier: float = 1.0
  preactivation: bool = False  # the public TF code's module form (see the module docstring)
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, Any]:
    del train
    w = functools.partial(layers.scaled, width_multiplier=self.width_multiplier)
    multi_grid = tuple(self.multi_grid) if self.multi_grid else (1, 1, 1)
    if len(multi_grid) != 3:
      raise UserError(f'multi_grid={multi_grid} needs one rate per separable conv of the '
                      'last Xception module (3).')
    layers.check_rates(multi_grid, 'multi_grid')
    if self.middle_units < 1:
      raise UserError(f'model.backbone.units=({self.middle_units},) must be >= 1 middle-flow '
                      'units for Xception.')
    # (name, depths, skip, stride) of every module, in order.
    modules = [(f'entry_block{i + 1}', (c, c, c), 'conv', s)
               for i, (c, s) in enumerate(self.entry_flow)]
    modules += [(f'middle_unit{i + 1}', (728,) * 3, 'sum', 1) for i in range(self.middle_units)]
    modules += [('exit_block1', (728, 1024, 1024), 'conv', 2),
                ('exit_block2', (1536, 1536, 2048), 'none', 1)]
    plan = strides.unit_plan([m[3] for m in modules], self.output_stride, current_stride=2)

    conv = functools.partial(layers.ConvBN, norm=self.norm, dtype=self.dtype)
    x = conv(w(32), 3, 2, name='entry_conv1')(x)
    x = conv(w(64), 3, name='entry_conv2')(x)
    endpoints = {}
    for (name, depths, skip, _), (stride, rate) in zip(modules, plan):
      last = name == 'exit_block2'
      x, before_stride = XceptionModule(
          tuple(w(d) for d in depths), skip, stride, rate, multi_grid if last else (1, 1, 1),
          preactivation=self.preactivation and not last, norm=self.norm, dtype=self.dtype,
          name=name)(x)
      if name.startswith('entry'):
        endpoints[f'{name}_sepconv2'] = before_stride
      endpoints[name] = x
    endpoints['middle'] = endpoints[f'middle_unit{self.middle_units}']
    endpoints['features'] = x
    return endpoints


Xception65 = functools.partial(Xception, entry_flow=ENTRY_FLOWS['xception65'])
Xception71 = functools.partial(Xception, entry_flow=ENTRY_FLOWS['xception71'])


def from_config(model_config):
  """(Xception partial, its stride-4 endpoint) from the model config (configs/common.py)."""
  c, b = model_config, model_config.backbone
  layers.reject_backbone_fields(b, 'extra_blocks')
  kwargs = dict(output_stride=c.output_stride, width_multiplier=c.width_multiplier,
                multi_grid=tuple(b.multi_grid) if b.multi_grid else None,
                preactivation=b.preactivation)
  if b.units:
    if len(b.units) != 1:
      raise UserError(f'model.backbone.units={tuple(b.units)}: Xception takes one number, the '
                      'middle-flow units (16).')
    kwargs['middle_units'] = b.units[0]
  variant = {'xception65': Xception65, 'xception71': Xception71}[b.name]
  return functools.partial(variant, **kwargs), LOW_LEVEL_ENDPOINTS[b.name]
