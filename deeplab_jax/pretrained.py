"""Pretrained variables: reading them, and starting a run from them (`config.init_from`).

`config.init_from` names either a directory written by `python -m deeplab_jax.convert`
(variables converted from torchvision or TF-slim weights, in `DIR/variables`) or another run's
workdir (its latest checkpoint). Every parameter and BatchNorm statistic whose path and shape
match is loaded; a classifier whose class count differs (the last axis of `classifier`,
`aux_head/classifier` and v2's `aspp_l/branchK`) keeps its fresh initialisation, and so does
anything the source lacks. Any other shape mismatch is an error that names the parameter.
"""

import json
import os
import re
from typing import Any, Dict, List, Tuple

from absl import logging
from etils import epath
import flax
import numpy as np
import orbax.checkpoint as ocp

from deeplab_jax.errors import UserError

VARIABLES = 'variables'          # DIR/variables: the orbax checkpoint convert writes
INFO = 'conversion.json'         # DIR/conversion.json: what convert did
# Parameters whose last axis is the class count; re-initialised when it differs.
CLASS_DEPENDENT = re.compile(r'(^|/)classifier/(kernel|bias)$|^aspp_l/branch\d+/(kernel|bias)$')


def _path(path: str) -> epath.Path:
  return epath.Path(path if '://' in path else os.path.abspath(path))


def save_variables(directory: str, variables: Dict[str, Any], info: Dict[str, Any]) -> None:
  """Writes {'params', 'batch_stats'} (numpy trees) and a JSON description to DIRECTORY."""
  out = _path(directory)
  out.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(out / VARIABLES, variables, force=True)
  checkpointer.wait_until_finished()
  (out / INFO).write_text(json.dumps(info, indent=1) + '\n')


def load_variables(directory: str) -> Dict[str, Any]:
  """{'params': ..., 'batch_stats': ...} as numpy arrays, from a convert output directory or
  from a workdir's latest checkpoint."""
  root = _path(directory)
  if (root / VARIABLES).exists():
    restored = ocp.StandardCheckpointer().restore(root / VARIABLES)
  elif (root / 'checkpoints').exists():
    manager = ocp.CheckpointManager(root / 'checkpoints')
    step = manager.latest_step()
    if step is None:
      raise UserError(f'init_from={directory!r}: {root}/checkpoints holds no checkpoint.')
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    restored = restored['state']
    logging.info('init_from: step %d of %s.', step, root / 'checkpoints')
  else:
    raise UserError(f'init_from={directory!r} is neither a directory written by '
                    f'deeplab_jax.convert (with {VARIABLES}/) nor a workdir (with checkpoints/).')
  return {'params': restored.get('params', {}),
          'batch_stats': restored.get('batch_stats', {}) or {}}


def _flat(tree) -> Dict[str, Any]:
  if not tree:
    return {}
  return {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(tree)).items()}


def merge(target: Dict[str, Any],
          source: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, List[str]]]:
  """Target {'params', 'batch_stats'} with every matching leaf taken from source.

  Returns (merged variables as numpy/jax leaves, report) where the report lists 'loaded',
  'fresh' (kept from target: missing from the source, or a classifier of another class
  count) and 'skipped' (source leaves the target lacks).
  """
  report = {'loaded': [], 'fresh': [], 'skipped': []}
  merged = {}
  for collection in ('params', 'batch_stats'):
    want, have = _flat(target.get(collection)), _flat(source.get(collection))
    out = {}
    for name, value in want.items():
      label = f'{collection}/{name}'
      if name not in have:
        out[name] = value
        report['fresh'].append(label)
        continue
      got = np.asarray(have[name])
      if got.shape == tuple(value.shape):
        out[name] = got.astype(value.dtype)
        report['loaded'].append(label)
      elif (CLASS_DEPENDENT.search(name) and got.ndim == len(value.shape)
            and got.shape[:-1] == tuple(value.shape[:-1])):
        out[name] = value
        report['fresh'].append(f'{label} (classes {got.shape[-1]} -> {value.shape[-1]})')
      else:
        raise UserError(f'init_from: {label} has shape {got.shape} in the source but '
                        f'{tuple(value.shape)} in this model; only the classifier may differ '
                        '(check model.backbone, widths and output_conv against the source).')
    report['skipped'] += [f'{collection}/{n}' for n in sorted(set(have) - set(want))]
    merged[collection] = flax.traverse_util.unflatten_dict(
        {tuple(k.split('/')): v for k, v in out.items()})
  return merged, report


def log_report(source: str, report: Dict[str, List[str]]) -> None:
  logging.info('init_from %s: %d loaded, %d fresh, %d skipped.', source, len(report['loaded']),
               len(report['fresh']), len(report['skipped']))
  for kind in ('fresh', 'skipped'):
    for name in report[kind]:
      logging.info('init_from %s: %s', kind, name)
