"""The CPU convolution flag: added only on the CPU, only for the jaxlib versions known to have
it, never over XLA_FLAGS' own choice; importing deeplab_jax sets nothing."""

import os
import subprocess
import sys

import pytest

from deeplab_jax import host_memory
from deeplab_jax import xla_flags

FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('xla_flags_value, jaxlib, on_cpu, want', [
    ('', (0, 10), True, FLAG),
    ('--xla_force_host_platform_device_count=2', (0, 10), True,
     f'--xla_force_host_platform_device_count=2 {FLAG}'),
    ('', (0, 9), True, ''),            # older: the flag is unknown there and would stop XLA
    ('', (0, 11), True, ''),           # newer: not known to have it
    ('', (1, 0), True, ''),
    ('', None, True, ''),              # jaxlib's version unreadable
    ('', (0, 10), False, ''),          # a GPU or TPU run
    ('--xla_cpu_experimental_ynn_fusion_type=', (0, 10), True,
     '--xla_cpu_experimental_ynn_fusion_type='),  # the user's choice stays
])
def test_the_flag_is_added_only_where_it_applies(xla_flags_value, jaxlib, on_cpu, want):
  assert xla_flags.with_cpu_flags(xla_flags_value, jaxlib, on_cpu) == want


@pytest.mark.parametrize('platforms, want', [('cpu', True), ('cuda', False), ('tpu', False),
                                             ('cuda,cpu', False), ('cpu,cuda', True)])
def test_jax_platforms_decides_the_backend(monkeypatch, platforms, want):
  monkeypatch.setenv('JAX_PLATFORMS', platforms)
  assert host_memory.runs_on_cpu() is want


def test_configure_cpu_sets_xla_flags_only_on_the_cpu(monkeypatch):
  monkeypatch.setattr(xla_flags, 'jaxlib_version', lambda: (0, 10))
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0')
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  assert not xla_flags.configure_cpu()
  assert os.environ['XLA_FLAGS'] == '--xla_backend_optimization_level=0'
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert xla_flags.configure_cpu()
  assert os.environ['XLA_FLAGS'] == f'--xla_backend_optimization_level=0 {FLAG}'
  assert not xla_flags.configure_cpu()  # once


def test_importing_the_library_leaves_xla_flags_alone():
  code = ('import os, deeplab_jax, deeplab_jax.steps, deeplab_jax.train\n'
          'print(repr(os.environ.get("XLA_FLAGS")))')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=dict(env, JAX_PLATFORMS='cpu'),
                       capture_output=True, text=True, check=True)
  assert out.stdout.strip().splitlines()[-1] == 'None'
