"""Context modules that are not ASPP: v2's ASPP-L, the stacked-rate context module, and the
auxiliary FCN head of torchvision's DeepLabv3."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models import layers


class ASPPL(nn.Module):
  """DeepLab v2's ASPP-L: one 3x3 atrous conv per rate straight to class logits, summed.

  This is the ResNet-101 form of the v2 paper (figure 4b, section 4.3): each branch is a
  single conv with bias, and the branch logits are added.
  """
  num_classes: int
  atrous_rates: Sequence[int] = (6, 12, 18, 24)
  norm: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    layers.check_rates(tuple(self.atrous_rates), 'atrous_rates')
    logits = 0.0
    for i, rate in enumerate(self.atrous_rates):
      logits = logits + layers.Conv(self.num_classes, (3, 3),
                                padding=layers.atrous_padding(3, rate),
                                kernel_dilation=(rate, rate), dtype=self.dtype,
                                name=f'branch{i + 1}')(x)
    return logits


class ContextModule(nn.Module):
  """Stacked 3x3 convs -> BN -> ReLU with growing rates, (1, 1, 2, 4, 8, 16, 1) by default.

  The cascade counterpart to ASPP's parallel branches (Yu & Koltun's context module, as the
  v3 paper discusses it), with `features` channels in every layer.
  """
  atrous_rates: Sequence[int] = (1, 1, 2, 4, 8, 16, 1)
  features: int = 256
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    layers.check_rates(tuple(self.atrous_rates), 'context_module.atrous_rates')
    for i, rate in enumerate(self.atrous_rates):
      x = layers.ConvBN(self.features, 3, rate=rate, norm=self.norm, dtype=self.dtype,
                        name=f'conv{i + 1}')(x)
    return x


class FCNHead(nn.Module):
  """torchvision's auxiliary head: 3x3 conv -> BN -> ReLU -> dropout -> 1x1 conv to classes."""
  num_classes: int
  features: int = 256
  dropout_rate: float = 0.1
  norm: Any = layers.DEFAULT_NORM
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = layers.ConvBN(self.features, 3, norm=self.norm, dtype=self.dtype, name='conv')(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return layers.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='classifier')(x)
