"""Building blocks shared by the backbones and heads: atrous conv + BatchNorm + ReLU, resize.

Plain flax/lax on every backend. `Conv`, `max_pool` and `materialize` are nn.Conv, nn.max_pool
and the identity, except where `cpu_kernels.active()` (JAX on the CPU, model.cpu_kernels on):
there they trace the exact rewrites of models/cpu_kernels.py instead.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deeplab_jax.errors import UserError
from deeplab_jax.models import cpu_kernels

ModuleDef = Any
# Inference-mode BatchNorm; DeepLab passes its own (training or not) to every module.
DEFAULT_NORM = functools.partial(nn.BatchNorm, use_running_average=True)


def scaled(channels: int, width_multiplier: float, minimum: int = 8) -> int:
  """Channels after the width multiplier, never below `minimum`."""
  return max(minimum, int(round(channels * width_multiplier)))


def atrous_padding(kernel_size: int, rate: int):
  """Symmetric padding that keeps the size of a stride-1 atrous conv.

  k_eff = k + (k - 1)(r - 1), so each side needs (k_eff - 1) / 2. This equals
  PyTorch's `padding=rate` for 3x3 convs, which keeps weight imports exact.
  """
  pad = (kernel_size - 1) * rate // 2
  return ((pad, pad), (pad, pad))


def check_rates(rates: Sequence[int], what: str) -> None:
  """UserError unless every atrous rate is an integer >= 1."""
  for r in rates:
    if not isinstance(r, int) or r < 1:
      raise UserError(f'{what}={tuple(rates)} has rate {r!r}; atrous rates must be integers >= 1.')


# model.backbone fields that only some backbones read, and why another rejects a set value.
_BACKBONE_FIELDS = {
    'units': lambda b: (f'model.backbone.units={tuple(b.units)}: {b.name!r} has a fixed depth; '
                        'leave units empty.'),
    'preactivation': lambda b: ('model.backbone.preactivation=True is the public TF Xception\'s '
                                f'module form; {b.name!r} has no such variant.'),
    'extra_blocks': lambda b: (f'model.backbone.extra_blocks={b.extra_blocks}: the cascaded '
                               f'blocks are copies of ResNet block4; {b.name!r} has none.'),
}


def reject_backbone_fields(backbone_config, *fields: str) -> None:
  """UserError if any of `fields` (keys of _BACKBONE_FIELDS) is set in model.backbone."""
  for field in fields:
    if backbone_config[field]:
      raise UserError(_BACKBONE_FIELDS[field](backbone_config))


def _conv_general_dilated(*args, **kwargs):
  """lax.conv_general_dilated; its CPU rewrites where cpu_kernels.active() (at trace time)."""
  if cpu_kernels.active():
    return cpu_kernels.conv_general_dilated(*args, **kwargs)
  return jax.lax.conv_general_dilated(*args, **kwargs)


# nn.Conv (the same parameters, names and initialisation); see the module docstring.
Conv = functools.partial(nn.Conv, conv_general_dilated=_conv_general_dilated)


def max_pool(x: jax.Array, window_shape: Sequence[int], strides: Sequence[int],
             padding='VALID') -> jax.Array:
  """nn.max_pool over the spatial axes of NHWC `x` (padding 'SAME', 'VALID' or pairs)."""
  if cpu_kernels.active():
    return cpu_kernels.max_pool(x, window_shape, strides, padding)
  return nn.max_pool(x, tuple(window_shape), strides=tuple(strides), padding=padding)


def materialize(x: jax.Array) -> jax.Array:
  """`x`; on the CPU kernels' path computed once rather than in each consumer (see
  cpu_kernels.materialize): for the output of a residual unit."""
  return cpu_kernels.materialize(x) if cpu_kernels.active() else x


class ConvBN(nn.Module):
  """Atrous conv -> BatchNorm -> optional ReLU."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  rate: int = 1
  relu: bool = True
  norm: ModuleDef = DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = Conv(self.features, (self.kernel_size, self.kernel_size),
             strides=(self.strides, self.strides),
             padding=atrous_padding(self.kernel_size, self.rate),
             kernel_dilation=(self.rate, self.rate), use_bias=False,
             dtype=self.dtype, name='conv')(x)
    x = self.norm(name='bn')(x)
    return nn.relu(x) if self.relu else x


class SeparableConvBN(nn.Module):
  """Depthwise atrous 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU (Xception, v3+).

  `inner_relu=False` drops the ReLU between the halves (the public TF Xception's modules).
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  rate: int = 1
  relu: bool = True
  inner_relu: bool = True
  norm: ModuleDef = DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    x = Conv(x.shape[-1], (k, k), strides=(self.strides, self.strides),
             padding=atrous_padding(k, self.rate), kernel_dilation=(self.rate, self.rate),
             feature_group_count=x.shape[-1], use_bias=False, dtype=self.dtype,
             name='depthwise')(x)
    x = self.norm(name='depthwise_bn')(x)
    x = nn.relu(x) if self.inner_relu else x
    x = Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, name='pointwise')(x)
    x = self.norm(name='pointwise_bn')(x)
    return nn.relu(x) if self.relu else x


def conv_bn(separable: bool) -> Callable[..., nn.Module]:
  """The 3x3 conv of a head: plain (ResNet) or depthwise-separable (Xception, MobileNet)."""
  return SeparableConvBN if separable else ConvBN


def make_norm(train: bool, momentum: float, epsilon: float, dtype: Any) -> Callable[..., nn.Module]:
  """BatchNorm whose statistics are means over the whole (global, sharded) batch; with
  `train=False` it normalises with, and leaves unchanged, its moving statistics."""
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=momentum,
                           epsilon=epsilon, dtype=dtype)


def resize_bilinear(x: jax.Array, size: Sequence[int], align_corners: bool = False) -> jax.Array:
  """Bilinear resize of NHWC features to spatial `size`, without antialiasing.

  Half-pixel centres by default (tf.image.resize, PyTorch's align_corners=False).
  `align_corners=True` maps corner pixels onto corner pixels, output i sampling input
  i (in - 1) / (out - 1), as TF1's `resize_bilinear(align_corners=True)` that the public
  DeepLab code uses throughout; a side of size 1 (in or out) samples input 0, as TF1 does.
  """
  size = tuple(size)
  if tuple(x.shape[1:3]) == size:
    return x
  if not align_corners:
    # No antialiasing: the same filter as tf.image.resize in the input pipeline.
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), method='bilinear',
                            antialias=False)
  for axis, out in zip((1, 2), size):
    if x.shape[axis] == 1 or out == 1:
      first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
      x = jnp.broadcast_to(first, x.shape[:axis] + (out,) + x.shape[axis + 1:])
  dims = [a for a, out in zip((1, 2), size) if x.shape[a] != out]
  if not dims:
    return x
  # The half-pixel warp that puts corners on corners: scale (out - 1) / (in - 1), translated
  # by (1 - scale) / 2 (jax.image.scale_and_translate's docstring gives the same).
  scale = jnp.array([(size[a - 1] - 1) / (x.shape[a] - 1) for a in dims], jnp.float32)
  shape = tuple(size[a - 1] if a in dims else n for a, n in enumerate(x.shape))
  return jax.image.scale_and_translate(x, shape, dims, scale, 0.5 * (1.0 - scale),
                                       method='linear', antialias=False)


def pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
  """NHWC `x` padded with zeros at the bottom and right to sides that `multiple` divides (the
  networks without atrous convs crop their logits back)."""
  h, w = x.shape[1:3]
  return jnp.pad(x, ((0, 0), (0, padding_to_multiple(h, multiple)),
                     (0, padding_to_multiple(w, multiple)), (0, 0)))


def padding_to_multiple(size, multiple: int):
  """Rows (or columns) that bring `size` up to a multiple of `multiple`.

  Written as ceil(size / multiple) * multiple - size rather than -size % multiple: equal for
  integers, but for a symbolic size (jax.export) the padded size then reads as a multiple that
  later poolings halve and crops compare exactly."""
  return -(-size // multiple) * multiple - size
