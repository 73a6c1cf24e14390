"""FastFCN's JPU (models/jpu.py): the official parameter count, the shapes it gives the head, a
small JPU against a numpy forward pass, and the settings it refuses by name."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import summary
from deeplab_jax.errors import UserError
from deeplab_jax.models import jpu
from deeplab_jax.models import registry
import numpy_nets


def _config(arg=None):
  return importlib.import_module('configs.fastfcn_ade20k').get_config(arg)


def _count(tree):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize('arg', [None, 'fcn'])
def test_the_official_jpu_has_19735552_parameters(arg):
  """../shared/REFERENCE_BASELINES.md, section 4: JPU(512) on ResNet's 512 / 1024 / 2048
  channels; summary reports it per top-level module."""
  config = _config(arg)
  r = summary.summarize(config, with_receptive_field=False)
  assert r['params_by_module']['jpu'] == 19_735_552
  assert sum(r['params_by_module'].values()) == r['params']
  assert ('aspp' in r['params_by_module']) == (arg is None)


def test_shapes_from_an_undilated_backbone_to_stride_8():
  """At 480 x 480 the backbone's stride-8/16/32 maps are 60, 30 and 15 px; JPU gives 60 x 60 x
  2048 to the head, and the logits come back at 480 x 480."""
  config = _config()
  model = registry.build_model(config.model, 150)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 480, 480, 3)))
  seen = {}

  def capture(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and isinstance(context.module, jpu.JPU):
      seen['in'] = [a.shape for a in args[0]]
      seen['out'] = out.shape
    return out

  def run(v):
    with __import__('flax').linen.intercept_methods(capture):
      return model.apply(v, jnp.zeros((1, 480, 480, 3)))
  logits = jax.eval_shape(run, variables)
  assert seen['in'] == [(1, 60, 60, 512), (1, 30, 30, 1024), (1, 15, 15, 2048)]
  assert seen['out'] == (1, 60, 60, 2048)
  assert logits.shape == (1, 480, 480, 150)


def _resize_align_corners(x, size):
  """Bilinear, corners on corners (PyTorch's align_corners=True), in numpy."""
  def axis_weights(n_in, n_out):
    src = np.arange(n_out) * (n_in - 1) / max(n_out - 1, 1)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - (src - lo)
    m[np.arange(n_out), hi] += src - lo
    return m
  rows, cols = axis_weights(x.shape[0], size[0]), axis_weights(x.shape[1], size[1])
  return np.einsum('ab,bcd,ec->aed', rows, x, cols)


def _depthwise(x, kernel, rate):
  """Depthwise 3 x 3 conv at `rate`, zero-padded to keep the size."""
  x = np.pad(x, ((rate, rate), (rate, rate), (0, 0)))
  h, w = x.shape[0] - 2 * rate, x.shape[1] - 2 * rate
  return sum(x[a * rate:a * rate + h, b * rate:b * rate + w] * kernel[a, b, 0]
             for a in range(3) for b in range(3))


def test_a_small_jpu_matches_numpy():
  """Three maps (8 x 8 x 3, 4 x 4 x 5, 2 x 2 x 6) through a JPU of width 2 at dilations 1 and 2,
  every weight and BatchNorm statistic random, at inference: the official order (stride 32's
  reduced map first), no ReLU inside the separable convs."""
  rng = np.random.default_rng(0)
  maps = [rng.normal(size=(1, s, s, c)).astype(np.float32) for s, c in ((8, 3), (4, 5), (2, 6))]
  module = jpu.JPU(features=2, dilations=(1, 2))
  shapes = module.init(jax.random.key(0), [jnp.asarray(m) for m in maps])
  variables = jax.tree.map(lambda x: rng.uniform(0.5, 1.5, x.shape), jax.device_get(shapes))
  variables = jax.tree_util.tree_map_with_path(
      lambda p, x: rng.normal(size=x.shape) * 0.5 if 'kernel' in str(p) or 'bias' in str(p)
      or 'mean' in str(p) else x, variables)
  got = np.asarray(module.apply(variables, [jnp.asarray(m) for m in maps]))[0]

  params, stats = variables['params'], variables['batch_stats']
  def bn(x, p, s):
    return (x - s['mean']) / np.sqrt(s['var'] + 1e-5) * p['scale'] + p['bias']
  reduced = []
  for name, m in zip(('conv3', 'conv4', 'conv5'), maps):
    y = numpy_nets.conv(m[0], params[name]['conv']['kernel'])
    y = np.maximum(bn(y, params[name]['bn'], stats[name]['bn']), 0)
    reduced.append(_resize_align_corners(y, (8, 8)))
  x = np.concatenate(reduced[::-1], -1)
  branches = []
  for i, rate in enumerate((1, 2)):
    p, s = params[f'dilation{i + 1}'], stats[f'dilation{i + 1}']
    y = bn(_depthwise(x, p['depthwise']['kernel'], rate), p['depthwise_bn'], s['depthwise_bn'])
    y = y @ p['pointwise']['kernel'][0, 0]
    branches.append(np.maximum(bn(y, p['pointwise_bn'], s['pointwise_bn']), 0))
  want = np.concatenate(branches, -1)
  assert got.shape == want.shape == (8, 8, 4)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_bad_settings_are_named():
  config = _config()
  config.model.output_stride = 16
  with pytest.raises(UserError, match="model.neck='jpu' reads an undilated backbone at output "
                     'stride 32.*model.output_stride=16'):
    registry.build_model(config.model, 150)
  config = _config()
  config.model.neck = 'fpn'
  with pytest.raises(UserError, match=r"model.neck='fpn' is not one of \('none', 'jpu'\)"):
    registry.build_model(config.model, 150)
  with pytest.raises(UserError, match="eval.output_stride=8: model.neck='jpu' runs its backbone"):
    registry.at_output_stride(_config().model, 8)
  config = _config()
  config.model.jpu.endpoints = ('block2', 'block3', 'block9')
  with pytest.raises(UserError, match="model.jpu.endpoints='block9' is not an endpoint"):
    jax.eval_shape(registry.build_model(config.model, 150).init, jax.random.key(0),
                   jnp.zeros((1, 64, 64, 3)))
