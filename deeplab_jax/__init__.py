"""DeepLab semantic segmentation in JAX/Flax."""

import importlib.metadata
import os

# XLA's CPU backend hands convolutions to YNNPACK by default (jaxlib 0.10). For this model
# family its own Eigen convolutions are faster, chiefly for the convolutions' weight gradients
# (benchmarks/RESULTS.md, "Optimisation record", has the profile and the figures). Set before
# JAX creates its CPU client; only the CPU backend reads the flag, and it is left
# alone when XLA_FLAGS already chooses YNNPACK's fusion types. Older jaxlibs lack the flag (an
# unknown flag stops XLA), so it is set from 0.10 on, the version it was measured with.


def _jaxlib_version():
  try:
    return tuple(int(p) for p in importlib.metadata.version('jaxlib').split('.')[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return (0, 0)


_YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
if _YNN_FLAG not in os.environ.get('XLA_FLAGS', '') and _jaxlib_version() >= (0, 10):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' {_YNN_FLAG}=-individual_convolution').strip()
