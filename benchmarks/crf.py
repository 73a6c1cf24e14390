"""Times deeplab_jax's dense CRF against the reference C++ one (pydensecrf2) on real images.

  pip install pydensecrf2   # only for this benchmark
  python benchmarks/crf.py --images=../shared/data/camvid/CamVid/val --num_images=4

Each image is resized to --size (500 x 500 by default) and given a unary of --classes labels:
the ground truth (from the sibling `valannot` folder when there is one) made noisy, or pure
noise. Both implementations run --iterations of mean field with the same parameters (the
public DeepLab release's VOC setting by default). Printed: one JSON object with the median
seconds per image of each (after a warm-up), their ratio, the seconds of each one's setup (our
lattice build; pydensecrf2's kernels), and the fraction of pixels whose labels agree.
`--stages` adds the median milliseconds of each jitted stage of one of our iterations.
"""

import argparse
import glob
import json
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from deeplab_jax import xla_flags
from deeplab_jax.postprocess import crf as crf_lib
from deeplab_jax.postprocess import dense_crf
from deeplab_jax.postprocess import lattice as lattice_lib


def noisy_unary(label, classes: int, rng, strength: float = 2.0, noise: float = 1.5):
  """log-probabilities [H, W, classes]: +strength on the true class (if any) plus noise."""
  logits = rng.normal(0.0, noise, label.shape + (classes,)).astype(np.float32)
  valid = label < classes
  rows, cols = np.nonzero(valid)
  logits[rows, cols, label[valid]] += strength
  logits -= logits.max(-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def reference_setup(image, log_probs, p):
  import pydensecrf.densecrf as dcrf  # pylint: disable=g-import-not-at-top
  h, w, k = log_probs.shape
  crf = dcrf.DenseCRF2D(w, h, k)
  crf.setUnaryEnergy(np.ascontiguousarray(-log_probs.reshape(-1, k).T))
  crf.addPairwiseGaussian(sxy=p['s_gamma'], compat=p['w2'])
  crf.addPairwiseBilateral(sxy=p['s_alpha'], srgb=p['s_beta'],
                           rgbim=np.array(image, np.uint8, order='C'), compat=p['w1'])
  return crf


def reference_crf(image, log_probs, p):
  h, w, k = log_probs.shape
  crf = reference_setup(image, log_probs, p)
  return np.array(crf.inference(p['iterations'])).T.reshape(h, w, k)


def our_setup(image, p):
  """Our lattice build (features and both stages), timed apart from mean field."""
  valid = jax.numpy.ones(image.shape[:2], bool)
  features = crf_lib._features_one(image, valid, np.float32(p['s_alpha']),
                                   np.float32(p['s_beta']))
  return lattice_lib.build(features)


def stage_milliseconds(image, log_probs, p, repeats: int = 7):
  """Median milliseconds of each jitted stage of one mean-field iteration, each run alone on
  the inputs it gets in the real run (`--stages`)."""
  lat = our_setup(image, p)
  valid = jax.numpy.ones(image.shape[:2], bool)
  log_probs = jax.numpy.asarray(log_probs)
  mask = valid[..., None].astype(np.float32)
  bn, sn = crf_lib._norms(lattice_lib.filter_values(lat, mask),
                          crf_lib.spatial_filter(mask, p['s_gamma']), valid)
  q = crf_lib._softmax(log_probs)
  n = image.shape[0] * image.shape[1]
  chunk = min(4096, n) if jax.default_backend() == 'cpu' else n   # as filter_values
  grid = lattice_lib._splat(lat, q, bn, chunk=chunk)
  blurred = lattice_lib._blur(grid, lat.neighbours, axis=0)
  bilateral = lattice_lib._slice(lat, grid)
  rows = crf_lib._spatial_rows(q, sn, float(p['s_gamma']))
  spatial = crf_lib._spatial_columns(rows, float(p['s_gamma']))
  _, bound = crf_lib._update_exact(log_probs, bilateral, spatial, bn, sn, np.float32(p['w1']),
                                   np.float32(p['w2']))
  d1 = lat.neighbours.shape[0]
  stages = {
      'splat': lambda: lattice_lib._splat(lat, q, bn, chunk=chunk),
      f'blur ({d1} axes)': lambda: [lattice_lib._blur(blurred, lat.neighbours, axis=a)
                                    for a in range(d1)],
      'slice': lambda: lattice_lib._slice(lat, grid),
      'smoothness rows': lambda: crf_lib._spatial_rows(q, sn, float(p['s_gamma'])),
      'smoothness columns': lambda: crf_lib._spatial_columns(rows, float(p['s_gamma'])),
      'update': lambda: crf_lib._update(log_probs, bound, bilateral, spatial, bn, sn,
                                        np.float32(p['w1']), np.float32(p['w2'])),
  }
  out = {}
  for name, fn in stages.items():
    run = lambda fn=fn: jax.block_until_ready(fn())
    run()
    out[name] = round(median_seconds(run, repeats) * 1e3, 2)
  out['sum'] = round(sum(out.values()), 2)
  return out


def median_seconds(fn, repeats: int):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', required=True, help='a folder of .jpg/.png images')
  parser.add_argument('--num_images', type=int, default=4)
  parser.add_argument('--size', default='500,500', help='H,W every image is resized to')
  parser.add_argument('--classes', type=int, default=21)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--w1', type=float, default=4.0)
  parser.add_argument('--s_alpha', type=float, default=67.0)
  parser.add_argument('--s_beta', type=float, default=3.0)
  parser.add_argument('--w2', type=float, default=3.0)
  parser.add_argument('--s_gamma', type=float, default=3.0)
  parser.add_argument('--iterations', type=int, default=10)
  parser.add_argument('--stages', action='store_true',
                      help='also time each stage of one iteration on the first image')
  args = parser.parse_args(argv)
  h, w = (int(x) for x in args.size.split(','))
  p = {k: getattr(args, k) for k in ('w1', 's_alpha', 's_beta', 'w2', 's_gamma', 'iterations')}
  paths = sorted(glob.glob(os.path.join(args.images, '*.jpg')) +
                 glob.glob(os.path.join(args.images, '*.png')))[:args.num_images]
  if not paths:
    raise SystemExit(f'error: no .jpg or .png images in --images={args.images}')
  rng = np.random.default_rng(0)
  ours_s, theirs_s, agree, ours_build, theirs_setup = [], [], [], [], []
  for path in paths:
    image = np.array(Image.open(path).convert('RGB').resize((w, h), Image.BILINEAR))
    annot = os.path.join(os.path.dirname(path).rstrip('/') + 'annot',
                         os.path.splitext(os.path.basename(path))[0] + '.png')
    label = (np.asarray(Image.open(annot).resize((w, h), Image.NEAREST)).astype(np.int64)
             if os.path.exists(annot) else np.full((h, w), args.classes))
    log_probs = noisy_unary(label, args.classes, rng)
    if path == paths[0]:
      first = (image, log_probs)
    run = lambda: jax.block_until_ready(dense_crf(image, log_probs, **p))
    run()  # compile
    ours_s.append(median_seconds(run, args.repeats))
    theirs_s.append(median_seconds(lambda: reference_crf(image, log_probs, p), args.repeats))
    ours_build.append(median_seconds(lambda: jax.block_until_ready(our_setup(image, p)),
                                     args.repeats))
    theirs_setup.append(median_seconds(lambda: reference_setup(image, log_probs, p),
                                       args.repeats))
    ours = np.asarray(run()).argmax(-1)
    theirs = reference_crf(image, log_probs, p).argmax(-1)
    agree.append(float((ours == theirs).mean()))
  result = {
      'images': len(paths), 'size': [h, w], 'classes': args.classes, **p,
      'backend': jax.default_backend(), 'device': str(jax.devices()[0].device_kind),
      'ours_seconds': statistics.median(ours_s), 'pydensecrf_seconds': statistics.median(theirs_s),
      'time_ratio': statistics.median(ours_s) / statistics.median(theirs_s),
      # Setup: our lattice build; pydensecrf2's constructor, unary and both kernels. The rest
      # of each time, divided by the iterations, is the time of one iteration.
      'ours_setup_seconds': statistics.median(ours_build),
      'pydensecrf_setup_seconds': statistics.median(theirs_setup),
      'label_agreement_min': min(agree), 'label_agreement_mean': float(np.mean(agree)),
  }
  if args.stages:
    result['stage_milliseconds'] = stage_milliseconds(first[0], first[1], p)
  print(json.dumps(result, indent=1))
  return result


if __name__ == '__main__':
  xla_flags.configure_cpu()  # as deeplab_jax.main does, before JAX starts a backend
  main()
