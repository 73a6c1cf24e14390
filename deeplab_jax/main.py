"""Entry point: python -m deeplab_jax.main --config=configs/quickstart.py --workdir=DIR.

Relaunching the same command resumes from DIR's latest checkpoint. Any config field can be
overridden: --config.train.num_steps=100 --config.data.root=/data/camvid.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and evals.')
_MODE = flags.DEFINE_enum(
    'mode', 'train_and_eval', ['train_and_eval', 'eval', 'eval_continuous'],
    'train_and_eval; eval: evaluate the latest checkpoint once; eval_continuous: evaluate '
    'each new checkpoint as it appears, until the final one (or eval.wait_seconds without one).')
_DISTRIBUTED = flags.DEFINE_bool(
    'jax_distributed', False,
    'Call jax.distributed.initialize() (from the environment on TPU pods and SLURM, or from '
    'the coordinator flags below).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process.')
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout_seconds', 100,
    'With several processes: how long a silent peer may go before the others stop with an '
    'error (JAX\'s coordination-service heartbeat).')
_RETAIN_HOST_MEMORY = flags.DEFINE_enum(
    'retain_host_memory', 'auto', ['auto', 'true', 'false'],
    'Keep the host memory malloc frees for reuse (glibc), so XLA:CPU does not fault each '
    'step\'s buffers in again: auto = where JAX runs on the CPU. See deeplab_jax/host_memory.py.')
flags.mark_flags_as_required(['config', 'workdir'])


def initialize_distributed() -> None:
  """Joins the other processes; must run before any other JAX call."""
  explicit = _COORDINATOR.value is not None
  if not (_DISTRIBUTED.value or explicit):
    return
  # Collectives between CPU processes (local multi-process runs); GPUs and TPUs ignore it.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if explicit:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               heartbeat_timeout_seconds=_HEARTBEAT.value)
  else:
    jax.distributed.initialize(heartbeat_timeout_seconds=_HEARTBEAT.value)


def _quiet_libraries(record) -> bool:
  """Keeps orbax's and TFDS's per-save and per-file INFO lines out of the training log."""
  noisy = '/orbax/' in record.pathname or '/tensorflow_datasets/' in record.pathname
  return not noisy or record.levelno >= logging.WARNING


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().python_handler.addFilter(_quiet_libraries)
  from deeplab_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.configure(_RETAIN_HOST_MEMORY.value)  # before any thread of JAX's allocates
  initialize_distributed()
  # Imported after initialisation: nothing may touch JAX's backends before it.
  from deeplab_jax import train  # pylint: disable=g-import-not-at-top
  from deeplab_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  logging.info('JAX process %d of %d, %d local / %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  try:
    if _MODE.value == 'eval':
      train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == 'eval_continuous':
      train.evaluate_continuously(_CONFIG.value, _WORKDIR.value)
    else:
      train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (UserError, train.NonFiniteLossError) as e:
    sys.exit(f'error: {e}')
  except Exception:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    # A failed collective means a peer is gone. A normal exit would wait at JAX's shutdown
    # barrier for that peer until the heartbeat timeout; stop now with the error instead.
    logging.exception('Process %d stops: a collective or another step failed.',
                      jax.process_index())
    logging.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access


if __name__ == '__main__':
  app.run(main)
