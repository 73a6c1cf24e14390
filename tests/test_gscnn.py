"""Gated-SCNN: Canny in the graph against OpenCV's, the dual-task loss's terms against numpy and
scipy, the gated layer against numpy, the full-size network's shape stream against the official
layer sizes, training, prediction's boundary map and the errors."""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from test_export import save_initial_checkpoint

from deeplab_jax import losses
from deeplab_jax import optim
from deeplab_jax import predict
from deeplab_jax import sharding
from deeplab_jax import steps
from deeplab_jax.errors import UserError
from deeplab_jax.models import canny
from deeplab_jax.models import gscnn
from deeplab_jax.models import registry

cv2 = pytest.importorskip('cv2')
IGNORE = 255


def _config(arg='smoke'):
  return importlib.import_module('configs.gscnn_cityscapes').get_config(arg)


def _images(camvid_root=None):
  """Noise, a smooth image and, given the CamVid root, two real street scenes (360 x 480)."""
  rng = np.random.default_rng(0)
  out = [rng.integers(0, 256, (40, 50, 3), np.uint8),
         ndimage.gaussian_filter(rng.random((61, 70, 3)) * 255, (2, 2, 0)).astype(np.uint8)]
  if camvid_root:
    paths = sorted(glob.glob(os.path.join(camvid_root, 'CamVid', 'val', '*.jpg')))[:2]
    out += [np.asarray(Image.open(p).convert('RGB')) for p in paths]
    assert len(out) == 4
  return out


@pytest.mark.parametrize('thresholds', [(10, 100), (50, 150), (100, 40)])
def test_canny_equals_opencv(thresholds, camvid_root):
  images = _images(camvid_root)
  for image in images:
    want = cv2.Canny(image, *thresholds) > 0
    got = np.asarray(canny.canny(jnp.asarray(image)[None], *thresholds))[0]
    assert want.sum() > 50
    np.testing.assert_array_equal(got, want)
  # One channel, and a batch: each image on its own.
  gray = images[1][..., :1]
  np.testing.assert_array_equal(np.asarray(canny.canny(jnp.asarray(gray)[None]))[0],
                                cv2.Canny(gray[..., 0], 10, 100) > 0)
  pair = np.stack([images[0][:30, :40], images[1][:30, :40]])
  got = np.asarray(canny.canny(jnp.asarray(pair)))
  for g, im in zip(got, pair):
    np.testing.assert_array_equal(g, cv2.Canny(im, 10, 100) > 0)


def test_label_boundaries_match_distance_transforms():
  rng = np.random.default_rng(1)
  labels = np.zeros((2, 30, 40), np.int32)
  labels[0, 5:20, 8:25] = 1
  labels[0, 10:14, 28:33] = 2
  labels[0, 22:, :] = IGNORE          # void at the bottom: no boundary with it
  labels[1] = rng.integers(0, 3, (30, 40))
  labels[1, :, 30:] = IGNORE
  got = np.asarray(losses.label_boundaries(jnp.asarray(labels), IGNORE, radius=2))
  for b in range(2):
    want = np.zeros((30, 40), bool)
    for c in np.unique(labels[b]):
      if c == IGNORE:
        continue
      # Pixels of another labelled class within 2 px of class c.
      near_c = ndimage.distance_transform_edt(labels[b] != c) <= 2
      want |= near_c & (labels[b] != c) & (labels[b] != IGNORE)
    np.testing.assert_array_equal(got[b], want)
  assert got[0].sum() > 0 and not got[0, 22:].any() and not got[0, 0].any()


def test_image_weighted_cross_entropy_by_hand():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(3, 6, 7, 4)).astype(np.float32)
  labels = rng.integers(0, 3, (3, 6, 7))
  labels[0, :2] = IGNORE
  labels[2] = IGNORE                  # no labelled pixel: not in the mean
  got = float(losses.image_weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                                  IGNORE))
  per_image = []
  for b in range(2):
    y = labels[b][labels[b] != IGNORE]
    z = logits[b][labels[b] != IGNORE]
    hist = np.histogram(y, bins=range(5), density=True)[0]  # the official weights
    w = (hist != 0) * (1 - hist) + 1
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(y)), y]
    per_image.append(np.sum(w[y] * nll) / np.sum(w[y]))
  np.testing.assert_allclose(got, np.mean(per_image), rtol=1e-5)


def test_boundary_bce_is_balanced_with_one_sigmoid():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(2, 5, 6)).astype(np.float32) * 3
  t = rng.random((2, 5, 6)) < 0.2
  valid = rng.random((2, 5, 6)) < 0.9
  got = float(losses.balanced_boundary_bce(jnp.asarray(z), jnp.asarray(t), jnp.asarray(valid)))
  p = 1 / (1 + np.exp(-z.astype(np.float64)))
  bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
  pos, neg = (t & valid).sum(), (~t & valid).sum()
  w = np.where(t, neg, pos) / (pos + neg) * valid
  np.testing.assert_allclose(got, np.sum(w * bce) / (pos + neg), rtol=1e-5)


def _grad_mag_numpy(x):
  """Dollar's convTri (r = 4; scipy's 'reflect' repeats the edge pixel, as his toolbox pads),
  central differences, the magnitude less its floor, over each image's maximum."""
  f = np.array([1, 2, 3, 4, 5, 4, 3, 2, 1], np.float64) / 25
  e = ndimage.convolve1d(ndimage.convolve1d(x, f, axis=1, mode='reflect'), f, axis=2,
                         mode='reflect')
  gy, gx = np.gradient(e, axis=(1, 2))
  mag = np.sqrt(gx ** 2 + gy ** 2 + 1e-6) - 1e-3
  return mag / np.maximum(mag.max(axis=(1, 2, 3), keepdims=True), 1e-6)


def test_consistency_regulariser_takes_a_spatial_derivative():
  rng = np.random.default_rng(4)
  k = 3
  labels = np.zeros((2, 20, 24), np.int32)
  labels[:, :, 12:] = 1
  labels[1, 5:9, 3:7] = 2
  labels[1, 15:, :4] = IGNORE
  logits = rng.normal(size=(2, 20, 24, k)).astype(np.float32)
  uniform = rng.random((2, 20, 24, k)).astype(np.float32)
  got = float(losses.dual_task_consistency(jnp.asarray(logits), jnp.asarray(labels), IGNORE,
                                           jnp.asarray(uniform), tau=0.5))
  valid = (labels != IGNORE)[..., None]
  z = np.where(valid, logits, 0.0)
  y = (z - np.log(1e-10 - np.log(uniform + 1e-10))) / 0.5
  soft = np.exp(y - y.max(-1, keepdims=True))
  soft /= soft.sum(-1, keepdims=True)
  g = _grad_mag_numpy(soft)
  g_hat = _grad_mag_numpy(np.eye(k)[np.where(valid[..., 0], labels, 0)])
  diff = np.abs(g - g_hat)
  want = sum(0.5 * np.sum(diff * ((m >= 1e-8) & valid)) / (np.sum((m >= 1e-8) & valid) + 1e-10)
             for m in (g, g_hat))
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # A derivative: a constant map has none (the official no-op version gives |E| / max |E|, 1
  # everywhere), and a label map's gradient lies on its boundary only.
  flat = np.asarray(losses.gradient_magnitude(jnp.ones((1, 20, 24, 1)) * 3.0))
  np.testing.assert_allclose(flat, 0.0, atol=1e-6)
  mag = np.asarray(losses.gradient_magnitude(jnp.asarray(np.eye(2)[labels[:1] % 2])))[0, ..., 0]
  assert mag[:, 10:14].min() > 0.5 and mag[:, :4].max() < 1e-6
  # A crop of one class: no boundary in the labels, none to match once the logits agree.
  one = np.zeros((1, 20, 24), np.int32)
  assert float(losses.dual_task_consistency(jnp.asarray(np.eye(k)[one] * 30), jnp.asarray(one),
                                            IGNORE, jnp.asarray(uniform[:1]))) < 1e-3
  # Logits that are the labels (scaled) nearly cancel the loss; shuffled ones do not.
  onehot = np.eye(k)[np.where(valid[..., 0], labels, 0)] * 30
  near = float(losses.dual_task_consistency(jnp.asarray(onehot), jnp.asarray(labels), IGNORE,
                                            jnp.asarray(uniform)))
  assert near < 0.02 < got


def test_attention_regulariser_reads_confident_boundary_pixels_only():
  rng = np.random.default_rng(7)
  logits = jnp.asarray(rng.normal(size=(2, 6, 8, 3)).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, 3, (2, 6, 8)))
  # Boundary probabilities just above and below 0.8 (logit(0.8) = 1.386).
  edge = rng.choice([1.3, 1.5], size=(2, 6, 8, 1)).astype(np.float32)
  loss_config = _config().model.gscnn.loss

  def att(logits, edge):
    return losses.gscnn_losses(logits, edge, labels, IGNORE, jax.random.key(0), loss_config)['att']

  masked = np.where(edge[..., 0] > 1.386, np.asarray(labels), IGNORE)
  np.testing.assert_allclose(
      float(att(logits, jnp.asarray(edge))),
      float(losses.image_weighted_cross_entropy(logits, jnp.asarray(masked), IGNORE)), rtol=1e-6)
  # The mask is a choice of pixels, not a path for the gradient into the boundary logits.
  d_logits, d_edge = jax.grad(att, argnums=(0, 1))(logits, jnp.asarray(edge))
  assert np.abs(np.asarray(d_logits)).max() > 0 and not np.any(np.asarray(d_edge))


def test_gated_conv_against_numpy():
  rng = np.random.default_rng(5)
  s = rng.normal(size=(1, 4, 5, 3)).astype(np.float32)
  r = rng.normal(size=(1, 4, 5, 1)).astype(np.float32)
  layer = gscnn.GatedConv()
  variables = layer.init(jax.random.key(0), s, r)
  variables = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), variables)
  variables['batch_stats'] = jax.tree.map(jnp.abs, variables['batch_stats'])
  got = np.asarray(layer.apply(variables, s, r))
  p, st = variables['params'], variables['batch_stats']

  def bn(x, name):
    return ((x - st[name]['mean']) / np.sqrt(st[name]['var'] + 1e-5) * p[name]['scale'] +
            p[name]['bias'])

  a = bn(np.concatenate([s, r], -1), 'gate_bn1')
  a = np.maximum(a @ p['gate_conv1']['kernel'][0, 0] + p['gate_conv1']['bias'], 0)
  a = a @ p['gate_conv2']['kernel'][0, 0] + p['gate_conv2']['bias']
  alpha = 1 / (1 + np.exp(-bn(a, 'gate_bn2')))
  want = (s * alpha + s) @ p['conv']['kernel'][0, 0]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert 'bias' not in p['conv']


def test_full_size_network_has_the_official_layers():
  config = _config(None)
  model = registry.build_model(config.model, 19)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 720, 720, 3)))
  params = shapes['params']
  count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
  basic = lambda c: 2 * (9 * c * c + 2 * c)          # two 3x3 convs and their BN
  gate = lambda c: 2 * (c + 1) + (c + 1) ** 2 + (c + 1) + (c + 1) + 1 + 2 + c * c
  want = {'side1': 257, 'side2': 513, 'side3': 2049,   # 1x1 to one channel, with bias
          'shape_res1': basic(64), 'shape_res2': basic(32), 'shape_res3': basic(16),
          'shape_reduce1': 64 * 32 + 32, 'shape_reduce2': 32 * 16 + 16, 'shape_reduce3': 16 * 8 + 8,
          'gate1': gate(32), 'gate2': gate(16), 'gate3': gate(8), 'edge_out': 8, 'edge_fusion': 2,
          'aspp_edge': 256 + 2 * 256, 'aspp_projection': 6 * 256 * 256,
          'decoder_low_level': 64 * 48, 'classifier': 256 * 19}
  assert {name: count(params[name]) for name in want} == want

  def outputs(variables):
    logits, extra = model.apply(variables, jnp.zeros((1, 720, 720, 3)), return_aux=True)
    return logits, dict((n, t) for n, t, _ in extra)['edge']

  logits, edge = jax.eval_shape(outputs, shapes)
  assert logits.shape == (1, 720, 720, 19) and edge.shape == (1, 720, 720, 1)


def test_train_step_logs_each_term():
  config = _config()
  model = registry.build_model(config.model, 19)
  tx = optim.make_optimizer(config.optim, 10)
  schedule = optim.learning_rate_schedule(config.optim, 10)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  init, _, _ = steps.create_train_state(model, tx, config, mesh, jax.random.key(0))
  state = init(jax.random.key(0))
  labels = np.zeros((2, 65, 65), np.int32)
  labels[:, 20:45, 10:50] = 3
  labels[1, :, 60:] = IGNORE
  batch = {'image': jax.random.normal(jax.random.key(1), (2, 65, 65, 3)),
           'label': jnp.asarray(labels)}
  step = jax.jit(steps.make_train_step(model, tx, schedule, IGNORE,
                                       dual_task=steps.dual_task_loss(config)))
  _, metrics = step(state, batch, jax.random.key(0))
  terms = {k: float(metrics[f'loss_{k}']) for k in ('seg', 'edge', 'att', 'dual')}
  assert all(np.isfinite(v) for v in terms.values()) and terms['edge'] > 0
  np.testing.assert_allclose(float(metrics['loss']), sum(terms.values()), rtol=1e-5)
  # The same terms as the loss functions give on the model's outputs.
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  logits, extra = model.apply(variables, batch['image'], train=True, return_aux=True,
                              mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})[0]
  edge = losses.balanced_boundary_bce(extra[0][1][..., 0],
                                      losses.label_boundaries(batch['label'], IGNORE, 2),
                                      batch['label'] != IGNORE)
  np.testing.assert_allclose(terms['edge'], 20 * float(edge), rtol=1e-4)
  seg = losses.image_weighted_cross_entropy(logits, batch['label'], IGNORE)
  np.testing.assert_allclose(terms['seg'], float(seg), rtol=1e-4)


def test_image_edges_read_the_unnormalised_image():
  config = _config()
  model = registry.build_model(config.model, 19)
  image = np.asarray(_images()[1][:40, :48])
  mean, std = np.asarray(config.data.mean), np.asarray(config.data.std)
  x = jnp.asarray((image - mean) / std, jnp.float32)[None]
  got = np.asarray(model.image_edges(x))[0, ..., 0]
  np.testing.assert_array_equal(got > 0, cv2.Canny(image, 10, 100) > 0)
  # data.mean and data.std carry over to the model's (one reference in configs/common.py).
  config.data.mean = (1.0, 2.0, 3.0)
  assert tuple(config.model.gscnn.image_mean) == (1.0, 2.0, 3.0)


@pytest.mark.parametrize('settings, message', [
    ({'output_stride': 16}, 'output stride 8'),
    ({'backbone.name': 'xception65', 'backbone.units': ()}, 'is not a ResNet'),
    ({'gscnn.side_endpoints': ('block1', 'block2')}, 'one endpoint per gated layer'),
    ({'gscnn.shape_endpoint': 'block9'}, "'block9' is not an endpoint"),
    ({'input_scales': (1.0, 0.5)}, 'one input scale')])
def test_errors_name_the_field(settings, message):
  config = _config()
  for field, value in settings.items():
    *parents, name = field.split('.')
    target = config.model
    for p in parents:
      target = target[p]
    target[name] = value
  with pytest.raises(UserError, match=message):
    model = registry.build_model(config.model, 19)
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 65, 65, 3)))


def test_other_settings_that_do_not_apply_are_refused():
  config = _config()
  with pytest.raises(UserError, match='output stride 8 only'):
    registry.at_output_stride(config.model, 16)
  config.train.class_weights = (1.0,) * 19
  with pytest.raises(UserError, match='weights its cross-entropy per image'):
    steps.validate_config(config)


def test_predict_writes_the_boundary_map(tmp_path):
  config = _config()
  config.eval.input_scale = 1.0
  workdir = str(tmp_path / 'workdir')
  save_initial_checkpoint(config, workdir)
  inputs = tmp_path / 'in'
  inputs.mkdir()
  image = np.random.default_rng(6).integers(0, 256, (37, 50, 3), np.uint8)
  Image.fromarray(image).save(inputs / 'a.png')
  predict.predict_files(config, workdir, str(inputs), str(tmp_path / 'out'))
  boundary = np.asarray(Image.open(tmp_path / 'out' / 'a_boundary.png'))
  assert boundary.shape == (37, 50) and boundary.dtype == np.uint8
  # The shape stream's sigmoid on the image padded to the output stride (40 x 56), cropped.
  predictor = predict.Predictor(config, workdir)
  x = np.zeros((1, 40, 56, 3), np.float32)
  x[0, :37, :50] = (image - np.asarray(config.data.mean)) / np.asarray(config.data.std)
  model = registry.build_model(config.model, 19)
  _, extra = model.apply(predictor.variables, jnp.asarray(x), return_aux=True)
  want = np.round(255 / (1 + np.exp(-np.asarray(extra[0][1])[0, :37, :50, 0]))).astype(np.uint8)
  np.testing.assert_allclose(boundary, want, atol=1)
  assert boundary.max() > boundary.min()
