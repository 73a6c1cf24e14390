r"""Atrous conv as one convolution or as a sum over taps: which is faster here, shape by shape.

  python benchmarks/conv_taps.py [--cases=33x2048x256r12,65x256x256r24] [--repeats=5]

For each case (square map size x input channels x output channels, rate; batch --batch, 3 x 3
kernel, float32, "same" atrous padding) it times the forward and backward pass (the value and
both gradients) of `cpu_kernels.conv_general_dilated` twice: made to run the convolution
(`cpu_kernels.TAP_SUM_BELOW = 0`) and made to run the tap sum (`= inf`), alternating, the median of
--repeats after a warm-up. Prints one JSON object per case with both times, their ratio
(tap sum / conv), the fraction of the conv's multiply-adds that read the input, and what
`cpu_kernels.tap_sum_pays` chooses. The default cases are those `cpu_kernels.TAP_SUM_BELOW` was set
from (benchmarks/RESULTS.md, "Optimisation record", item 10).
"""

import argparse
import json
import math
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top

from deeplab_jax.models import cpu_kernels  # pylint: disable=g-import-not-at-top
from deeplab_jax.models import layers  # pylint: disable=g-import-not-at-top

DEFAULT_CASES = ('33x2048x256r6,33x2048x256r8,33x2048x256r10,33x2048x256r12,33x2048x256r24,'
                 '17x2048x256r6,65x2048x256r24,33x1024x256r12,33x512x256r12,33x512x256r24,'
                 '65x256x256r16,65x256x256r24,33x2048x48r12,14x768x48r6,14x768x48r12,'
                 '33x2048x1024r12,41x512x1024r12,33x256x48r12')


def parse_case(case: str):
  match = re.fullmatch(r'(\d+)x(\d+)x(\d+)r(\d+)', case.strip())
  if not match:
    raise ValueError(f'case {case!r}: expected SIZExCINxCOUTrRATE, such as 33x2048x256r12.')
  return tuple(int(g) for g in match.groups())


def time_case(size: int, cin: int, cout: int, rate: int, batch: int, repeats: int) -> dict:
  x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
  w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.01
  padding = layers.atrous_padding(3, rate)

  def make(threshold):
    def fwd_bwd(x, w):
      cpu_kernels.TAP_SUM_BELOW = threshold  # read while tracing
      conv = lambda x, w: cpu_kernels.conv_general_dilated(
          x, w, (1, 1), padding, rhs_dilation=(rate, rate),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      y, vjp = jax.vjp(conv, x, w)
      return y, vjp(y)
    step = jax.jit(fwd_bwd)
    jax.block_until_ready(step(x, w))
    return step

  saved = cpu_kernels.TAP_SUM_BELOW
  try:
    steps = {'conv': make(0.0), 'tap_sum': make(math.inf)}
  finally:
    cpu_kernels.TAP_SUM_BELOW = saved
  times = {name: [] for name in steps}
  for _ in range(repeats):
    for name, step in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(step(x, w))
      times[name].append(time.perf_counter() - start)
  conv_s, taps_s = (statistics.median(times[k]) for k in ('conv', 'tap_sum'))
  fraction = cpu_kernels.useful_fraction(x.shape, w.shape, padding, (rate, rate))
  return {
      'case': f'{size}x{cin}x{cout}r{rate}', 'batch': batch,
      'conv_ms': round(conv_s * 1e3, 1), 'tap_sum_ms': round(taps_s * 1e3, 1),
      'ratio': round(taps_s / conv_s, 3), 'useful_fraction': round(fraction, 3),
      'chooses_tap_sum': cpu_kernels.tap_sum_pays(x.shape, w.shape, padding, (rate, rate)),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cases', default=DEFAULT_CASES)
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  for case in args.cases.split(','):
    print(json.dumps(time_case(*parse_case(case), args.batch, args.repeats)), flush=True)


if __name__ == '__main__':
  main()
