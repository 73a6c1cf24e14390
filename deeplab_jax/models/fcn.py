"""FCN-32s, FCN-16s and FCN-8s on VGG-16 (Long, Shelhamer and Darrell, CVPR 2015), as the
reference Caffe code (shelhamer/fcn.berkeleyvision.org, voc-fcn*s) builds them.

  VGG-16: thirteen 3x3 convs (with bias) in five groups, each followed by a 2x2 max pool of
      stride 2; fc6 a 7x7 conv of 4096, fc7 a 1x1 conv of 4096, each with ReLU and dropout 0.5
  score_fr: 1x1 conv 4096 -> classes
  32s: upsampled x32 by a 64 x 64 transposed conv
  16s: upsampled x2 (4 x 4), plus score_pool4 (1x1 conv on pool4), then x16 (32 x 32)
  8s:  x2, plus score_pool4, x2, plus score_pool3 (1x1 conv on pool3), then x8 (16 x 16)

Score layers start at zero (Caffe's default filler). The transposed convs start as bilinear
interpolation on the class diagonal (the reference code's `surgery.upsample_filt`) and have no
bias; `learn_upsampling=False` (the reference code's lr_mult 0) keeps them as that constant,
outside the parameters, True makes them parameters that start there (the CVPR paper's).
`at_once` scales pool4 by 0.01 and pool3 by 1e-4 before their score layers (voc-fcn8s-atonce).

`padding='reference'`: conv1_1 padded by 100, the other convs by 1, ceil-mode pooling, fc6
unpadded, and each fused map cropped at the reference code's fixed offsets (score_pool4 at 5,
score_pool3 at 9; the logits at 31 for 8s, 27 for 16s, 19 for 32s): a 500 x 500 image gives
500 x 500 logits through pools of 349, 175, 88, 44 and 22. `padding='same'`: every conv keeps its
size, so the maps halve exactly on inputs that divide by 32 (others are padded at the bottom and
right with zeros and the logits cropped back), and each transposed conv is cropped by
(kernel - stride) / 2 to an exact multiple. Pool outputs and fc7's are sown as `intermediates`
(`pool1`..`pool5`, `fc7_out`) for inspection.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deeplab_jax.errors import UserError
from deeplab_jax.models import cpu_kernels
from deeplab_jax.models import deeplab
from deeplab_jax.models import layers
from deeplab_jax.models import vgg

VARIANTS = ('fcn32s', 'fcn16s', 'fcn8s')
PADDINGS = ('reference', 'same')
# The reference code's crop offsets (voc-fcn*s/val.prototxt, from Caffe's coord_map).
OFFSETS = {'fcn32s': {'score': 19}, 'fcn16s': {'pool4': 5, 'score': 27},
           'fcn8s': {'pool4': 5, 'pool3': 9, 'score': 31}}


def upsample_filter(size: int) -> np.ndarray:
  """The 1-D profile of a bilinear upsampling kernel of `size` taps (surgery.upsample_filt)."""
  factor = (size + 1) // 2
  centre = factor - 1 if size % 2 == 1 else factor - 0.5
  return 1 - np.abs(np.arange(size) - centre) / factor


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
  """[size, size, channels, channels]: the bilinear filter on the class diagonal, zero off it."""
  profile = upsample_filter(size)
  kernel = np.zeros((size, size, channels, channels), np.float32)
  kernel[:, :, np.arange(channels), np.arange(channels)] = np.outer(profile, profile)[..., None]
  return kernel


class Upsample(nn.Module):
  """A transposed conv of `factor` (kernel 2 factor, no bias), bilinear at the start; 'VALID':
  (in - 1) factor + 2 factor rows out, as Caffe's Deconvolution."""
  factor: int
  learn: bool
  dtype: Any

  @nn.compact
  def __call__(self, x):
    size, channels = 2 * self.factor, x.shape[-1]
    if self.learn:
      return nn.ConvTranspose(channels, (size, size), strides=(self.factor, self.factor),
                              padding='VALID', use_bias=False, dtype=self.dtype,
                              kernel_init=lambda *_: jnp.asarray(bilinear_kernel(size, channels)),
                              name='deconv')(x)
    # The kernel is symmetric, so flax's orientation and Caffe's agree.
    kernel = jnp.asarray(bilinear_kernel(size, channels), self.dtype)
    return jax.lax.conv_transpose(x, kernel, (self.factor, self.factor), 'VALID',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class FCN(nn.Module):
  """FCN on VGG-16; `__call__(images, train, return_aux)` gives logits at the input's size
  (float32), and with return_aux an empty list of extra losses."""
  num_classes: int
  variant: str = 'fcn8s'
  padding: str = 'reference'
  learn_upsampling: bool = False
  at_once: bool = False
  dropout_rate: float = 0.5
  width_multiplier: float = 1.0
  cpu_kernels: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False, return_aux: bool = False):
    with cpu_kernels.allowed(self.cpu_kernels):
      return self._forward(images, train, return_aux)

  def _forward(self, images, train, return_aux):
    reference = self.padding == 'reference'
    height, width = images.shape[1:3]
    x = images.astype(self.dtype)
    if not reference:
      x = layers.pad_to_multiple(x, 32)
    w = functools.partial(layers.scaled, width_multiplier=self.width_multiplier)
    conv = functools.partial(layers.Conv, dtype=self.dtype)
    pools = {}
    for g, (channels, convs) in enumerate(vgg.GROUPS):
      for i in range(convs):
        pad = 100 if reference and g == 0 and i == 0 else 1
        x = nn.relu(conv(w(channels), (3, 3), padding=((pad, pad), (pad, pad)),
                         name=f'conv{g + 1}_{i + 1}')(x))
      # Caffe pools in ceil mode: an odd last row or column forms a window of its own.
      ceil = ((0, x.shape[1] % 2), (0, x.shape[2] % 2)) if reference else 'VALID'
      x = layers.max_pool(x, (2, 2), strides=(2, 2), padding=ceil)
      pools[f'pool{g + 1}'] = x
      self.sow('intermediates', f'pool{g + 1}', x)
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
    x = dropout(nn.relu(conv(w(4096), (7, 7), padding='VALID' if reference else 'SAME',
                             name='fc6')(x)))
    x = dropout(nn.relu(conv(w(4096), (1, 1), name='fc7')(x)))
    self.sow('intermediates', 'fc7_out', x)
    score = functools.partial(conv, self.num_classes, (1, 1), kernel_init=nn.initializers.zeros)
    x = score(name='score_fr')(x)
    offsets = OFFSETS[self.variant]

    def crop(t, offset, size):
      return t[:, offset:offset + size[0], offset:offset + size[1]]

    def up(t, factor, name):
      size = [s * factor for s in t.shape[1:3]]
      t = Upsample(factor, self.learn_upsampling, self.dtype, name=name)(t)
      return t if reference else crop(t, factor // 2, size)

    scales = {'pool4': 0.01, 'pool3': 1e-4} if self.at_once else {}
    for pool, name in (('pool4', 'upscore2'), ('pool3', 'upscore_pool4')):
      if pool not in offsets:
        break
      x = up(x, 2, name)
      skip = pools[pool] * scales.get(pool, 1.0)
      skip = score(name=f'score_{pool}')(skip)
      skip = crop(skip, offsets[pool] if reference else 0, x.shape[1:3])
      x = x + skip
    factor = {'fcn32s': 32, 'fcn16s': 16, 'fcn8s': 8}[self.variant]
    x = up(x, factor, {'fcn32s': 'upscore', 'fcn16s': 'upscore16', 'fcn8s': 'upscore8'}[
        self.variant])
    logits = crop(x, offsets['score'] if reference else 0, (height, width))
    logits = logits.astype(jnp.float32)
    return (logits, []) if return_aux else logits


def from_config(model_config: ml_collections.ConfigDict, num_classes: int) -> FCN:
  """The FCN of model.fcn (configs/common.py)."""
  c, f = model_config, model_config.fcn
  if f.variant not in VARIANTS:
    raise UserError(f'model.fcn.variant={f.variant!r} is not one of {VARIANTS}.')
  if f.padding not in PADDINGS:
    raise UserError(f'model.fcn.padding={f.padding!r} is not one of {PADDINGS}.')
  if f.at_once and f.variant != 'fcn8s':
    raise UserError(f'model.fcn.at_once=True scales pool4 and pool3 for FCN-8s; '
                    f'model.fcn.variant={f.variant!r} has no pool3 skip.')
  if c.output_stride != 32:
    raise UserError(f'model.output_stride={c.output_stride}: FCN on VGG-16 has output stride '
                    '32; set it so.')
  if not 0 <= f.dropout_rate < 1:
    raise UserError(f'model.fcn.dropout_rate={f.dropout_rate} must be in [0, 1).')
  return FCN(num_classes=num_classes, variant=f.variant, padding=f.padding,
             learn_upsampling=f.learn_upsampling, at_once=f.at_once, dropout_rate=f.dropout_rate,
             width_multiplier=c.width_multiplier, cpu_kernels=c.cpu_kernels,
             dtype=deeplab.DTYPES[c.dtype])


def describe(model_config):
  """README's model-table cells (backbone, context) for this network."""
  f = model_config.fcn
  width = f' x{model_config.width_multiplier:g}' if model_config.width_multiplier != 1 else ''
  heads = {'fcn32s': 'x32', 'fcn16s': 'pool4 skip', 'fcn8s': 'pool4 + pool3 skips'}[f.variant]
  return (f'vgg16{width}', f"{f.variant.replace('fcn', 'FCN-')} ({heads}, "
          f"{f.padding} padding{', at once' if f.at_once else ''})")
