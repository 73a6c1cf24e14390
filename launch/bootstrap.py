"""Bootstrap intervals for mIoU over training seeds and evaluation images (launch/summarize.py).

A setting is run with several seeds and each run is scored on the same images; evaluation
keeps each image's per-class pixel counts (deeplab_jax/metrics.py's per_image_counts). One
resample draws, in this order from one numpy Generator:
  1. the images: ceil(N / L) block starts uniformly from 0..N-L, each taking L consecutive
     images, cut to N (a moving block bootstrap: neighbouring video frames are not
     independent, so they are drawn together); the same images for every setting;
  2. for each setting in turn, its runs: as many as it has, uniformly with replacement.
The setting's statistic is the mean over the drawn runs of each run's mIoU on the drawn images
(the counts added over them, as the confusion matrix adds pixels). Intervals are percentiles of
the statistic; a difference between two settings is paired on images (the same draw), its runs
drawn apart.
"""

import math
from typing import Dict, List, Sequence

import numpy as np

WHAT_IT_COVERS = (
    'Intervals: percentile bootstrap over {resamples} resamples (random seed {seed}), each '
    'drawing every setting\'s runs (seeds) with replacement and the evaluation images in '
    'blocks of {block} consecutive images (neighbouring video frames are not independent); '
    'differences are paired on the images. They cover the spread from training seeds and '
    'from which images of this split are scored. They do not cover other data sets or splits, '
    'a recipe tuned on this split, other step budgets, or run-to-run noise a seed does not '
    'fix; with 2-3 seeds a bootstrap of the seeds is narrower than the truth. Pairs: Holm '
    'over the {pairs} pairs; each pair\'s interval is at the level Holm\'s step gives it, and '
    '"real" means Holm rejects "no difference" at {alpha:g}.')


def miou(truth: np.ndarray, predicted: np.ndarray, both: np.ndarray) -> np.ndarray:
  """mIoU over the last axis (classes) of summed counts, classes with an empty union left out."""
  union = truth + predicted - both
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, both / np.maximum(union, 1), np.nan)
  return np.nanmean(iou, axis=-1)


def block_starts(rng: np.random.Generator, n: int, block: int) -> np.ndarray:
  """Step 1 of a resample: the starts of ceil(n / block) blocks (block cut to n)."""
  block = min(block, n)
  return rng.integers(0, n - block + 1, size=math.ceil(n / block))


def resample_statistics(settings: Sequence[np.ndarray], block: int, resamples: int,
                        seed: int) -> np.ndarray:
  """[resamples, settings] bootstrap statistics; settings[i] is [runs, N, 3, K] per-image
  counts (the same N images, in the same order, for every run of every setting)."""
  n = settings[0].shape[1]
  if any(s.shape[1] != n for s in settings):
    raise ValueError(f'the settings were scored on {[s.shape[1] for s in settings]} images: '
                     'intervals need the same images for all.')
  block = min(block, n)
  last = n - block * (math.ceil(n / block) - 1)  # images the last block keeps
  # Prefix sums over images: a block's counts are a difference of two of them.
  prefix = [np.concatenate([np.zeros_like(s[:, :1]), np.cumsum(s, axis=1)], axis=1)
            for s in settings]
  rng = np.random.default_rng(seed)
  out = np.empty((resamples, len(settings)))
  for b in range(resamples):
    starts = block_starts(rng, n, block)
    ends = starts + block
    ends[-1] = starts[-1] + last
    for i, p in enumerate(prefix):
      runs = rng.integers(0, p.shape[0], size=p.shape[0])
      summed = (p[:, ends] - p[:, starts]).sum(axis=1)  # [runs, 3, K]
      out[b, i] = miou(*np.moveaxis(summed[runs], 1, 0)).mean()
  return out


def interval(values: np.ndarray, level: float):
  """The central percentile interval of `values` at `level`."""
  tail = (1 - level) / 2
  low, high = np.quantile(values, [tail, 1 - tail])
  return float(low), float(high)


def holm(p_values: Sequence[float], alpha: float) -> List[Dict]:
  """Holm's step-down test: for each p-value (in the given order) its adjusted p, the level
  its step tests at (alpha / (m - rank)), and whether it is rejected."""
  m = len(p_values)
  order = sorted(range(m), key=lambda i: p_values[i])
  out = [None] * m
  running, rejecting = 0.0, True
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p_values[i]))
    step_alpha = alpha / (m - rank)
    rejecting = rejecting and p_values[i] <= step_alpha
    out[i] = {'p_holm': running, 'alpha': step_alpha, 'real': rejecting}
  return out


def compare(means: Sequence[float], stats: np.ndarray, level: float) -> List[Dict]:
  """For each pair i < j of settings: the difference of their means (i minus j), its
  bootstrap p-value (twice the smaller tail of the resampled differences about 0, as
  (1 + count) / (1 + resamples)), Holm's
  adjustment over all pairs and the interval at the level of that pair's Holm step."""
  pairs = []
  for i in range(len(means)):
    for j in range(i + 1, len(means)):
      d = stats[:, i] - stats[:, j]
      # Each tail counts the observed difference's side as one more resample, so that p is
      # never 0 from a finite number of resamples.
      tail = min(np.sum(d <= 0), np.sum(d >= 0))
      p = min(1.0, 2 * (1 + tail) / (1 + len(d)))
      pairs.append({'a': i, 'b': j, 'difference': means[i] - means[j], 'p': float(p), 'd': d})
  for pair, test in zip(pairs, holm([p['p'] for p in pairs], 1 - level)):
    pair.update(test)
    pair['low'], pair['high'] = interval(pair.pop('d'), 1 - pair['alpha'])
  return pairs
