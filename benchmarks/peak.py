r"""Measured peak matmul throughput of the default JAX device, for train_step's utilisation.

  python benchmarks/peak.py --dtype=bfloat16 --size=8192

Times a square matmul (2 n^3 FLOPs) of --dtype, the median of --repeats after a warm-up, and
prints {"peak_tflops": ...}: pass that as `benchmarks/train_step.py --peak_tflops`.
"""

import argparse
import json
import statistics
import time

import jax


def measure(n: int, dtype: str, repeats: int) -> dict:
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(lambda a, b: a @ b)
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  return {'device': jax.devices()[0].device_kind, 'dtype': dtype, 'size': n,
          'seconds': seconds, 'peak_tflops': 2 * n**3 / seconds / 1e12}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--size', type=int, default=8192)
  parser.add_argument('--repeats', type=int, default=10)
  args = parser.parse_args()
  print(json.dumps(measure(args.size, args.dtype, args.repeats), indent=1))


if __name__ == '__main__':
  main()
