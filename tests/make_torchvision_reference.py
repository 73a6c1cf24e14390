"""Writes tests/data/torchvision_reference.npz: torchvision's own outputs for the weights that
tests/torchvision_weights.py makes from a numpy seed, so that test_convert.py checks converted
models against torchvision without torch. Run it once, with torch, outside the project's venv:

  python3 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
  /tmp/torchvenv/bin/python tests/make_torchvision_reference.py

The models are torchvision's modules (Bottleneck, ASPP, FCNHead, DeepLabV3, FCN,
IntermediateLayerGetter). torchvision's constructors fix the channel counts (ResNet's 64..512
planes, DeepLabHead's 256), so the narrow models rebuild those layers with the constructors'
own calls at width 1/8: the stem and `ResNet._make_layer` (which decides strides, dilation and
downsampling), DeepLabHead's five layers. The state dicts load with strict=True, and each
model's names match the full-width torchvision model's.
"""

import sys
import types

import numpy as np
import torch
from torch import nn

# torchvision's compiled operator registrations need a matching CUDA build; its models are
# pure Python and run without them.
sys.modules.setdefault('torchvision._meta_registrations',
                       types.ModuleType('torchvision._meta_registrations'))
# pylint: disable=g-import-not-at-top,wrong-import-position
from torchvision.models import resnet
from torchvision.models import segmentation
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation import deeplabv3 as tv_deeplabv3
from torchvision.models.segmentation import fcn as tv_fcn

import torchvision_weights as tw


def narrow_resnet(units, dilate):
  """torchvision's ResNet (Bottleneck) with every channel count scaled by tw.WIDTH."""
  s = lambda c: tw.scaled(c, tw.WIDTH)
  net = resnet.ResNet(resnet.Bottleneck, list(units), replace_stride_with_dilation=dilate)
  net.inplanes, net.dilation = s(64), 1
  net.conv1 = nn.Conv2d(3, s(64), kernel_size=7, stride=2, padding=3, bias=False)
  net.bn1 = nn.BatchNorm2d(s(64))
  net.layer1 = net._make_layer(resnet.Bottleneck, s(64), units[0])
  net.layer2 = net._make_layer(resnet.Bottleneck, s(128), units[1], stride=2, dilate=dilate[0])
  net.layer3 = net._make_layer(resnet.Bottleneck, s(256), units[2], stride=2, dilate=dilate[1])
  net.layer4 = net._make_layer(resnet.Bottleneck, s(512), units[3], stride=2, dilate=dilate[2])
  net.fc = nn.Linear(s(512) * resnet.Bottleneck.expansion, 1000)
  return net


def narrow_segmentation(fcn):
  """deeplabv3_resnet50 (or fcn_resnet50) with aux_loss, as torchvision's _deeplabv3_resnet
  and _fcn_resnet assemble them, at width tw.WIDTH."""
  s = lambda c: tw.scaled(c, tw.WIDTH)
  backbone = IntermediateLayerGetter(
      narrow_resnet(tw.SEGMENTATION_UNITS, [False, True, True]),
      return_layers={'layer4': 'out', 'layer3': 'aux'})
  c3, c4 = s(256) * 4, s(512) * 4
  aux = tv_fcn.FCNHead(c3, tw.CLASSES)
  if fcn:
    return segmentation.FCN(backbone, tv_fcn.FCNHead(c4, tw.CLASSES), aux)
  a = s(256)
  head = nn.Sequential(  # DeepLabHead(c4, classes) with ASPP's out_channels=a for its 256
      tv_deeplabv3.ASPP(c4, (12, 24, 36), out_channels=a),
      nn.Conv2d(a, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
      nn.Conv2d(a, tw.CLASSES, 1))
  return segmentation.DeepLabV3(backbone, head, aux)


def full_width(name):
  """The full-width torchvision model of the same depth, for its parameter names."""
  if name == 'resnet50':
    return resnet.ResNet(resnet.Bottleneck, list(tw.IMAGENET_UNITS))
  backbone = resnet.ResNet(resnet.Bottleneck, list(tw.SEGMENTATION_UNITS),
                           replace_stride_with_dilation=[False, True, True])
  build = tv_fcn._fcn_resnet if name == 'fcn' else tv_deeplabv3._deeplabv3_resnet
  return build(backbone, tw.CLASSES, True)


def main():
  states = tw.reference_states()
  rng = np.random.default_rng(tw.SEEDS['inputs'])
  x = rng.normal(size=tw.SEGMENTATION_INPUT).astype(np.float32)
  x_imagenet = rng.normal(size=tw.IMAGENET_INPUT).astype(np.float32)
  out = {'segmentation_input': x, 'imagenet_input': x_imagenet}
  for name, state in states.items():
    if name == 'resnet50':
      net = narrow_resnet(tw.IMAGENET_UNITS, [False, False, False])
    else:
      net = narrow_segmentation(fcn=name == 'fcn')
    assert set(net.state_dict()) == set(full_width(name).state_dict()), name
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
                        strict=True)
    net.eval()
    out[f'{name}_weights'] = np.array(tw.fingerprint(state))
    with torch.no_grad():
      if name == 'resnet50':
        t = net.maxpool(net.relu(net.bn1(net.conv1(torch.from_numpy(x_imagenet)))))
        t = net.layer4(net.layer3(net.layer2(net.layer1(t))))
        out['resnet50_layer4'] = t.numpy()
      else:
        result = net(torch.from_numpy(x))
        out[f'{name}_out'] = result['out'].numpy()
        out[f'{name}_aux'] = result['aux'].numpy()
  for key, value in out.items():
    if value.dtype.kind == 'f':
      print(f'{key}: {value.shape}, max |value| {np.abs(value).max():.3g}')
  np.savez_compressed(tw.REFERENCE, **out)
  print(f'wrote {tw.REFERENCE}')


if __name__ == '__main__':
  main()
