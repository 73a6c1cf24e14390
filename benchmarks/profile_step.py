r"""Where the training step's time goes: XLA's ops, timed by the JAX profiler, by layer.

  python benchmarks/profile_step.py --config=configs/v3_torchvision.py:resnet50 \
      --config.data.crop_size='(129,129)' --config.train.batch_size=2 [--top=30]

Compiles the trainer's step as benchmarks/train_step.py does, runs it --steps times under
`jax.profiler` and reads the trace back: every XLA op (fusion, convolution, library call)
with its time per step, summed over threads, named by the layer that made it (the HLO's
`op_name`; ops XLA made itself, such as layout copies, keep their own name). Prints one JSON
object: the step's wall time, the top ops, and the time per layer. Op times are summed over
the threads that ran them, so they can add up to more than the wall time; ops that hand work
to another thread pool (XLA:CPU's Eigen convolutions) can show less than they take.
benchmarks/RESULTS.md, "Optimisation record", says what this showed and what was done.
"""

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
from ml_collections import config_flags

import train_step  # benchmarks/train_step.py

from deeplab_jax import host_memory
from deeplab_jax import xla_flags

FLAGS = flags.FLAGS
_NOT_OPS = ('Thunk', '$', 'Slinky', 'PjitFunction', 'Common', 'Parse', 'Handle', 'end: ',
            'Allocate', 'Wait ')


def op_names(hlo_text: str) -> dict:
  """{HLO instruction name: the op_name of its metadata, or '' where XLA made it}."""
  names = {}
  for line in hlo_text.splitlines():
    match = re.match(r'\s*(?:ROOT )?%(\S+) = ', line)
    if match:
      op = re.search(r'op_name="([^"]*)"', line)
      names[match.group(1)] = op.group(1) if op else ''
  return names


def layer_of(op_name: str) -> str:
  """'jit(train_step)/transpose(jvp(DeepLab))/aspp/atrous3/conv/dot_general' ->
  'aspp/atrous3/conv (backward)'."""
  backward = 'transpose(' in op_name
  parts = [p for p in op_name.split('/')[1:] if not p.startswith(('jvp(', 'transpose('))]
  layer = '/'.join(parts[:-1]) or '/'.join(parts)
  return f'{layer} (backward)' if backward else layer


def profile(step, args, steps: int):
  """Runs step(*args) `steps` times under the profiler; {event name: seconds per step}."""
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir, create_perfetto_trace=True)
    for _ in range(steps):
      out = step(*args)
      args = (out[0],) + tuple(args[1:])
    jax.block_until_ready(out)
    jax.profiler.stop_trace()
    trace, = glob.glob(os.path.join(logdir, '**', 'perfetto_trace.json.gz'), recursive=True)
    with gzip.open(trace) as f:
      events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  seconds = collections.Counter()
  for event in events:
    if event.get('ph') == 'X' and not event['name'].startswith(_NOT_OPS):
      seconds[event['name']] += event.get('dur', 0) / 1e6 / steps
  return seconds


def report(config, steps: int = 3, top: int = 30, num_classes: int = 0) -> dict:
  """Profiles the train step of `config`; returns the result dict."""
  parts = train_step.setup(config, num_classes)
  compiled, state, batch, rng = parts['compiled'], parts['state'], parts['batch'], parts['rng']
  for _ in range(2):  # warm-up
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  step_seconds = time.perf_counter() - start
  seconds = profile(compiled, (state, batch, rng), steps)
  names = op_names(compiled.as_text())
  layers = collections.Counter()
  for op, s in seconds.items():
    layers[layer_of(names[op]) if names.get(op) else
           '(made by XLA: ' + re.sub(r'\.\d+$', '', op) + ')'] += s
  return {
      'step_seconds': step_seconds,
      'op_seconds_summed_over_threads': sum(seconds.values()),
      'top_ops': [{'op': op, 'ms': round(s * 1e3, 2), 'layer': names.get(op, '')}
                  for op, s in seconds.most_common(top)],
      'top_layers': [{'layer': k, 'ms': round(v * 1e3, 2)} for k, v in layers.most_common(top)],
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  host_memory.configure(FLAGS.retain_host_memory or FLAGS.config.retain_host_memory)  # as main
  print(json.dumps(report(FLAGS.config, FLAGS.steps, FLAGS.top, FLAGS.num_classes), indent=1))


if __name__ == '__main__':
  xla_flags.configure_cpu()  # as deeplab_jax.main does, before JAX starts a backend
  config_flags.DEFINE_config_file('config', None, 'Experiment config.', lock_config=True)
  flags.DEFINE_integer('steps', 3, 'Profiled steps.')
  flags.DEFINE_integer('top', 30, 'Ops and layers to print.')
  flags.DEFINE_integer('num_classes', 0, 'Class count (0: the data set\'s, else 21).')
  flags.DEFINE_enum('retain_host_memory', None, ['auto', 'true', 'false'],
                    'As deeplab_jax.main\'s flag (default: the config\'s).')
  flags.mark_flags_as_required(['config'])
  app.run(main)
