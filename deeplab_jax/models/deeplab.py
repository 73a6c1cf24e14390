"""Assembles every DeepLab from a config: backbone -> context module -> (decoder) -> classifier.

  v1   VGG-16 LargeFOV (fc6 at rate 12) -> 1x1 classifier              context 'none'
  v2   ResNet-101 OS8 -> ASPP-L (rates 6/12/18/24, logits summed)       context 'aspp_l'
       with multi-scale inputs (1, 0.75, 0.5) fused by max
  v3   ResNet OS16 + multi-grid -> ASPP + image pooling -> classifier   context 'aspp', or the
       cascade (backbone.extra_blocks) / stacked-rate context module for ablations
  v3+  v3 encoder (ResNet, Xception, MobileNetV2) -> decoder on stride-4 features
FastFCN puts JPU (models/jpu.py, `model.neck='jpu'`) between an undilated ResNet at output stride
32 and the context module: ASPP at the stride-8 rates, or FCN's head (context 'fcn').
torchvision's DeepLabv3 is v3 with `aspp.output_conv`, dropout 0.5 and `aux_head`.
models/registry.py chooses the backbone and calls `from_config` for every model.name here.
"""

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from deeplab_jax.errors import UserError
from deeplab_jax.models import aspp as aspp_lib
from deeplab_jax.models import cpu_kernels
from deeplab_jax.models import decoder as decoder_lib
from deeplab_jax.models import heads
from deeplab_jax.models import jpu as jpu_lib
from deeplab_jax.models import layers

# The context modules each family member may use.
HEADS = {
    'deeplabv1': ('none',),
    'deeplabv2': ('aspp_l',),
    'deeplabv3': ('aspp', 'context_module', 'fcn', 'none'),
    'deeplabv3plus': ('aspp', 'context_module', 'none'),
}
CONTEXTS = ('aspp', 'aspp_l', 'context_module', 'fcn', 'none')
NECKS = ('none', 'jpu')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class DeepLab(nn.Module):
  """A DeepLab network; logits are resized bilinearly to the input size (float32).

  `__call__(images, train, return_aux=True)` also returns the extra outputs that carry a
  loss, as (name, logits, weight): the logits of each input scale when there are several
  (v2), and the auxiliary head's logits (torchvision). With several input scales the scales
  share every weight; in training each pass updates the BatchNorm running statistics in turn
  (scale 1 first), so they average over the scales.
  `fine_tune_batch_norm=False` (TF DeepLab's flag of that name): BatchNorm normalises with its
  moving statistics in training too and leaves them unchanged; its scale and offset still train.
  `cpu_kernels`: trace the exact rewrites of models/cpu_kernels.py where JAX runs on the CPU.
  """
  num_classes: int
  backbone: Callable[..., nn.Module]
  neck: Optional[Callable[..., nn.Module]] = None
  neck_endpoints: Sequence[str] = ()
  context: Optional[Callable[..., nn.Module]] = None
  context_name: str = 'aspp'
  context_gives_logits: bool = False
  decoder: Optional[Callable[..., nn.Module]] = None
  low_level_endpoint: str = 'block1'
  aux_head: Optional[Callable[..., nn.Module]] = None
  aux_endpoint: str = ''
  aux_loss_weight: float = 0.0
  input_scales: Sequence[float] = (1.0,)
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-5
  backbone_bn_epsilon: Optional[float] = None  # None: bn_epsilon
  fine_tune_batch_norm: bool = True
  align_corners: bool = False  # resizes of input scales and logits (the public TF code's)
  cpu_kernels: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False, return_aux: bool = False):
    # Every layer traced in this block reads the switch (see cpu_kernels.active).
    with cpu_kernels.allowed(self.cpu_kernels):
      norm_train = train and self.fine_tune_batch_norm
      norm = layers.make_norm(norm_train, self.bn_momentum, self.bn_epsilon, self.dtype)
      backbone_norm = norm if self.backbone_bn_epsilon is None else layers.make_norm(
          norm_train, self.bn_momentum, self.backbone_bn_epsilon, self.dtype)
      backbone = self.backbone(norm=backbone_norm, dtype=self.dtype, name='backbone')
      neck = self.neck(norm=norm, dtype=self.dtype, name='jpu') if self.neck else None
      context = (self.context(norm=norm, dtype=self.dtype, name=self.context_name)
                 if self.context else None)
      decoder = self.decoder(norm=norm, dtype=self.dtype, name='decoder') if self.decoder else None
      classifier = (None if self.context_gives_logits else
                    layers.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='classifier'))
      aux_head = (self.aux_head(norm=norm, dtype=self.dtype, name='aux_head')
                  if self.aux_head else None)

      def forward(x, with_aux):
        endpoints = backbone(x, train=train)
        low_level = (endpoint(endpoints, self.low_level_endpoint,
                              'model.decoder.low_level_endpoint') if decoder else None)
        y = endpoints['features']
        if neck is not None:
          y = neck(tuple(endpoint(endpoints, e, 'model.jpu.endpoints')
                         for e in self.neck_endpoints), train=train)
        if context is not None:
          y = context(y, train=train)
        if classifier is not None:
          if decoder is not None:
            y = decoder(y, low_level)
          y = classifier(y)
        aux = None
        if aux_head is not None and with_aux:
          aux = aux_head(endpoint(endpoints, self.aux_endpoint, 'model.aux_head.endpoint'),
                         train=train)
        return y, aux

      size = images.shape[1:3]
      resize = functools.partial(layers.resize_bilinear, align_corners=self.align_corners)
      to_input = lambda t: resize(t.astype(jnp.float32), size)
      with_aux = return_aux or self.is_initializing()
      per_scale, aux = [], None
      for i, scale in enumerate(self.input_scales):
        x = images.astype(self.dtype)
        if scale != 1.0:
          x = resize(x, tuple(max(1, round(s * scale)) for s in size))
        logits, scale_aux = forward(x, with_aux and i == 0)
        per_scale.append(to_input(logits))
        if scale_aux is not None:
          aux = to_input(scale_aux)
      logits = per_scale[0]
      for other in per_scale[1:]:
        logits = jnp.maximum(logits, other)  # v2: multi-scale logits fused by max
      if not return_aux:
        return logits
      extra = []
      if len(per_scale) > 1:
        extra += [(f'scale_{s}', t, 1.0) for s, t in zip(self.input_scales, per_scale)]
      if aux is not None:
        extra.append(('aux_head', aux, self.aux_loss_weight))
      return logits, extra


def endpoint(endpoints, name: str, field: str):
  """The backbone's endpoint `name`; a one-line error naming the config `field` otherwise."""
  if name not in endpoints:
    raise UserError(f'{field}={name!r} is not an endpoint of the backbone; it has '
                    f'{sorted(endpoints)}.')
  return endpoints[name]


def _choice(value, valid, field):
  if value not in valid:
    raise UserError(f'{field}={value!r} is not one of {tuple(valid)}.')
  return value


def from_config(model_config: ml_collections.ConfigDict, num_classes: int,
                backbone: Callable[..., nn.Module], low_level_endpoint: str) -> DeepLab:
  """The DeepLab of `model_config` (fields as in configs/common.py) around `backbone` (a
  partial from models/registry.py), whose stride-4 endpoint is `low_level_endpoint`."""
  c = model_config
  _choice(c.name, HEADS, 'model.name')
  _choice(c.dtype, DTYPES, 'model.dtype')
  _choice(c.context, CONTEXTS, 'model.context')
  _choice(c.neck, NECKS, 'model.neck')
  if c.context not in HEADS[c.name]:
    raise UserError(f'model.context={c.context!r} does not belong to model.name={c.name!r}, '
                    f'which takes {HEADS[c.name]}.')
  scales = tuple(c.input_scales)
  if not scales or any(not 0 < s <= 4 for s in scales):
    raise UserError(f'model.input_scales={scales} needs at least one scale, each in (0, 4].')
  if c.backbone.bn_epsilon < 0:
    raise UserError(f'model.backbone.bn_epsilon={c.backbone.bn_epsilon} must be >= 0 '
                    '(0: model.bn_epsilon).')
  width = functools.partial(layers.scaled, width_multiplier=c.width_multiplier)

  neck = None
  if c.neck == 'jpu':
    if c.output_stride != 32:
      raise UserError(f"model.neck='jpu' reads an undilated backbone at output stride 32 (its "
                      f'stride-8, -16 and -32 features); model.output_stride={c.output_stride}.')
    if len(c.jpu.endpoints) != 3 or len(c.jpu.dilations) < 1:
      raise UserError(f'model.jpu.endpoints={tuple(c.jpu.endpoints)} must name the stride-8, -16 '
                      f'and -32 features; model.jpu.dilations={tuple(c.jpu.dilations)} at least '
                      'one rate.')
    layers.check_rates(tuple(c.jpu.dilations), 'model.jpu.dilations')
    neck = functools.partial(jpu_lib.JPU, features=width(c.jpu.features),
                             dilations=tuple(c.jpu.dilations))
  context, gives_logits = None, False
  if c.context == 'fcn':
    context = functools.partial(heads.FCNHead, num_classes, features=width(c.fcn_head.features),
                                dropout_rate=c.fcn_head.dropout_rate)
    gives_logits = True
  elif c.context == 'aspp':
    layers.check_rates(tuple(c.aspp.atrous_rates), 'model.aspp.atrous_rates')
    context = functools.partial(
        aspp_lib.ASPP, atrous_rates=tuple(c.aspp.atrous_rates), features=width(c.aspp.features),
        image_pooling=c.aspp.image_pooling, dropout_rate=c.aspp.dropout_rate,
        separable=c.aspp.separable, output_conv=c.aspp.output_conv)
  elif c.context == 'aspp_l':
    layers.check_rates(tuple(c.aspp.atrous_rates), 'model.aspp.atrous_rates')
    context = functools.partial(heads.ASPPL, num_classes, atrous_rates=tuple(c.aspp.atrous_rates))
    gives_logits = True
  elif c.context == 'context_module':
    layers.check_rates(tuple(c.context_module.atrous_rates), 'model.context_module.atrous_rates')
    context = functools.partial(heads.ContextModule,
                                atrous_rates=tuple(c.context_module.atrous_rates),
                                features=width(c.context_module.features))
  decoder = None
  if c.name == 'deeplabv3plus':
    decoder = functools.partial(decoder_lib.Decoder,
                                low_level_features=width(c.decoder.low_level_features),
                                features=width(c.decoder.features),
                                separable=c.decoder.separable, align_corners=c.align_corners)
  aux_head = None
  if c.aux_head.endpoint:
    aux_head = functools.partial(heads.FCNHead, num_classes, features=width(c.aux_head.features),
                                 dropout_rate=c.aux_head.dropout_rate)
  return DeepLab(num_classes=num_classes, backbone=backbone, neck=neck,
                 neck_endpoints=tuple(c.jpu.endpoints), context=context,
                 context_name=c.context, context_gives_logits=gives_logits, decoder=decoder,
                 low_level_endpoint=c.decoder.low_level_endpoint or low_level_endpoint,
                 aux_head=aux_head, aux_endpoint=c.aux_head.endpoint,
                 aux_loss_weight=c.aux_head.loss_weight, input_scales=scales,
                 bn_momentum=c.bn_momentum, bn_epsilon=c.bn_epsilon,
                 backbone_bn_epsilon=c.backbone.bn_epsilon or None,
                 fine_tune_batch_norm=c.fine_tune_batch_norm, align_corners=c.align_corners,
                 cpu_kernels=c.cpu_kernels, dtype=DTYPES[c.dtype])
