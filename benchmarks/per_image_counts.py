"""What eval.per_image_counts adds to an evaluation: metrics.per_image_counts against the
confusion matrix every evaluation computes anyway, jitted, on random label maps.

  python benchmarks/per_image_counts.py [--runs=5]

Prints one JSON object: for 8 x 360 x 480 maps with 11 classes (CamVid's eval batch) and
8 x 512 x 512 with 150 (ADE20K's), the median milliseconds of each over --runs after one.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from deeplab_jax import metrics


def milliseconds(fn, *args, runs: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', type=int, default=5)
  args = parser.parse_args(argv)
  out = {}
  for k, shape in ((11, (8, 360, 480)), (150, (8, 512, 512))):
    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.integers(0, k, shape), jnp.int32)
    predictions = jnp.asarray(rng.integers(0, k, shape), jnp.int32)
    per_image = jax.jit(lambda l, p, k=k: metrics.per_image_counts(l, p, k))
    confusion = jax.jit(lambda l, p, k=k: metrics.confusion_matrix(l, p, k, jnp.ones_like(l)))
    out[f'{k} classes, {"x".join(map(str, shape))}'] = {
        'per_image_counts_ms': milliseconds(per_image, labels, predictions, runs=args.runs),
        'confusion_matrix_ms': milliseconds(confusion, labels, predictions, runs=args.runs)}
  print(json.dumps(out, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
