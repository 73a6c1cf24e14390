"""Eight forced CPU devices for sharding tests, LLVM's -O0 for compile time and the trainer's
CPU convolution flag; set before JAX is imported anywhere."""

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

# Most of the suite's time is XLA:CPU compiling tiny steps, and most of that is LLVM optimising
# them: at -O0 a tiny variant's train step compiles in half the time (no fast-math either way;
# every test passes with it). The tests' own subprocesses get it through `subprocess_env`.
FAST_COMPILE = ('' if '--xla_backend_optimization_level' in os.environ.get('XLA_FLAGS', '')
                else '--xla_backend_optimization_level=0')
os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''), FAST_COMPILE,
                                    '--xla_force_host_platform_device_count=8']).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# One persistent compilation cache for the session (and the processes tests start): many
# tests compile the same tiny train and eval steps; each is compiled once. Fresh every session.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='deeplab_jax_tests_xla_')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# What `python -m deeplab_jax.main` sets on the CPU, so tests run the trainer's convolutions.
from deeplab_jax import xla_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

xla_flags.configure_cpu()
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
CAMVID = os.path.join(SHARED_DATA, 'camvid')
FIXTURES = os.path.join(SHARED_DATA, 'fixtures')

import pytest  # pylint: disable=g-import-not-at-top

# A machine with JAX but without TensorFlow (a lent GPU) runs the tests that need neither.
if importlib.util.find_spec('tensorflow_datasets') is not None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()


@pytest.fixture
def camvid_root():
  if not os.path.isdir(os.path.join(CAMVID, 'CamVid')):
    pytest.skip(f'real CamVid files not found at {CAMVID} (../shared/data/camvid)')
  return CAMVID


@pytest.fixture(scope='session')
def fixtures_root():
  """The real VOC, ADE20K and Cityscapes files in their released layouts (read in place)."""
  if not os.path.isdir(FIXTURES):
    pytest.skip(f'real data set fixtures not found at {FIXTURES} (../shared/data/fixtures)')
  return FIXTURES


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory):
  """One prepared-data cache for the whole session (the synthetic set is prepared once)."""
  return str(tmp_path_factory.mktemp('cache'))


@pytest.fixture
def subprocess_env():
  """env(devices=1): the environment for a JAX process a test starts, with `devices` CPUs."""
  def env(devices=1):
    flags = f'{FAST_COMPILE} --xla_force_host_platform_device_count={devices}'.strip()
    return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=flags)
  return env
