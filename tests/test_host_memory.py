"""host_memory: with glibc told to keep freed memory, reused big buffers stop faulting."""

import os
import subprocess
import sys

import pytest

from deeplab_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, touches and frees a 64 MB buffer 20 times; prints the minor page faults.
_CHURN = """
import resource, sys
import numpy as np
sys.path.insert(0, {root!r})
from deeplab_jax import host_memory
if {retain}:
  assert host_memory.retain_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  block = np.empty(64 << 20, np.uint8)
  block[::4096] = 1
  del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def churn_faults(retain: bool) -> int:
  out = subprocess.run([sys.executable, '-c', _CHURN.format(root=ROOT, retain=retain)],
                       capture_output=True, text=True, check=True)
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt')
def test_retained_memory_is_reused_without_page_faults():
  # By default each buffer is a fresh map whose pages fault in again (as 4 KiB or, with
  # transparent huge pages, 2 MiB pages); retained, the first buffer's pages serve the rest.
  default, retained = churn_faults(False), churn_faults(True)
  assert retained * 5 < default, (default, retained)


def test_configure_reads_the_flag(monkeypatch):
  with pytest.raises(ValueError, match="retain_host_memory='yes': use auto, true or false"):
    host_memory.configure('yes')
  assert host_memory.configure('false') is False
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')
  assert not host_memory.runs_on_cpu()
  assert host_memory.configure('auto') is False  # an accelerator host is left as it is
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert host_memory.runs_on_cpu()
