"""Weight conversion (deeplab_jax.convert) and starting from it (config.init_from).

The torchvision state dicts here are written by `torchvision_deeplabv3_state`, which lays out
torchvision's names and shapes by hand (for any depth and width), so these tests need no torch.
Where torch and torchvision import, a real random torchvision model is converted too and its
logits are compared with ours.
"""

import importlib
import sys
import types

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from configs import v3_torchvision
from configs import v3_voc
from deeplab_jax import convert
from deeplab_jax import pretrained
from deeplab_jax.errors import UserError


def torchvision_deeplabv3_state(units, width, classes, rng, aux=True, fc=False, head=True,
                                fcn=False):
  """torchvision's deeplabv3_resnet (or, with fcn, fcn_resnet) state dict layout: ResNet +
  DeepLabHead (FCNHead) + the auxiliary FCNHead."""
  s = lambda c: max(8, int(round(c * width)))
  sd = {}
  prefix = 'backbone.' if head else ''

  def conv(name, out, inp, k, bias=False):
    sd[name + '.weight'] = rng.normal(0, 0.2, (out, inp, k, k)).astype(np.float32)
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


def tiny_config(aux=True, fcn=False):
  return v3_torchvision.get_config('resnet50,smoke' + (',aux' if aux else '') +
                                   (',fcn' if fcn else ''))


def test_a_torchvision_fcn_converts_every_tensor(tmp_path):
  config = tiny_config(fcn=True)
  state = torchvision_deeplabv3_state(config.model.backbone.units, 0.125, 21,
                                      np.random.default_rng(4), fcn=True)
  save_file(state, str(tmp_path / 'fcn.safetensors'))
  info = convert.convert('torchvision', str(tmp_path / 'fcn.safetensors'), config,
                         str(tmp_path / 'out'))
  assert info['fresh'] == [] and info['dropped'] == []
  assert info['converted'] == sum(not k.endswith('num_batches_tracked') for k in state)


def test_a_torchvision_deeplabv3_converts_every_tensor(tmp_path):
  config = tiny_config()
  state = torchvision_deeplabv3_state(config.model.backbone.units, 0.125, 21,
                                      np.random.default_rng(0))
  save_file(state, str(tmp_path / 'model.safetensors'))
  info = convert.convert('torchvision', str(tmp_path / 'model.safetensors'), config,
                         str(tmp_path / 'out'))
  assert info['fresh'] == [] and info['dropped'] == [] and info['num_classes'] == 21
  # Every tensor but BatchNorm's counters became one variable, with its values.
  assert info['converted'] == sum(not k.endswith('num_batches_tracked') for k in state)
  variables = pretrained.load_variables(str(tmp_path / 'out'))
  stem = variables['params']['backbone']['stem_conv1']
  np.testing.assert_array_equal(stem['conv']['kernel'],
                                state['backbone.conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['batch_stats']['aspp']['image_pooling']['bn']['var'],
                                state['classifier.0.convs.4.2.running_var'])
  np.testing.assert_array_equal(variables['params']['aux_head']['classifier']['bias'],
                                state['aux_classifier.4.bias'])


def test_an_imagenet_backbone_converts_and_leaves_the_head_fresh(tmp_path):
  config = tiny_config(aux=False)
  state = torchvision_deeplabv3_state(config.model.backbone.units, 0.125, 21,
                                      np.random.default_rng(1), aux=False, fc=True, head=False)
  save_file(state, str(tmp_path / 'resnet.safetensors'))
  info = convert.convert('torchvision', str(tmp_path / 'resnet.safetensors'), config,
                         str(tmp_path / 'out'), num_classes=5)
  assert sorted(info['dropped']) == ['fc.bias', 'fc.weight']
  assert info['fresh'] and all(not k.startswith(('params/backbone', 'batch_stats/backbone'))
                               for k in info['fresh'])


@pytest.mark.parametrize('change, message', [
    (lambda sd: sd.update({'backbone.layer9.0.conv1.weight': np.zeros((1, 1, 1, 1))}),
     'layer9.0.conv1.weight'),
    (lambda sd: sd.update({'backbone.conv1.weight': np.zeros((8, 3, 5, 5), np.float32)}),
     r'stem_conv1/conv/kernel has shape \(5, 5, 3, 8\)'),
    (lambda sd: sd.update({'mystery.weight': np.zeros(3, np.float32)}), 'mystery.weight'),
])
def test_a_tensor_that_does_not_fit_is_named(tmp_path, change, message):
  config = tiny_config()
  state = torchvision_deeplabv3_state(config.model.backbone.units, 0.125, 21,
                                      np.random.default_rng(2))
  change(state)
  save_file(state, str(tmp_path / 'bad.safetensors'))
  with pytest.raises(UserError, match=message):
    convert.convert('torchvision', str(tmp_path / 'bad.safetensors'), config,
                    str(tmp_path / 'out'))


def zoo_resnet_v1_101_beta(rng):
  """The variables of DeepLab's ImageNet `resnet_v1_101_beta` checkpoint (names and shapes as
  docs/tf_zoo_notes.md lists them), with the classifier and global_step."""
  variables = {}

  def conv(scope, k, cin, cout):
    variables[f'{scope}/weights'] = rng.standard_normal((k, k, cin, cout), np.float32) * 0.05
    for leaf in ('beta', 'gamma', 'moving_mean', 'moving_variance'):
      variables[f'{scope}/BatchNorm/{leaf}'] = rng.uniform(0.5, 1.5, cout).astype(np.float32)

  root = 'resnet_v1_101'
  conv(f'{root}/conv1_1', 3, 3, 64)
  conv(f'{root}/conv1_2', 3, 64, 64)
  conv(f'{root}/conv1_3', 3, 64, 128)
  cin = 128
  for b, (depth, units) in enumerate(((64, 3), (128, 4), (256, 23), (512, 3)), 1):
    for u in range(1, units + 1):
      unit = f'{root}/block{b}/unit_{u}/bottleneck_v1'
      if u == 1:
        conv(f'{unit}/shortcut', 1, cin, 4 * depth)
      conv(f'{unit}/conv1', 1, cin, depth)
      conv(f'{unit}/conv2', 3, depth, depth)
      conv(f'{unit}/conv3', 1, depth, 4 * depth)
      cin = 4 * depth
  variables[f'{root}/logits/weights'] = np.zeros((1, 1, 2048, 1001), np.float32)
  variables[f'{root}/logits/biases'] = np.zeros(1001, np.float32)
  variables['global_step'] = np.array(30000, np.int64)
  return variables


def test_a_tf_slim_resnet_v1_101_beta_checkpoint_converts_every_variable(tmp_path):
  """A TF checkpoint written here with the zoo's names and full shapes: every variable is
  consumed (530 into the backbone; logits and global_step dropped) and none is missing."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  variables = zoo_resnet_v1_101_beta(np.random.default_rng(5))
  names = sorted(variables)
  tf.raw_ops.SaveV2(prefix=str(tmp_path / 'model.ckpt'), tensor_names=names,
                    shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(variables[n]) for n in names])
  config = v3_voc.get_config()  # ResNet-101 beta in TF-slim's layout
  info = convert.convert('tf', str(tmp_path), config, str(tmp_path / 'out'), num_classes=21)
  assert info['converted'] == 530 == len(variables) - 3
  assert sorted(info['dropped']) == ['global_step', 'resnet_v1_101/logits/biases',
                                     'resnet_v1_101/logits/weights']
  assert info['fresh'] and not [k for k in info['fresh'] if '/backbone/' in f'/{k}']
  converted = pretrained.load_variables(str(tmp_path / 'out'))
  unit = converted['params']['backbone']['block3_unit23']['conv2']
  np.testing.assert_array_equal(
      unit['conv']['kernel'], variables['resnet_v1_101/block3/unit_23/bottleneck_v1/conv2/weights'])
  np.testing.assert_array_equal(
      converted['batch_stats']['backbone']['stem_conv3']['bn']['var'],
      variables['resnet_v1_101/conv1_3/BatchNorm/moving_variance'])
  # TF weights into torchvision's stride layout would be silently wrong: refused.
  config.model.backbone.layout = 'torchvision'
  with pytest.raises(UserError, match="layout='tfslim'"):
    convert.convert('tf', str(tmp_path), config, str(tmp_path / 'out2'), num_classes=21)


def test_merge_loads_matches_and_reinitialises_a_classifier_of_other_classes():
  target = {'params': {'backbone': {'w': np.zeros((3, 4))},
                       'classifier': {'kernel': np.zeros((1, 1, 4, 5)), 'bias': np.zeros(5)},
                       'new': {'w': np.zeros(2)}},
            'batch_stats': {'backbone': {'mean': np.zeros(4)}}}
  source = {'params': {'backbone': {'w': np.ones((3, 4))},
                       'classifier': {'kernel': np.ones((1, 1, 4, 21)), 'bias': np.ones(21)},
                       'old': {'w': np.ones(2)}},
            'batch_stats': {'backbone': {'mean': np.full(4, 2.0)}}}
  merged, report = pretrained.merge(target, source)
  np.testing.assert_array_equal(merged['params']['backbone']['w'], 1.0)
  np.testing.assert_array_equal(merged['batch_stats']['backbone']['mean'], 2.0)
  np.testing.assert_array_equal(merged['params']['classifier']['bias'], np.zeros(5))
  assert report['loaded'] == ['params/backbone/w', 'batch_stats/backbone/mean']
  assert report['fresh'] == ['params/classifier/kernel (classes 21 -> 5)',
                             'params/classifier/bias (classes 21 -> 5)', 'params/new/w']
  assert report['skipped'] == ['params/old/w']
  source['params']['backbone']['w'] = np.ones((3, 7))
  with pytest.raises(UserError, match=r'params/backbone/w has shape \(3, 7\)'):
    pretrained.merge(target, source)


def test_a_run_starts_from_converted_weights_with_other_classes(tmp_path, cache_dir):
  """init_from a 21-class conversion into a synthetic-data run: the backbone and BatchNorm
  statistics are the converted ones, the classifiers are fresh with the run's class count."""
  from deeplab_jax import train  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  state = torchvision_deeplabv3_state(config.model.backbone.units, 0.125, 21,
                                      np.random.default_rng(3))
  save_file(state, str(tmp_path / 'model.safetensors'))
  convert.convert('torchvision', str(tmp_path / 'model.safetensors'), config,
                  str(tmp_path / 'converted'))
  config.data.name = 'synthetic'
  config.data.cache_dir = cache_dir
  config.init_from = str(tmp_path / 'converted')
  config.train.batch_size = config.eval.batch_size = 8  # the 8 forced CPU devices
  setup = train._Setup(config, str(tmp_path / 'run'))  # pylint: disable=protected-access
  params = jax.device_get(setup.state.params)
  stats = jax.device_get(setup.state.batch_stats)
  np.testing.assert_array_equal(params['backbone']['block2_unit1']['conv2']['conv']['kernel'],
                                state['backbone.layer2.0.conv2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(stats['aspp']['projection']['bn']['mean'],
                                state['classifier.0.project.1.running_mean'])
  classes = setup.dataset.num_classes
  assert classes != 21
  assert params['classifier']['kernel'].shape[-1] == classes
  assert params['aux_head']['classifier']['bias'].shape == (classes,)


def _import_torchvision():
  """torch + torchvision on a CPU-only machine: torchvision's compiled operator registrations
  need CUDA builds, so they are replaced by an empty module (tests only)."""
  pytest.importorskip('torch')
  sys.modules.setdefault('torchvision._meta_registrations',
                         types.ModuleType('torchvision._meta_registrations'))
  try:
    return importlib.import_module('torchvision.models.segmentation')
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f'torchvision does not import here: {e}')


def _randomise_batchnorm(net):
  """Random BatchNorm statistics and affine parameters, so that a mix-up of them shows."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.2, 0.2)
        module.running_var.uniform_(0.5, 1.5)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)


@pytest.mark.parametrize('name, variant, tolerance', [
    ('deeplabv3_resnet50', 'resnet50,aux', 1e-4),
    # Random FCN logits reach ~240 (DeepLabv3's ~17): the same 2e-6 relative agreement.
    ('fcn_resnet50', 'resnet50,aux,fcn', 1e-3)])
def test_torchvision_logits_match(tmp_path, name, variant, tolerance):
  """A random torchvision model (random BatchNorm statistics too), converted: its logits and
  ours on the same input agree to 1e-4 (max absolute, float32) for deeplabv3_resnet50
  (measured 3.0e-5), and for fcn_resnet50 within 1e-3 (measured 5.0e-4)."""
  segmentation = _import_torchvision()
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=21,
                                    aux_loss=True).eval()
  _randomise_batchnorm(net)
  torch.save(net.state_dict(), tmp_path / f'{name}.pth')
  x = np.random.default_rng(0).normal(size=(1, 3, 67, 83)).astype(np.float32)
  np.save(tmp_path / 'x.npy', x)
  info = convert.convert('torchvision', str(tmp_path / f'{name}.pth'),
                         v3_torchvision.get_config(variant), str(tmp_path / 'out'),
                         dump=f'{tmp_path}/x.npy:{tmp_path}/ours.npy')
  assert info['fresh'] == []
  with torch.no_grad():
    want = net(torch.from_numpy(x))['out'].numpy()
  got = np.load(tmp_path / 'ours.npy')
  assert got.shape == want.shape == (1, 21, 67, 83)
  print(f'{name}: max |ours - torchvision| = {np.abs(got - want).max():.2e}, '
        f'max |logit| {np.abs(want).max():.2e}')
  assert np.abs(got - want).max() < tolerance, np.abs(got - want).max()


def test_torchvision_imagenet_resnet50_features_match(tmp_path):
  """A random torchvision resnet50 (ImageNet layout, `fc` dropped) converted into our ResNet-50
  in torchvision's layout at OS32: layer4's features agree to 1e-5 of their largest value
  (measured 2.4e-3 on features reaching 1.4e3, 1.8e-6 relative; float32)."""
  _import_torchvision()
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  from deeplab_jax.models import resnet  # pylint: disable=g-import-not-at-top
  torch.manual_seed(1)
  net = torchvision.models.resnet50(weights=None).eval()
  _randomise_batchnorm(net)
  torch.save(net.state_dict(), tmp_path / 'resnet50.pth')
  config = v3_torchvision.get_config('resnet50')
  config.model.output_stride = 32
  info = convert.convert('torchvision', str(tmp_path / 'resnet50.pth'), config,
                         str(tmp_path / 'out'), num_classes=21)
  assert sorted(info['dropped']) == ['fc.bias', 'fc.weight']
  variables = pretrained.load_variables(str(tmp_path / 'out'))
  x = np.random.default_rng(0).normal(size=(1, 3, 64, 96)).astype(np.float32)
  ours = resnet.ResNet50(output_stride=32, layout='torchvision', multi_grid=None).apply(
      {'params': variables['params']['backbone'],
       'batch_stats': variables['batch_stats']['backbone']}, x.transpose(0, 2, 3, 1))
  with torch.no_grad():
    t = torch.from_numpy(x)
    t = net.maxpool(net.relu(net.bn1(net.conv1(t))))
    want = net.layer4(net.layer3(net.layer2(net.layer1(t)))).numpy().transpose(0, 2, 3, 1)
  got = np.asarray(ours['features'])
  assert got.shape == want.shape == (1, 2, 3, 2048)
  print(f'resnet50 layer4: max |ours - torchvision| = {np.abs(got - want).max():.2e}, '
        f'max |feature| {np.abs(want).max():.2e}')
  assert np.abs(got - want).max() < 1e-5 * max(1.0, np.abs(want).max()), (
      np.abs(got - want).max(), np.abs(want).max())
