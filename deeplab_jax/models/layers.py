"""Building blocks shared by the backbones and heads: atrous conv + BatchNorm + ReLU."""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax.errors import UserError

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
    x = nn.Conv(self.features, (self.kernel_size, self.kernel_size),
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
    x = nn.Conv(x.shape[-1], (k, k), strides=(self.strides, self.strides),
                padding=atrous_padding(k, self.rate), kernel_dilation=(self.rate, self.rate),
                feature_group_count=x.shape[-1], use_bias=False, dtype=self.dtype,
                name='depthwise')(x)
    x = self.norm(name='depthwise_bn')(x)
    x = nn.relu(x) if self.inner_relu else x
    x = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, name='pointwise')(x)
    x = self.norm(name='pointwise_bn')(x)
    return nn.relu(x) if self.relu else x


def conv_bn(separable: bool) -> Callable[..., nn.Module]:
  """The 3x3 conv of a head: plain (ResNet) or depthwise-separable (Xception, MobileNet)."""
  return SeparableConvBN if separable else ConvBN


def unit_plan(unit_strides: Sequence[int], output_stride: int, current_stride: int):
  """(stride, rate) per unit for a target output stride, the TF-slim / torchvision rule.

  Units keep their stride until the running stride reaches `output_stride`; from then on a
  unit's stride becomes 1 and the rate of every later unit is multiplied by it. The unit
  whose stride is removed still runs at the earlier rate (slim's `stack_blocks_dense`,
  torchvision's `replace_stride_with_dilation`).
  """
  rate, plan = 1, []
  for stride in unit_strides:
    if stride > 1 and current_stride >= output_stride:
      plan.append((1, rate))
      rate *= stride
    else:
      plan.append((stride, rate))
      current_stride *= stride
  return plan


def check_output_stride(output_stride: int, valid: Sequence[int] = (8, 16, 32)) -> None:
  if output_stride not in valid:
    raise UserError(f'output_stride={output_stride} is not one of {tuple(valid)}.')


def resize_bilinear(x: jax.Array, size: Sequence[int], align_corners: bool = False) -> jax.Array:
  """Bilinear resize of NHWC features to spatial `size`.

  Half-pixel centres by default (tf.image.resize, PyTorch's align_corners=False).
  `align_corners=True` maps corner pixels onto corner pixels, output i sampling input
  i (in - 1) / (out - 1), as TF1's `resize_bilinear(align_corners=True)` that the public
  DeepLab code uses throughout.
  """
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  if not align_corners:
    # No antialiasing: the same filter as tf.image.resize in the input pipeline.
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), method='bilinear',
                            antialias=False)
  for axis, out in zip((1, 2), size):
    x = _resize_axis_align_corners(x, axis, out)
  return x


def _resize_axis_align_corners(x: jax.Array, axis: int, out: int) -> jax.Array:
  """Linear interpolation along one axis at the points i (in - 1) / (out - 1)."""
  size = x.shape[axis]
  if size == out:
    return x
  if size == 1 or out == 1:  # every output samples input 0 (TF's scale is 0 for out == 1)
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    return jnp.broadcast_to(first, x.shape[:axis] + (out,) + x.shape[axis + 1:])
  position = np.arange(out, dtype=np.float64) * (size - 1) / (out - 1)
  low = np.minimum(np.floor(position).astype(np.int32), size - 2)
  frac = (position - low).astype(np.float32)
  shape = [1] * x.ndim
  shape[axis] = out
  frac = jnp.asarray(frac.reshape(shape), x.dtype)
  below = jnp.take(x, low, axis=axis)
  above = jnp.take(x, low + 1, axis=axis)
  return below + frac * (above - below)


def check_rates(rates: Sequence[int], what: str) -> None:
  for r in rates:
    if not isinstance(r, int) or r < 1:
      raise UserError(f'{what}={tuple(rates)} has rate {r!r}; atrous rates must be integers >= 1.')


def make_norm(train: bool, momentum: float, epsilon: float, dtype: Any) -> Callable[..., nn.Module]:
  """BatchNorm whose statistics are means over the whole (global, sharded) batch."""
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=momentum,
                           epsilon=epsilon, dtype=dtype)

