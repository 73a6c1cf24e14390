"""XLA flags for the CPU backend, set by the entry points before JAX starts a backend.

XLA's CPU backend hands convolutions to YNNPACK by default (jaxlib 0.10). For this model family
its own Eigen convolutions are faster, chiefly for the convolutions' weight gradients
(benchmarks/RESULTS.md, "Optimisation record", has the profile and the figures). XLA stops on
a flag it does not know, so the flag is added only for the jaxlib versions it was measured
with, only where JAX runs on the CPU, and never over a choice XLA_FLAGS already makes.
Importing deeplab_jax sets nothing: main, the CPU benchmarks and tests/conftest.py call
`configure_cpu()`.
"""

import importlib.metadata
import os

from deeplab_jax import host_memory

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
CPU_CONVOLUTION_FLAG = f'{YNN_FLAG}=-individual_convolution'
# jaxlib (major, minor) versions known to have the flag: from the first, up to (not including)
# the second. A later jaxlib may drop or rename it; widen the bound once it is checked there.
YNN_JAXLIB_VERSIONS = ((0, 10), (0, 11))


def jaxlib_version():
  """(major, minor) of the installed jaxlib, or None when it cannot be read."""
  try:
    return tuple(int(p) for p in importlib.metadata.version('jaxlib').split('.')[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return None


def with_cpu_flags(xla_flags: str, jaxlib, on_cpu: bool) -> str:
  """`xla_flags` with the CPU convolution flag added where it applies, else unchanged.

  Args:
    xla_flags: the current XLA_FLAGS value ('' when unset).
    jaxlib: the installed jaxlib's (major, minor), None when unknown.
    on_cpu: whether JAX will run on the CPU.
  """
  low, high = YNN_JAXLIB_VERSIONS
  if not on_cpu or YNN_FLAG in xla_flags or jaxlib is None or not low <= jaxlib < high:
    return xla_flags
  return f'{xla_flags} {CPU_CONVOLUTION_FLAG}'.strip()


def configure_cpu() -> bool:
  """Adds the CPU convolution flag to os.environ['XLA_FLAGS'] where it applies (JAX on the CPU
  as host_memory.runs_on_cpu judges it). Call before JAX starts a backend. Returns whether
  XLA_FLAGS changed."""
  old = os.environ.get('XLA_FLAGS', '')
  new = with_cpu_flags(old, jaxlib_version(), host_memory.runs_on_cpu())
  if new != old:
    os.environ['XLA_FLAGS'] = new
  return new != old
