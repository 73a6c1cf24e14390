"""Runs one experiment per point of a grid of config values (and per seed), each in its own
workdir.

  python launch/sweep.py --config=configs/v3plus_camvid.py:cpu,dev --workdir=/tmp/rates \
      --grid='model.aspp.atrous_rates=(1,1,1);(6,12,18);(12,24,36);(24,48,72)' --seeds=3 \
      -- --config.data.root=../shared/data/camvid
  python launch/summarize.py --sweep=/tmp/rates

Each --grid is FIELD=V1;V2;...; the runs are the product of all grids. --seeds=N adds the
grid seed=0;...;N-1 (config.seed: initialisation, data order and augmentation); a grid on
`seed` itself does the same with chosen seeds. Each run's workdir is named by its setting and
seed ('atrous_rates-6_12_18,seed-0'). Arguments after `--` go to every run. Runs go one after
another on the local machine: a run that finished under this sweep (WORKDIR/RUN/sweep_done.json
holds its command) is skipped, an unfinished one resumes from its last checkpoint, so a
stopped sweep goes on when relaunched with the same command. With --print_only the commands
are printed instead, one per line, for a cluster's job array. WORKDIR/sweep.json lists the runs
for summarize.py.
"""

import argparse
import itertools
import json
import os
import re
import shlex
import subprocess
import sys


SEED = 'seed'  # the config field a seeds axis sets; summarize.py averages over it


def parse_grid(text: str):
  field, sep, values = text.partition('=')
  if not sep or not field.strip() or not values.strip():
    raise SystemExit(f'error: --grid={text!r} must be FIELD=V1;V2;...')
  return field.strip(), [v.strip() for v in values.split(';') if v.strip()]


def run_name(setting) -> str:
  """A folder name for one point: 'atrous_rates-6_12_18,output_stride-16'."""
  parts = []
  for field, value in setting:
    value = re.sub(r'[^A-Za-z0-9.]+', '_', value).strip('_')
    parts.append(f'{field.split(".")[-1]}-{value}')
  return ','.join(parts)


def plan(config: str, workdir: str, grids, extra):
  runs = []
  fields = [f for f, _ in grids]
  for values in itertools.product(*(v for _, v in grids)):
    setting = list(zip(fields, values))
    run_dir = os.path.join(workdir, run_name(setting))
    command = [sys.executable, '-m', 'deeplab_jax.main', f'--config={config}',
               f'--workdir={run_dir}', *[f'--config.{f}={v}' for f, v in setting], *extra]
    runs.append({'name': run_name(setting), 'setting': dict(setting), 'workdir': run_dir,
                 'command': command})
  names = [r['name'] for r in runs]
  if len(set(names)) != len(names):  # two runs in one workdir would resume each other
    twice = sorted({n for n in names if names.count(n) > 1})
    raise SystemExit(f'error: settings that differ share the workdir names {twice}: make the '
                     'values differ in letters or digits.')
  return runs


def grids_of(grid_args, seeds: int):
  """The parsed --grid values, with seed=0;...;seeds-1 appended for --seeds."""
  grids = [parse_grid(g) for g in grid_args]
  fields = [f for f, _ in grids]
  if len(set(fields)) != len(fields):
    raise SystemExit(f'error: a field has two --grid flags: {fields}')
  if seeds:
    if seeds < 1 or SEED in fields:
      raise SystemExit(f'error: --seeds={seeds} must be >= 1 and not beside --grid={SEED}=...')
    grids.append((SEED, [str(s) for s in range(seeds)]))
  if not grids:
    raise SystemExit('error: give at least one --grid=FIELD=V1;V2;... or --seeds=N')
  return grids


DONE = 'sweep_done.json'


def finished(run) -> bool:
  """Whether this run ended under the same command before (its DONE file; the Python that ran
  it may differ)."""
  path = os.path.join(run['workdir'], DONE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f).get('command', [])[1:] == run['command'][1:]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--grid', action='append', default=[], help='FIELD=V1;V2;...')
  parser.add_argument('--seeds', type=int, default=0, help='N: also run each point with '
                      'config.seed = 0, ..., N-1')
  parser.add_argument('--print_only', action='store_true')
  parser.add_argument('extra', nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  extra = [a for a in args.extra if a != '--']
  runs = plan(args.config, args.workdir, grids_of(args.grid, args.seeds), extra)
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, 'sweep.json'), 'w') as f:
    json.dump({'config': args.config, 'runs': runs}, f, indent=1)
  if args.print_only:
    for run in runs:
      print(shlex.join(run['command']))
    return 0
  for i, run in enumerate(runs, 1):
    if finished(run):
      print(f'[{i}/{len(runs)}] {run["name"]}: finished before, skipped', flush=True)
      continue
    print(f'[{i}/{len(runs)}] {run["name"]}', flush=True)
    code = subprocess.call(run['command'])
    if code:
      print(f'error: run {run["name"]} exited with {code}; the sweep stops (relaunch resumes).')
      return code
    with open(os.path.join(run['workdir'], DONE), 'w') as f:
      json.dump({'command': run['command']}, f)
  return 0


if __name__ == '__main__':
  sys.exit(main())
