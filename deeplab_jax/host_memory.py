"""Keeps the host memory that glibc's malloc frees, for XLA:CPU's per-step buffers.

XLA:CPU takes each step's large buffers from malloc and frees them at the end of the step.
glibc serves every block over its mmap threshold (at most 32 MiB) with a fresh mmap and
unmaps it on free, so each step faults all of those pages in again: in the CamVid CPU recipe,
over a hundred thousand page faults a step, up to a fifth of the step's time on two cores
(figures and commands: benchmarks/RESULTS.md, "Optimisation record", item 8).
`retain_freed_memory` asks glibc to serve every block from its main heap, never to map one
apart, and not to give the heap's free top back to the system, so the second step reuses the
first step's pages. The process then holds its peak host memory until it exits, and one heap
fragments more, so peak RSS is higher (by about a third in the runs of that item).
`--retain_host_memory=false` leaves malloc as it is.
"""

import ctypes
import ctypes.util
import glob
import os

from absl import logging

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def retain_freed_memory() -> bool:
  """Tells glibc's malloc to keep freed memory for reuse; False where there is no glibc.

  Call it early, before the threads that will allocate exist: the one-arena setting holds for
  arenas made after it."""
  name = ctypes.util.find_library('c')
  try:
    mallopt = ctypes.CDLL(name).mallopt
  except (OSError, AttributeError, TypeError):
    logging.info('No glibc mallopt here (%s): host memory left to the default allocator.', name)
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  done = all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
  if not done:
    logging.warning('glibc mallopt refused a setting: host memory partly left as it was.')
  return done


def runs_on_cpu() -> bool:
  """Whether JAX will run on the host's CPU, judged without starting a backend (which must
  come after `retain_freed_memory`): JAX_PLATFORMS says cpu, or there is no GPU or TPU."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  accelerators = glob.glob('/dev/nvidia[0-9]*') + glob.glob('/dev/accel*') + glob.glob(
      '/dev/kfd')
  return not accelerators


def configure(setting: str) -> bool:
  """Applies the --retain_host_memory flag: 'auto' (on where JAX runs on the CPU), 'true' or
  'false'. Returns whether glibc now keeps freed memory."""
  if setting not in ('auto', 'true', 'false'):
    raise ValueError(f'retain_host_memory={setting!r}: use auto, true or false.')
  if setting == 'false' or (setting == 'auto' and not runs_on_cpu()):
    return False
  return retain_freed_memory()
