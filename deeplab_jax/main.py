"""Entry point: python -m deeplab_jax.main --config=configs/quickstart.py --workdir=DIR.

Relaunching the same command resumes from DIR's latest checkpoint. Any config field can be
overridden: --config.train.num_steps=100 --config.data.root=/data/camvid.
"""

import logging as python_logging
import os
import re
import sys
import traceback

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from deeplab_jax import xla_flags

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
    'retain_host_memory', None, ['auto', 'true', 'false'],
    'Keep the host memory malloc frees for reuse (glibc), so XLA:CPU does not fault each '
    'step\'s buffers in again: auto = where JAX runs on the CPU. Default: the config\'s '
    'retain_host_memory. See deeplab_jax/host_memory.py.')
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


# clu's ReportProgress logs steps/s and ETA in one line, then the same steps/s and the uptime
# again as two scalar lines; those two still reach TensorBoard, not the log.
_REPEATED_SCALARS = re.compile(r'\[\d+\] (steps_per_sec|uptime)=')


def _quiet_libraries(record) -> bool:
  """Keeps orbax's and TFDS's per-save and per-file INFO lines, and clu's repeated progress
  scalars, out of the training log; their warnings and errors stay."""
  if record.levelno >= python_logging.WARNING:  # the standard library's level, as records carry
    return True
  path = record.pathname
  if '/orbax/' in path or '/tensorflow_datasets/' in path:
    return False
  return not ('/clu/' in path and _REPEATED_SCALARS.match(record.getMessage()))


def _config_error(error: Exception) -> str:
  """One line for an AttributeError or KeyError while the config flags are parsed: a field
  that a config file sets, or a --config.a.b=... override names, and the config lacks.

  For a file the line is the innermost frame outside the installed packages, with
  ml_collections' key and suggestion; for an override, the path and the nearest existing
  field, from the config and path that ml_collections' flag parser was working on."""
  message = str(error.args[0] if error.args else error)
  if len(message) > 1 and message[0] == message[-1] and message[0] in '\'"':
    message = message[1:-1]  # a KeyError's quotes
  key = re.search(r'Key "([^"]+)" does not exist', message)
  suggestion = re.search(r'Did you mean "([^"]+)"', message)
  for frame, line in reversed(list(traceback.walk_tb(error.__traceback__))):
    config, field_path = frame.f_locals.get('config'), frame.f_locals.get('field_path')
    if isinstance(field_path, str) and hasattr(config, 'keys'):
      return _override_error(config, field_path)
    path = frame.f_code.co_filename
    if '/site-packages/' not in path and not path.startswith('<'):
      if not key:
        return f'{path}:{line}: {type(error).__name__}: {message.splitlines()[0]}'
      hint = f'; did you mean {suggestion.group(1)!r}?' if suggestion else ''
      return (f'{path}:{line}: the config has no field {key.group(1)!r}{hint} A new field '
              'belongs in configs/common.py:get_base_config.')
  return message.splitlines()[0] if message else type(error).__name__


def _override_error(config, field_path: str) -> str:
  """'--config.model.typo: model has no field typo; did you mean ...?'."""
  import difflib  # pylint: disable=g-import-not-at-top
  node, done = config, []
  for name in field_path.split('.'):
    if not hasattr(node, 'keys') or name not in node:
      fields = list(node.keys()) if hasattr(node, 'keys') else []
      close = difflib.get_close_matches(name, fields, n=1)
      hint = f'; did you mean --config.{".".join(done + close)}?' if close else ''
      where = '.'.join(done) or 'the config'
      return f'--config.{field_path}: {where} has no field {name!r}{hint}'
    node = node[name]
    done.append(name)
  return f'--config.{field_path}: cannot be set'


def _parse_flags(argv):
  """absl's flag parsing; a bad flag or config field is one line, `error: ...`."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: a config field that is not there
    sys.exit(f'error: {_config_error(e)}')
  except (flags.Error, ValueError) as e:  # a bad flag value, or a config file's own check
    sys.exit(f'error: {_one_line(str(e))}')


def _one_line(message: str) -> str:
  """A flag error's first line; for an error raised inside a config file, which absl reports
  with its traceback, the flag and the error's own message."""
  lines = [l for l in message.splitlines() if l.strip()]
  if len(lines) > 1 and 'Traceback' in message:
    flag = lines[0].split(': Error whilst parsing', 1)[0]
    return f'{flag}: {re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", lines[-1])}'
  return lines[0] if lines else message


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().python_handler.addFilter(_quiet_libraries)
  from deeplab_jax import host_memory  # pylint: disable=g-import-not-at-top
  setting = _RETAIN_HOST_MEMORY.value or _CONFIG.value.retain_host_memory
  if setting not in ('auto', 'true', 'false'):
    sys.exit(f'error: retain_host_memory={setting!r} is not one of auto, true, false.')
  retained = host_memory.configure(setting)  # before any thread of JAX's allocates
  logging.info('retain_host_memory=%s: freed host memory %s.', setting,
               'kept for reuse' if retained else 'left to malloc')
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
  xla_flags.configure_cpu()  # before JAX starts its CPU client
  app.run(main, flags_parser=_parse_flags)
