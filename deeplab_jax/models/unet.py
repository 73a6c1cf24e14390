"""U-Net (Ronneberger, Fischer and Brox, MICCAI 2015).

  contracting: [3x3 conv-ReLU] x 2 then 2x2 max pool, at base, 2 base, 4 base, 8 base channels
  bottom: [3x3 conv-ReLU] x 2 at 16 base channels, then dropout (the paper's "drop-out layers at
      the end of the contracting path")
  expanding: 2x2 up-convolution of stride 2 halving the channels, concatenated with the
      contracting path's map at that level ([skip, up]), [3x3 conv-ReLU] x 2, four times
  1x1 conv -> classes: 23 convs in all.

`padding='valid'` is the paper's network: unpadded convs, skips centre-cropped to the expanding
path's size, an output 184 px smaller than the input (572 -> 388). With `overlap_tile` (the
default) the network sees the input mirrored 92 px past each border, and a few rows more at the
bottom and right where needed to reach a size the poolings divide (16 t + 124), and its logits
are cropped to the input: the paper's overlap-tile strategy at the image's border. Inside an
image the paper's tiles read real pixels there, and so do training crops with `train_context`
(the default in configs): the input pipeline cuts each crop's image 92 px wider on every side
(real image where it has it, mirrored past its border: `context_crop` in data/preprocess.py),
and in training the network reads that margin instead of mirroring the crop; crops are then
16 t + 4 px, whose valid output is the crop; sliding-window evaluation cuts its windows so too
(`given_context`, inference.py). `padding='same'` pads every conv (mmsegmentation's and scenic's
form), pads the input to a multiple of 16 at the bottom and right and crops the logits back.
`batch_norm` adds BatchNorm after every 3x3 conv (which then has no bias), as later U-Nets do;
the paper has none.
The bottom block's output is sown as `intermediates` `bottom` for inspection.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from deeplab_jax.errors import UserError
from deeplab_jax.models import cpu_kernels
from deeplab_jax.models import deeplab
from deeplab_jax.models import layers

PADDINGS = ('valid', 'same')
LEVELS = 4  # poolings
# Pixels lost per side by the valid network (572 -> 388), and its input sizes: 16 t + 124.
VALID_MARGIN = 92


def mirror_pad(x, pads):
  """NHWC `x` mirrored (without repeating the edge: numpy's 'reflect') by ((top, bottom),
  (left, right)); pads wider than the image mirror again, as tiling the image with its
  reflections would. A gather of computed rows and columns, so that the sizes may be symbolic
  (jax.export)."""
  for axis, (before, after) in zip((1, 2), pads):
    n = x.shape[axis]
    period = jnp.maximum(2 * (n - 1), 1)  # one row mirrors to itself
    i = jnp.mod(jnp.arange(n + before + after) - before, period)
    x = jnp.take(x, jnp.where(i >= n, period - i, i), axis=axis, mode='clip')
  return x


def valid_input_size(size):
  """The smallest valid-network input (16 t + 124, t >= 1) whose output covers `size` pixels,
  written as ceil(...) x 16 so that a symbolic size stays one (jax.export)."""
  return -(-(size + 2 * VALID_MARGIN - 124) // 16) * 16 + 124


class UNet(nn.Module):
  """U-Net; `__call__(images, train, return_aux)` gives logits at the input's size (float32)
  unless `overlap_tile=False` (valid padding: the network's own, smaller output), and with
  return_aux an empty list of extra losses."""
  num_classes: int
  features: int = 64
  padding: str = 'valid'
  overlap_tile: bool = True
  train_context: bool = False
  given_context: bool = False  # the input carries its margin always (sliding windows)
  batch_norm: bool = False
  dropout_rate: float = 0.5
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-5
  fine_tune_batch_norm: bool = True
  cpu_kernels: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False, return_aux: bool = False):
    with cpu_kernels.allowed(self.cpu_kernels):
      return self._forward(images, train, return_aux)

  def _forward(self, images, train, return_aux):
    valid = self.padding == 'valid'
    height, width = images.shape[1:3]
    x = images.astype(self.dtype)
    # Training crops that carry their own context (train_margin), and sliding windows cut with
    # theirs (inference.py), are the network's whole input: its logits are the valid output.
    context = valid and (self.given_context or (train and self.train_context))
    if valid and self.overlap_tile and not context:
      pads = tuple((VALID_MARGIN, valid_input_size(s) - s - VALID_MARGIN) for s in (height, width))
      x = mirror_pad(x, pads)
    elif not valid:
      x = layers.pad_to_multiple(x, 2 ** LEVELS)
    pad = 'VALID' if valid else 'SAME'
    norm = layers.make_norm(train and self.fine_tune_batch_norm, self.bn_momentum,
                            self.bn_epsilon, self.dtype)
    conv = functools.partial(layers.Conv, padding=pad, dtype=self.dtype,
                             kernel_init=nn.initializers.he_normal())

    def two_convs(x, features, name):
      for i in range(2):
        x = conv(features, (3, 3), use_bias=not self.batch_norm, name=f'{name}_conv{i + 1}')(x)
        if self.batch_norm:
          x = norm(name=f'{name}_bn{i + 1}')(x)
        x = nn.relu(x)
      return x

    skips = []
    for level in range(LEVELS):
      x = two_convs(x, self.features * 2 ** level, f'down{level + 1}')
      skips.append(x)
      if valid and (x.shape[1] % 2 or x.shape[2] % 2):
        raise UserError(f'U-Net (valid): a {images.shape[1]} x {images.shape[2]} input gives an '
                        f'odd {x.shape[1]} x {x.shape[2]} map before pooling {level + 1}; '
                        'valid inputs are 16 t + 124 (572 in the paper), training crops with '
                        'model.unet.train_context 16 t + 4, or keep overlap_tile.')
      x = layers.max_pool(x, (2, 2), strides=(2, 2))
    x = two_convs(x, self.features * 2 ** LEVELS, 'bottom')
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    self.sow('intermediates', 'bottom', x)
    for level in reversed(range(LEVELS)):
      features = self.features * 2 ** level
      x = nn.ConvTranspose(features, (2, 2), strides=(2, 2), dtype=self.dtype,
                           kernel_init=nn.initializers.he_normal(), name=f'up{level + 1}')(x)
      skip = skips[level]
      top, left = (skip.shape[1] - x.shape[1]) // 2, (skip.shape[2] - x.shape[2]) // 2
      skip = skip[:, top:top + x.shape[1], left:left + x.shape[2]]  # centre crop (valid)
      x = two_convs(jnp.concatenate([skip, x], -1), features, f'up{level + 1}')
    logits = conv(self.num_classes, (1, 1), name='classifier')(x)
    if not valid or (self.overlap_tile and not context):
      logits = logits[:, :height, :width]
    logits = logits.astype(jnp.float32)
    return (logits, []) if return_aux else logits


def train_margin(model_config: ml_collections.ConfigDict) -> int:
  """Pixels of context the input pipeline adds on each side of a training crop's image: the
  valid margin for the valid U-Net with train_context, else 0."""
  c = model_config
  return VALID_MARGIN if (c.name == 'unet' and c.unet.padding == 'valid'
                          and c.unet.train_context) else 0


def check_train_crop(model_config: ml_collections.ConfigDict, height: int, width: int) -> None:
  """A one-line error unless a training crop of height x width (after any padding for the mesh)
  is one the valid U-Net with train_context maps onto itself: 16 t + 4, t >= 1."""
  if not train_margin(model_config):
    return
  for field, size in (('height', height), ('width', width)):
    if size < 20 or size % 16 != 4:
      below = max(20, size - (size - 4) % 16)
      raise UserError(
          f'data.crop_size {field} {size}: the valid U-Net with model.unet.train_context '
          f'trains on crops of 16 t + 4 px (its output from the crop and 92 px of context), '
          f'e.g. {below} or {below + 16}; or set model.unet.train_context=False.')


def from_config(model_config: ml_collections.ConfigDict, num_classes: int) -> UNet:
  """The U-Net of model.unet (configs/common.py); model.width_multiplier scales its channels."""
  c, u = model_config, model_config.unet
  if u.padding not in PADDINGS:
    raise UserError(f'model.unet.padding={u.padding!r} is not one of {PADDINGS}.')
  if c.output_stride != 2 ** LEVELS:
    raise UserError(f'model.output_stride={c.output_stride}: U-Net has {LEVELS} poolings, '
                    f'output stride {2 ** LEVELS}; set it so.')
  if not 0 <= u.dropout_rate < 1:
    raise UserError(f'model.unet.dropout_rate={u.dropout_rate} must be in [0, 1).')
  return UNet(num_classes=num_classes,
              features=layers.scaled(u.features, c.width_multiplier, minimum=1),
              padding=u.padding, train_context=u.train_context, batch_norm=u.batch_norm,
              dropout_rate=u.dropout_rate,
              bn_momentum=c.bn_momentum, bn_epsilon=c.bn_epsilon,
              fine_tune_batch_norm=c.fine_tune_batch_norm, cpu_kernels=c.cpu_kernels,
              dtype=deeplab.DTYPES[c.dtype])


def describe(model_config):
  """README's model-table cells (backbone, context) for this network."""
  u = model_config.unet
  width = f' x{model_config.width_multiplier:g}' if model_config.width_multiplier != 1 else ''
  return (f"U-Net {u.features}-{u.features * 2 ** LEVELS}{width}",
          f"{u.padding} convs{' + BN' if u.batch_norm else ''} + skips")
