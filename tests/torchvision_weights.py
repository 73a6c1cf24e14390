"""torchvision state dicts made from a numpy seed (numpy only: imported by test_convert.py and
by make_torchvision_reference.py, which runs torchvision on the same weights once).

The names and shapes are torchvision's `deeplabv3_resnet*`, `fcn_resnet*` and `resnet*` at any
depth (`units`) and width; `width` scales every channel count as model.width_multiplier does.
"""

import hashlib
import os

import numpy as np

# The committed outputs of torchvision (tests/make_torchvision_reference.py writes them).
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                         'torchvision_reference.npz')
WIDTH = 0.125
CLASSES = 5
# deeplabv3 / fcn: two units a block, so that a dilated layer's first unit (at the previous
# rate) and a later one (at the layer's rate) both appear; the ImageNet backbone: ResNet-50's.
SEGMENTATION_UNITS = (2, 2, 2, 2)
IMAGENET_UNITS = (3, 4, 6, 3)
SEEDS = {'deeplabv3': 10, 'fcn': 11, 'resnet50': 12, 'inputs': 13}
# NCHW inputs: the segmentation models' (odd height, even width) and the ImageNet backbone's.
SEGMENTATION_INPUT = (1, 3, 41, 54)
IMAGENET_INPUT = (1, 3, 67, 90)


def scaled(channels, width):
  """As deeplab_jax.models.layers.scaled (kept here so that no JAX is needed)."""
  return max(8, int(round(channels * width)))


def torchvision_deeplabv3_state(units, width, classes, rng, aux=True, fc=False, head=True,
                                fcn=False):
  """torchvision's deeplabv3_resnet (or, with fcn, fcn_resnet) state dict layout: ResNet +
  DeepLabHead (FCNHead) + the auxiliary FCNHead; `head=False`: an ImageNet ResNet (with `fc`).
  Conv weights are He-scaled, BatchNorm's affine parameters and running statistics random."""
  s = lambda c: scaled(c, width)
  sd = {}
  prefix = 'backbone.' if head else ''

  def conv(name, out, inp, k, bias=False):
    sd[name + '.weight'] = (rng.standard_normal((out, inp, k, k)) *
                            np.sqrt(2.0 / (inp * k * k))).astype(np.float32)
    if bias:
      sd[name + '.bias'] = rng.normal(0, 0.2, (out,)).astype(np.float32)

  def bn(name, c):
    sd[name + '.weight'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[name + '.bias'] = rng.normal(0, 0.2, c).astype(np.float32)
    sd[name + '.running_mean'] = rng.normal(0, 0.2, c).astype(np.float32)
    sd[name + '.running_var'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[name + '.num_batches_tracked'] = np.array(7, np.int64)

  conv(prefix + 'conv1', s(64), 3, 7)
  bn(prefix + 'bn1', s(64))
  inp = s(64)
  for b, n in enumerate(units):
    f = s(64 * 2**b)
    for u in range(n):
      p = f'{prefix}layer{b + 1}.{u}'
      conv(p + '.conv1', f, inp, 1), bn(p + '.bn1', f)
      conv(p + '.conv2', f, f, 3), bn(p + '.bn2', f)
      conv(p + '.conv3', 4 * f, f, 1), bn(p + '.bn3', 4 * f)
      if u == 0:
        conv(p + '.downsample.0', 4 * f, inp, 1), bn(p + '.downsample.1', 4 * f)
      inp = 4 * f
    if b == 2:
      layer3 = inp
  if fc:
    sd['fc.weight'] = rng.normal(0, 0.1, (1000, inp)).astype(np.float32)
    sd['fc.bias'] = np.zeros(1000, np.float32)
  if head and fcn:
    conv('classifier.0', inp // 4, inp, 3), bn('classifier.1', inp // 4)
    conv('classifier.4', classes, inp // 4, 1, bias=True)
  elif head:
    a = s(256)
    conv('classifier.0.convs.0.0', a, inp, 1), bn('classifier.0.convs.0.1', a)
    for i in (1, 2, 3):
      conv(f'classifier.0.convs.{i}.0', a, inp, 3), bn(f'classifier.0.convs.{i}.1', a)
    conv('classifier.0.convs.4.1', a, inp, 1), bn('classifier.0.convs.4.2', a)
    conv('classifier.0.project.0', a, 5 * a, 1), bn('classifier.0.project.1', a)
    conv('classifier.1', a, a, 3), bn('classifier.2', a)
    conv('classifier.4', classes, a, 1, bias=True)
  if aux:
    conv('aux_classifier.0', layer3 // 4, layer3, 3), bn('aux_classifier.1', layer3 // 4)
    conv('aux_classifier.4', classes, layer3 // 4, 1, bias=True)
  return sd


def reference_states():
  """{name: state dict} of the three models whose torchvision outputs are committed."""
  return {
      'deeplabv3': torchvision_deeplabv3_state(
          SEGMENTATION_UNITS, WIDTH, CLASSES, np.random.default_rng(SEEDS['deeplabv3'])),
      'fcn': torchvision_deeplabv3_state(
          SEGMENTATION_UNITS, WIDTH, CLASSES, np.random.default_rng(SEEDS['fcn']), fcn=True),
      'resnet50': torchvision_deeplabv3_state(
          IMAGENET_UNITS, WIDTH, CLASSES, np.random.default_rng(SEEDS['resnet50']), aux=False,
          fc=True, head=False),
  }


def fingerprint(state):
  """sha256 of a state dict's names and values: the reference says which weights it is for."""
  digest = hashlib.sha256()
  for name in sorted(state):
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(state[name]).tobytes())
  return digest.hexdigest()
