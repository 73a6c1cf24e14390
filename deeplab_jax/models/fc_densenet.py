"""FC-DenseNet, "the one hundred layers tiramisu" (Jegou et al., CVPRW 2017), as in its official
Theano/Lasagne code (SimJeg/FC-DenseNet).

  first conv 3x3 -> 48 maps (no activation)
  down: dense block -> (skip) -> transition down (BN-ReLU-1x1 conv-dropout-2x2 max pool),
      n_pool times
  bottleneck: dense block
  up: transition up (3x3 transposed conv of stride 2 on the previous block's *new* maps only,
      cropped to the skip's size) -> concatenated with the skip -> dense block, n_pool times
  1x1 conv -> classes

A dense block's layer is BN-ReLU-3x3 conv (growth maps)-dropout, each layer's output joining
the stack the next layer reads. FC-DenseNet103 is n_pool 5, growth 16, layers per block
(4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4); 67 has 5 everywhere and 56 has 4 with growth 12.

Differences from the official code, each for a reason: BatchNorm normalises with its moving
statistics at evaluation (the official code uses batch statistics at test time too, which makes
a pixel's prediction depend on the rest of its batch); inputs whose sides do not divide by
2**n_pool are padded at the bottom and right with zeros (the normalised mean) and the logits
cropped back, so any image size works. Each block's output (the whole stack after it) is sown
as `intermediates`, `block{i}/stack`, for inspection.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from deeplab_jax.errors import UserError
from deeplab_jax.models import cpu_kernels
from deeplab_jax.models import deeplab
from deeplab_jax.models import layers

# The official code's HeUniform(gain='relu'): uniform with variance 2 / fan_in.
_INIT = nn.initializers.he_uniform()

VARIANTS = {  # model.fc_densenet.depth -> (layers per block, growth rate)
    56: ((4,) * 11, 12),
    67: ((5,) * 11, 16),
    103: ((4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4), 16),
}


class _Layer(nn.Module):
  """BN -> ReLU -> conv -> dropout: a dense block's layer (3x3) or a transition down's (1x1)."""
  features: int
  kernel: int
  dropout_rate: float
  norm: Any
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(self.norm(name='bn')(x))
    x = layers.Conv(self.features, (self.kernel, self.kernel), padding='SAME', kernel_init=_INIT,
                    dtype=self.dtype, name='conv')(x)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class _DenseBlock(nn.Module):
  """Layers of `growth` maps, each reading the stack of the input and every layer before it.
  Returns (the stack, the layers' new maps concatenated)."""
  num_layers: int
  growth: int
  dropout_rate: float
  norm: Any
  dtype: Any

  @nn.compact
  def __call__(self, stack, train: bool):
    new = []
    for j in range(self.num_layers):
      y = _Layer(self.growth, 3, self.dropout_rate, self.norm, self.dtype, name=f'layer{j}')(
          stack, train)
      new.append(y)
      stack = jnp.concatenate([stack, y], -1)
    self.sow('intermediates', 'stack', stack)
    return stack, jnp.concatenate(new, -1)


class FCDenseNet(nn.Module):
  """FC-DenseNet; `__call__(images, train, return_aux)` gives logits at the input's size
  (float32), and with return_aux an empty list of extra losses."""
  num_classes: int
  block_layers: Sequence[int] = VARIANTS[103][0]
  growth: int = 16
  first_features: int = 48
  dropout_rate: float = 0.2
  bn_momentum: float = 0.9  # Lasagne's BatchNormLayer: alpha 0.1
  bn_epsilon: float = 1e-4
  fine_tune_batch_norm: bool = True
  cpu_kernels: bool = True  # models/cpu_kernels.py's exact rewrites where JAX runs on the CPU
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False, return_aux: bool = False):
    with cpu_kernels.allowed(self.cpu_kernels):
      return self._forward(images, train, return_aux)

  def _forward(self, images, train, return_aux):
    n_pool = len(self.block_layers) // 2
    stride = 2 ** n_pool
    height, width = images.shape[1:3]
    x = layers.pad_to_multiple(images.astype(self.dtype), stride)
    norm = layers.make_norm(train and self.fine_tune_batch_norm, self.bn_momentum,
                            self.bn_epsilon, self.dtype)

    def block(stack, index):
      stack, new = _DenseBlock(self.block_layers[index], self.growth, self.dropout_rate, norm,
                               self.dtype, name=f'block{index}')(stack, train)
      return stack, new

    stack = layers.Conv(self.first_features, (3, 3), padding='SAME', kernel_init=_INIT,
                        dtype=self.dtype, name='first_conv')(x)
    skips = []
    for i in range(n_pool):
      stack, _ = block(stack, i)
      skips.append(stack)
      stack = _Layer(stack.shape[-1], 1, self.dropout_rate, norm, self.dtype,
                     name=f'down{i}')(stack, train)
      stack = layers.max_pool(stack, (2, 2), strides=(2, 2))
    stack, new = block(stack, n_pool)
    for i in range(n_pool):
      skip = skips[-1 - i]
      # Only the last block's new maps go up (the paper: upsampling the whole stack would
      # grow the channels past what memory allows); 'VALID' gives 2H + 1 rows, cropped as the
      # official code's centre crop does (its offset is 0 for one extra row).
      up = nn.ConvTranspose(new.shape[-1], (3, 3), strides=(2, 2), padding='VALID',
                            kernel_init=_INIT, dtype=self.dtype, name=f'up{i}')(new)
      up = up[:, :skip.shape[1], :skip.shape[2]]
      stack, new = block(jnp.concatenate([up, skip], -1), n_pool + 1 + i)
    logits = layers.Conv(self.num_classes, (1, 1), kernel_init=_INIT, dtype=self.dtype,
                         name='classifier')(stack)
    logits = logits[:, :height, :width].astype(jnp.float32)
    return (logits, []) if return_aux else logits


def from_config(model_config: ml_collections.ConfigDict, num_classes: int) -> FCDenseNet:
  """The FC-DenseNet of model.fc_densenet (configs/common.py); model.width_multiplier scales the
  growth rate and the first conv (tiny test models)."""
  c, f = model_config, model_config.fc_densenet
  if f.depth not in VARIANTS:
    raise UserError(f'model.fc_densenet.depth={f.depth!r} is not one of {tuple(VARIANTS)}.')
  block_layers, growth = VARIANTS[f.depth]
  if f.block_layers:
    block_layers = tuple(f.block_layers)
    if len(block_layers) % 2 == 0 or any(not isinstance(n, int) or n < 1 for n in block_layers):
      raise UserError(f'model.fc_densenet.block_layers={block_layers} needs an odd number of '
                      'blocks (down, bottleneck, up), each of at least one layer.')
  n_pool = len(block_layers) // 2
  if c.output_stride != 2 ** n_pool:
    raise UserError(f'model.output_stride={c.output_stride}: FC-DenseNet with {n_pool} '
                    f'poolings has output stride {2 ** n_pool}; set it so.')
  if not 0 <= f.dropout_rate < 1:
    raise UserError(f'model.fc_densenet.dropout_rate={f.dropout_rate} must be in [0, 1).')
  width = functools.partial(layers.scaled, width_multiplier=c.width_multiplier, minimum=1)
  return FCDenseNet(num_classes=num_classes, block_layers=block_layers,
                    growth=width(f.growth or growth), first_features=width(f.first_features),
                    dropout_rate=f.dropout_rate, bn_momentum=c.bn_momentum,
                    bn_epsilon=c.bn_epsilon, fine_tune_batch_norm=c.fine_tune_batch_norm,
                    cpu_kernels=c.cpu_kernels, dtype=deeplab.DTYPES[c.dtype])


def describe(model_config):
  """README's model-table cells (backbone, context) for this network."""
  width = f' x{model_config.width_multiplier:g}' if model_config.width_multiplier != 1 else ''
  return f'FC-DenseNet{model_config.fc_densenet.depth}{width}', 'dense blocks + skips'
