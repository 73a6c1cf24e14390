"""Gated-SCNN (Takikawa et al., ICCV 2019): a regular stream, a gated shape stream, fused.

  regular stream   a dilated ResNet at output stride 8 (the paper's WideResNet-38)
  shape stream     the stride-2 features, upsampled to the input's size -> [residual block ->
                   1x1 conv -> gated conv layer (GCL)] x 3, gated by the regular stream's side
                   outputs (1x1 convs to one channel, upsampled) -> 1x1 -> the boundary logits
  fusion           sigmoid(boundary logits) and the image's Canny edges (models/canny.py, in
                   the graph) -> 1x1 -> sigmoid: the attention map the ASPP's edge branch reads
  ASPP             on the last features: image pooling, edge branch, 1x1 and three 3x3 atrous
                   convs (each conv, BN, ReLU), concatenated -> 1x1 (no BN, as the official code)
  decoder          the stride-2 features -> 1x1 (48); the ASPP output upsampled to them,
                   concatenated -> [3x3, BN, ReLU] x 2 -> 1x1 to classes -> the input's size

Which ResNet features stand for the paper's taps (WideResNet-38's m1 at full resolution, m2 at
1/2, m3 at 1/4, m4 at 1/8 and m7 with 4096 channels) is configs/gscnn_cityscapes.py's docstring;
`model.gscnn.*_endpoint` chooses them. `__call__(images, train, return_aux=True)` also returns
the boundary logits as ('edge', [B, H, W, 1], None) for the dual-task loss (losses.py) and
`predict`; every resize is bilinear with aligned corners but the logits' last one, as the
official code's.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from deeplab_jax.errors import UserError
from deeplab_jax.models import canny as canny_lib
from deeplab_jax.models import cpu_kernels
from deeplab_jax.models import deeplab
from deeplab_jax.models import layers

_resize = functools.partial(layers.resize_bilinear, align_corners=True)


class BasicBlock(nn.Module):
  """ResNet's basic block (3x3, BN, ReLU, 3x3, BN, + input, ReLU) at the input's width."""
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(layers.ConvBN, x.shape[-1], 3, norm=self.norm, dtype=self.dtype)
    y = conv(name='conv1')(x)
    y = conv(relu=False, name='conv2')(y)
    return nn.relu(y + x)


class GatedConv(nn.Module):
  """The gated convolutional layer: alpha = sigmoid(BN(1x1(ReLU(1x1(BN([s, r])))))) gates the
  shape stream `s` by the regular stream's side output `r` (one channel), then a 1x1 conv
  without bias: out = conv(s * (1 + alpha)), the paper's (s * alpha + s)^T w."""
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, s, r):
    c = s.shape[-1]
    a = jnp.concatenate([s, r.astype(s.dtype)], axis=-1)
    a = self.norm(name='gate_bn1')(a)
    a = nn.relu(layers.Conv(c + 1, (1, 1), dtype=self.dtype, name='gate_conv1')(a))
    a = layers.Conv(1, (1, 1), dtype=self.dtype, name='gate_conv2')(a)
    alpha = nn.sigmoid(self.norm(name='gate_bn2')(a))
    return layers.Conv(c, (1, 1), use_bias=False, dtype=self.dtype, name='conv')(s * (alpha + 1))


class GSCNN(nn.Module):
  """Gated-SCNN around `backbone` (a partial from models/registry.py at output stride 8)."""
  num_classes: int
  backbone: Callable[..., nn.Module]
  shape_endpoint: str = 'stem_stride2'           # the paper's m1
  side_endpoints: Sequence[str] = ('block1', 'block2', 'features')  # m3, m4, m7
  decoder_endpoint: str = 'stem_stride2'         # m2
  shape_features: Sequence[int] = (32, 16, 8)   # the three GCLs' widths
  aspp_rates: Sequence[int] = (12, 24, 36)
  aspp_features: int = 256
  image_pooling: bool = True
  low_level_features: int = 48
  decoder_features: int = 256
  canny_thresholds: Sequence[float] = (10.0, 100.0)
  image_mean: Sequence[float] = (123.675, 116.28, 103.53)
  image_std: Sequence[float] = (58.395, 57.12, 57.375)
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-5
  fine_tune_batch_norm: bool = True
  cpu_kernels: bool = True
  dtype: Any = jnp.float32

  def image_edges(self, images):
    """Canny edges (float 0/1, [B, H, W, 1]) of the normalised `images`, from their 0..255
    values (the official code casts the normalised tensor to uint8; that wraps around)."""
    raw = images.astype(jnp.float32) * jnp.asarray(self.image_std) + jnp.asarray(self.image_mean)
    raw = jnp.clip(jnp.round(raw), 0, 255).astype(jnp.int32)
    edges = canny_lib.canny(jax.lax.stop_gradient(raw), *self.canny_thresholds)
    return edges[..., None].astype(jnp.float32)

  @nn.compact
  def __call__(self, images, train: bool = False, return_aux: bool = False):
    with cpu_kernels.allowed(self.cpu_kernels):
      norm = layers.make_norm(train and self.fine_tune_batch_norm, self.bn_momentum,
                              self.bn_epsilon, self.dtype)
      conv = functools.partial(layers.Conv, dtype=self.dtype)
      size = images.shape[1:3]
      endpoints = self.backbone(norm=norm, dtype=self.dtype, name='backbone')(
          images.astype(self.dtype), train=train)
      field = 'model.gscnn.side_endpoints'
      sides = [_resize(conv(1, (1, 1), name=f'side{i + 1}')(
          deeplab.endpoint(endpoints, e, field)), size) for i, e in enumerate(self.side_endpoints)]

      # Shape stream, at the input's size.
      s = _resize(deeplab.endpoint(endpoints, self.shape_endpoint, 'model.gscnn.shape_endpoint'),
                  size)
      for i, (width, side) in enumerate(zip(self.shape_features, sides)):
        s = BasicBlock(norm=norm, dtype=self.dtype, name=f'shape_res{i + 1}')(s)
        s = conv(width, (1, 1), name=f'shape_reduce{i + 1}')(s)
        s = GatedConv(norm=norm, dtype=self.dtype, name=f'gate{i + 1}')(s, side)
      edge_logits = conv(1, (1, 1), use_bias=False, name='edge_out')(s).astype(jnp.float32)
      fused = jnp.concatenate([nn.sigmoid(edge_logits), self.image_edges(images)], axis=-1)
      attention = nn.sigmoid(conv(1, (1, 1), use_bias=False, name='edge_fusion')(
          fused.astype(self.dtype)))

      # ASPP with the edge branch, on the last features.
      x = deeplab.endpoint(endpoints, self.side_endpoints[-1], field)
      cbr = functools.partial(layers.ConvBN, self.aspp_features, norm=norm, dtype=self.dtype)
      branches = []
      if self.image_pooling:
        pooled = cbr(1, name='aspp_image_pooling')(jnp.mean(x, axis=(1, 2), keepdims=True))
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], pooled.shape[-1])))
      branches += [cbr(1, name='aspp_edge')(_resize(attention, x.shape[1:3])),
                   cbr(1, name='aspp_conv1x1')(x)]
      branches += [cbr(3, rate=r, name=f'aspp_atrous{i + 1}')(x)
                   for i, r in enumerate(self.aspp_rates)]
      y = conv(self.aspp_features, (1, 1), use_bias=False, name='aspp_projection')(
          jnp.concatenate(branches, axis=-1))

      # Decoder on the stride-2 features.
      low = deeplab.endpoint(endpoints, self.decoder_endpoint, 'model.gscnn.decoder_endpoint')
      low = conv(self.low_level_features, (1, 1), use_bias=False, name='decoder_low_level')(low)
      y = jnp.concatenate([low, _resize(y, low.shape[1:3]).astype(low.dtype)], axis=-1)
      dec = functools.partial(layers.ConvBN, self.decoder_features, 3, norm=norm, dtype=self.dtype)
      y = dec(name='decoder_conv1')(y)
      y = dec(name='decoder_conv2')(y)
      y = conv(self.num_classes, (1, 1), use_bias=False, name='classifier')(y)
      # The official code's last resize (to the input) is its only one with corners unaligned.
      logits = layers.resize_bilinear(y.astype(jnp.float32), size, align_corners=False)
      if not return_aux:
        return logits
      # Its weight is the dual-task loss's (model.gscnn.loss.edge, losses.gscnn_losses).
      return logits, [('edge', edge_logits, None)]


def from_config(model_config: ml_collections.ConfigDict, num_classes: int,
                backbone: Callable[..., nn.Module], low_level_endpoint: str) -> GSCNN:
  """Gated-SCNN from `model_config` around `backbone`: model.gscnn (configs/common.py), and
  model.aspp's rates, features and image pooling and model.decoder's widths for its ASPP and
  decoder (its ASPP has neither dropout nor separable convs)."""
  del low_level_endpoint  # the decoder reads model.gscnn.decoder_endpoint
  c, g = model_config, model_config.gscnn
  if c.dtype not in deeplab.DTYPES:
    raise UserError(f'model.dtype={c.dtype!r} is not one of {tuple(deeplab.DTYPES)}.')
  if not c.backbone.name.startswith('resnet'):
    raise UserError(f"model.name='gscnn' reads ResNet's endpoints; model.backbone.name="
                    f'{c.backbone.name!r} is not a ResNet.')
  if c.output_stride != 8:
    raise UserError(f"model.name='gscnn' runs its regular stream at output stride 8, as the "
                    f'paper; model.output_stride={c.output_stride}.')
  if tuple(c.input_scales) != (1.0,):
    raise UserError(f'model.input_scales={tuple(c.input_scales)}: Gated-SCNN takes one input '
                    'scale, (1.0,); eval.scales averages several at evaluation.')
  if len(g.side_endpoints) != len(g.shape_features) or not g.side_endpoints:
    raise UserError(f'model.gscnn.side_endpoints={tuple(g.side_endpoints)} needs one endpoint '
                    f'per gated layer of model.gscnn.shape_features={tuple(g.shape_features)}.')
  low, high = g.canny_thresholds
  if min(low, high) < 0:
    raise UserError(f'model.gscnn.canny_thresholds={tuple(g.canny_thresholds)} must be >= 0.')
  if len(g.image_mean) != 3 or len(g.image_std) != 3 or min(g.image_std) <= 0:
    raise UserError(f'model.gscnn.image_mean={tuple(g.image_mean)} and image_std='
                    f'{tuple(g.image_std)} need three values each, std > 0 (data.mean, data.std).')
  layers.check_rates(tuple(c.aspp.atrous_rates), 'model.aspp.atrous_rates')
  width = functools.partial(layers.scaled, width_multiplier=c.width_multiplier)
  return GSCNN(num_classes=num_classes, backbone=backbone, shape_endpoint=g.shape_endpoint,
               side_endpoints=tuple(g.side_endpoints), decoder_endpoint=g.decoder_endpoint,
               shape_features=tuple(width(f) for f in g.shape_features),
               aspp_rates=tuple(c.aspp.atrous_rates),
               aspp_features=width(c.aspp.features), image_pooling=c.aspp.image_pooling,
               low_level_features=width(c.decoder.low_level_features),
               decoder_features=width(c.decoder.features),
               canny_thresholds=(float(low), float(high)), image_mean=tuple(g.image_mean),
               image_std=tuple(g.image_std),
               bn_momentum=c.bn_momentum, bn_epsilon=c.bn_epsilon,
               fine_tune_batch_norm=c.fine_tune_batch_norm, cpu_kernels=c.cpu_kernels,
               dtype=deeplab.DTYPES[c.dtype])
