"""Turns a sweep (launch/sweep.py) into a Markdown table and a PNG plot of mIoU per setting.

  python launch/summarize.py --sweep=/tmp/rates [--protocol='whole scales=1.0 os=16']
  python launch/summarize.py --runs=/tmp/a,/tmp/b
  python launch/summarize.py --per_class=/tmp/a
  python launch/summarize.py --seeds=/tmp/s0,/tmp/s1,/tmp/s2

--sweep reads WORKDIR/sweep.json and each run's evals.jsonl; for each run it takes the
evaluation of its last step (under --protocol if given). Writes WORKDIR/results.md and
WORKDIR/results.png and prints the table. --runs prints every evaluation of the last step of
each workdir named (split, protocol, mIoU, pixel accuracy), for trials run by hand.
--per_class prints, for each evaluation of a workdir's last step, each class's IoU beside its
ground-truth pixel count (the confusion matrix's row sum): a rare class's IoU swings.
--seeds takes runs of one recipe that differ only by seed: for each split and protocol that
every run evaluated at its last step, the mean and sample standard deviation (n - 1) over the
runs of mIoU, of the boundary F-scores where evaluated (eval.boundary_tolerances), and of each
class's IoU (a class a run never saw nor predicted is left out of that class's mean).
"""

import argparse
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def evaluations(workdir: str):
  """Every readable row of the workdir's evals.jsonl, in file order ([] without one)."""
  path = os.path.join(workdir, 'evals.jsonl')
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:  # cut short by a kill mid-write: skip, keep the rest
        print(f'warning: {path} line {number} is damaged ({e}); skipping it.', file=sys.stderr)
        continue
      if isinstance(row, dict) and 'step' in row:
        rows.append(row)
  return rows


def last_evaluation(workdir: str, protocol: str = ''):
  """The evals.jsonl row of the highest step (optionally of one protocol), or None."""
  rows = [r for r in evaluations(workdir) if not protocol or r.get('protocol') == protocol]
  return max(rows, key=lambda r: r['step']) if rows else None


def last_step_rows(workdir: str):
  """Every evals.jsonl row of the workdir's highest evaluated step, in file order."""
  rows = evaluations(workdir)
  last = max((r['step'] for r in rows), default=None)
  return [r for r in rows if r['step'] == last]


def runs_table(workdirs) -> str:
  lines = ['| workdir | step | split | protocol | mIoU | pixel accuracy |',
           '|---|---|---|---|---|---|']
  for workdir in workdirs:
    rows = last_step_rows(workdir)
    if not rows:
      lines.append(f'| {workdir} | not evaluated | | | | |')
    for r in rows:
      lines.append(f'| {workdir} | {r["step"]} | {r["split"]} | {r["protocol"]} | '
                   f'{r["miou"]:.4f} | {r["pixel_accuracy"]:.4f} |')
  return '\n'.join(lines)


def per_class_table(workdir: str) -> str:
  blocks = []
  for r in last_step_rows(workdir):
    names = list(r['per_class_iou'])
    counts = [sum(row) for row in r['confusion']]
    lines = [f'{r["split"]}, {r["protocol"]}, step {r["step"]}: mIoU {r["miou"]:.4f}', '',
             '| class | IoU | pixels |', '|---|---|---|']
    for name, count in zip(names, counts):
      iou = r['per_class_iou'][name]
      lines.append(f'| {name} | {"n/a" if iou is None else f"{iou:.3f}"} | {count:,} |')
    blocks.append('\n'.join(lines))
  return '\n\n'.join(blocks) if blocks else f'{workdir}: not evaluated'


def _mean_sd(values, digits: int, sep: str) -> str:
  """'mean{sep}sd' with the sample sd (n - 1; nan for one value); 'n/a{sep}n/a' for none."""
  if not values:
    return f'n/a{sep}n/a'
  sd = statistics.stdev(values) if len(values) > 1 else float('nan')
  return f'{statistics.fmean(values):.{digits}f}{sep}{sd:.{digits}f}'


def seeds_table(workdirs) -> str:
  runs = [{(r['split'], r['protocol']): r for r in last_step_rows(w)} for w in workdirs]
  missing = [w for w, rows in zip(workdirs, runs) if not rows]
  if missing:
    return f'{", ".join(missing)}: not evaluated'
  blocks = []
  for key in [k for k in runs[0] if all(k in rows for rows in runs)]:
    rows = [rows[key] for rows in runs]
    mious = [r['miou'] for r in rows]
    lines = [f'{key[0]}, {key[1]}, {len(rows)} runs (steps '
             f'{", ".join(str(r["step"]) for r in rows)}): mIoU {_mean_sd(mious, 4, " sd ")} ('
             f'{", ".join(f"{m:.4f}" for m in mious)})']
    # Boundary F-scores (eval.boundary_tolerances), one line per tolerance all runs have.
    for name in [k for k in rows[0] if k.startswith('boundary_f_')
                 and all(k in r for r in rows)]:
      values = [r[name] for r in rows]
      lines.append(f'{name}: {_mean_sd(values, 4, " sd ")} '
                   f'({", ".join(f"{v:.4f}" for v in values)})')
    lines += ['', '| class | IoU mean | IoU sd | pixels |', '|---|---|---|---|']
    counts = [sum(row) for row in rows[0]['confusion']]
    for i, name in enumerate(rows[0]['per_class_iou']):
      ious = [r['per_class_iou'][name] for r in rows if r['per_class_iou'][name] is not None]
      lines.append(f'| {name} | {_mean_sd(ious, 3, " | ")} | {counts[i]:,} |')
    blocks.append('\n'.join(lines))
  return '\n\n'.join(blocks) if blocks else 'no split and protocol that every run evaluated'


def table(sweep):
  fields = list(sweep['runs'][0]['setting']) if sweep['runs'] else []
  lines = ['| ' + ' | '.join(fields + ['step', 'val mIoU', 'pixel accuracy']) + ' |',
           '|' + '---|' * (len(fields) + 3)]
  for run in sweep['runs']:
    row = run.get('result')
    cells = [run['setting'][f] for f in fields]
    if row is None:
      cells += ['not evaluated', '', '']
    else:
      cells += [str(row['step']), f'{row["miou"]:.4f}', f'{row["pixel_accuracy"]:.4f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def plot(sweep, path: str):
  done = [r for r in sweep['runs'] if r.get('result')]
  labels = [', '.join(f'{k.split(".")[-1]}={v}' for k, v in r['setting'].items()) for r in done]
  values = [r['result']['miou'] for r in done]
  fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(done)), 3.5))
  bars = ax.bar(range(len(done)), values, color='tab:blue')
  ax.bar_label(bars, fmt='%.3f')
  ax.set_xticks(range(len(done)), labels, rotation=20, ha='right', fontsize=8)
  ax.set_ylabel('val mIoU')
  ax.set_ylim(0, max(values + [0.01]) * 1.15)
  ax.set_title(os.path.basename(sweep['config']))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sweep', default='', help='the workdir given to launch/sweep.py')
  parser.add_argument('--protocol', default='', help='only evaluations under this protocol')
  parser.add_argument('--runs', default='', help='comma-separated workdirs: their evaluations')
  parser.add_argument('--per_class', default='', help='a workdir: per-class IoU and pixels')
  parser.add_argument('--seeds', default='',
                      help='comma-separated workdirs of one recipe: mean and sd over them')
  args = parser.parse_args(argv)
  if sum(map(bool, (args.sweep, args.runs, args.per_class, args.seeds))) != 1:
    print('error: give one of --sweep=DIR, --runs=DIR,DIR,..., --per_class=DIR or '
          '--seeds=DIR,DIR,...')
    return 2
  if args.seeds:
    print(seeds_table([w for w in args.seeds.split(',') if w]))
    return 0
  if args.runs:
    print(runs_table([w for w in args.runs.split(',') if w]))
    return 0
  if args.per_class:
    print(per_class_table(args.per_class))
    return 0
  path = os.path.join(args.sweep, 'sweep.json')
  if not os.path.exists(path):
    print(f'error: {path} not found; run launch/sweep.py with --workdir={args.sweep} first.')
    return 2
  sweep = json.load(open(path))
  for run in sweep['runs']:
    run['result'] = last_evaluation(run['workdir'], args.protocol)
  text = table(sweep)
  with open(os.path.join(args.sweep, 'results.md'), 'w') as f:
    f.write(text + '\n')
  if any(r['result'] for r in sweep['runs']):
    plot(sweep, os.path.join(args.sweep, 'results.png'))
  print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
