"""Weight conversion (deeplab_jax.convert) and starting from it (config.init_from).

The torchvision state dicts here are made from a numpy seed by tests/torchvision_weights.py,
which lays out torchvision's names and shapes by hand (for any depth and width), so these
tests need no torch. torchvision's own outputs for some of them, made once with torch by
tests/make_torchvision_reference.py, are committed in tests/data/torchvision_reference.npz;
the converted models are checked against those.
"""

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from configs import v3_torchvision
from configs import v3_voc
from deeplab_jax import convert
from deeplab_jax import pretrained
from deeplab_jax.errors import UserError
from deeplab_jax.models import registry
from deeplab_jax.models import resnet
import torchvision_weights as tw
from torchvision_weights import torchvision_deeplabv3_state


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


def _reference(name):
  """The committed torchvision outputs, checked to be those of `name`'s weights here."""
  reference = np.load(tw.REFERENCE)
  state = tw.reference_states()[name]
  assert str(reference[f'{name}_weights']) == tw.fingerprint(state), (
      'tests/torchvision_weights.py makes other weights than those of the committed '
      'reference: rerun tests/make_torchvision_reference.py (with torch).')
  return reference, state


@pytest.mark.parametrize('name, variant', [('deeplabv3', 'resnet50,aux'),
                                           ('fcn', 'resnet50,aux,fcn')])
def test_converted_torchvision_models_give_torchvisions_logits(tmp_path, name, variant):
  """deeplabv3_resnet50 and fcn_resnet50 with aux heads (width 1/8, two units a block, random
  BatchNorm statistics), converted from .safetensors: our logits and auxiliary logits match
  those torchvision computed for the same weights (tests/data/torchvision_reference.npz) to
  1e-5 of their largest value. Measured (float32, relative to logits reaching 100-170):
  1.2e-6 and 9.9e-7 (deeplabv3 out, aux), 7.7e-7 and 4.7e-7 (fcn)."""
  reference, state = _reference(name)
  save_file(state, str(tmp_path / f'{name}.safetensors'))
  config = v3_torchvision.get_config(variant)
  config.model.width_multiplier = tw.WIDTH
  config.model.backbone.units = tw.SEGMENTATION_UNITS
  np.save(tmp_path / 'x.npy', reference['segmentation_input'])
  info = convert.convert('torchvision', str(tmp_path / f'{name}.safetensors'), config,
                         str(tmp_path / 'out'), dump=f'{tmp_path}/x.npy:{tmp_path}/ours.npy')
  assert info['fresh'] == [] and info['dropped'] == [] and info['num_classes'] == tw.CLASSES
  assert info['converted'] == sum(not k.endswith('num_batches_tracked') for k in state)
  want = reference[f'{name}_out']
  got = np.load(tmp_path / 'ours.npy')
  assert got.shape == want.shape == (1, tw.CLASSES) + tw.SEGMENTATION_INPUT[2:]
  # The auxiliary head's logits too (return_aux), NHWC.
  model = registry.build_model(config.model, tw.CLASSES)
  _, extra = model.apply(pretrained.load_variables(str(tmp_path / 'out')),
                         reference['segmentation_input'].transpose(0, 2, 3, 1), train=False,
                         return_aux=True)
  (aux_name, aux, _), = extra
  assert aux_name == 'aux_head'
  for ours, theirs, what in [(got, want, 'out'),
                             (np.asarray(aux).transpose(0, 3, 1, 2), reference[f'{name}_aux'],
                              'aux')]:
    scale, error = np.abs(theirs).max(), np.abs(ours - theirs).max()
    print(f'{name} {what}: max |ours - torchvision| {error:.2e}, max |logit| {scale:.2e}')
    assert scale > 1.0 and error < 1e-5 * scale, (what, error, scale)


def test_a_converted_torchvision_resnet50_gives_torchvisions_features(tmp_path):
  """An ImageNet ResNet-50 (all 16 units, width 1/8, random BatchNorm statistics; `fc`
  dropped) converted into our ResNet-50 in torchvision's layout at OS32: layer4's features
  match torchvision's (tests/data/torchvision_reference.npz) to 1e-5 of their largest value
  (measured 1.9e-2 on features reaching 2.0e4: 9.5e-7, float32)."""
  reference, state = _reference('resnet50')
  save_file(state, str(tmp_path / 'resnet50.safetensors'))
  config = v3_torchvision.get_config('resnet50')
  config.model.output_stride = 32
  config.model.width_multiplier = tw.WIDTH
  info = convert.convert('torchvision', str(tmp_path / 'resnet50.safetensors'), config,
                         str(tmp_path / 'out'), num_classes=tw.CLASSES)
  assert sorted(info['dropped']) == ['fc.bias', 'fc.weight']
  assert info['fresh'] and all(not k.startswith(('params/backbone', 'batch_stats/backbone'))
                               for k in info['fresh'])
  variables = pretrained.load_variables(str(tmp_path / 'out'))
  ours = resnet.ResNet50(output_stride=32, layout='torchvision', multi_grid=None,
                         width_multiplier=tw.WIDTH).apply(
      {'params': variables['params']['backbone'],
       'batch_stats': variables['batch_stats']['backbone']},
      reference['imagenet_input'].transpose(0, 2, 3, 1))
  got = np.asarray(ours['features']).transpose(0, 3, 1, 2)
  want = reference['resnet50_layer4']
  assert got.shape == want.shape == (1, 256, 3, 3)
  scale, error = np.abs(want).max(), np.abs(got - want).max()
  print(f'resnet50 layer4: max |ours - torchvision| {error:.2e}, max |feature| {scale:.2e}')
  assert error < 1e-5 * scale, (error, scale)
