"""Turns a sweep (launch/sweep.py) into tables, a CSV and a PNG plot of mIoU per setting.

  python launch/summarize.py --sweep=/tmp/rates [--split=dev_0006R0] [--protocol='...']
      [--block=10 --resamples=2000 --bootstrap_seed=0 --level=0.95]
  python launch/summarize.py --runs=/tmp/a,/tmp/b
  python launch/summarize.py --per_class=/tmp/a
  python launch/summarize.py --seeds=/tmp/s0,/tmp/s1,/tmp/s2

--sweep reads WORKDIR/sweep.json and each run's evals.jsonl, takes each run's evaluation of
its last step (of --split and --protocol if given) and pools the runs of a setting that
differ only by seed: per setting, the mean and sample standard deviation (n - 1) of mIoU over
seeds, a bootstrap interval (launch/bootstrap.py: seeds and blocks of --block consecutive
evaluation images resampled; it needs the runs' per-image counts, eval.per_image_counts) and
each class's mean IoU; for each pair of settings, the difference of their means with its
interval and p-value, Holm-corrected across the pairs. Writes WORKDIR/results.md (the tables
and what the interval does and does not cover), results.csv (a row per setting), pairs.csv
and results.png (means, each seed, error bars), and prints results.md.
--runs prints every evaluation of the last step of each workdir named (split, protocol,
mIoU, pixel accuracy), for trials run by hand.
--per_class prints, for each evaluation of a workdir's last step, each class's IoU beside its
ground-truth pixel count (the confusion matrix's row sum): a rare class's IoU swings.
--seeds takes runs of one recipe that differ only by seed: for each split and protocol that
every run evaluated at its last step, the mean and sample standard deviation (n - 1) over the
runs of mIoU, of the boundary F-scores where evaluated (eval.boundary_tolerances), and of each
class's IoU (a class a run never saw nor predicted is left out of that class's mean).
"""

import argparse
import csv
import json
import math
import os
import statistics
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bootstrap  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab_jax import per_image_counts as per_image_counts_file  # pylint: disable=g-import-not-at-top
from sweep import SEED  # pylint: disable=g-import-not-at-top,wrong-import-position


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


def last_evaluation(workdir: str, protocol: str = '', split: str = ''):
  """The evals.jsonl row of the highest step (optionally of one protocol and split), or None."""
  rows = [r for r in evaluations(workdir) if (not protocol or r.get('protocol') == protocol)
          and (not split or r.get('split') == split)]
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


def group_runs(sweep):
  """[(setting without the seed, [runs])] in the sweep's order."""
  groups = {}
  for run in sweep['runs']:
    key = tuple((f, v) for f, v in run['setting'].items() if f != SEED)
    groups.setdefault(key, []).append(run)
  return list(groups.items())


def settings_summary(sweep, block: int, resamples: int, seed: int, level: float):
  """Per setting (seeds pooled): its runs' final rows, mean and sd of mIoU, per-class means,
  and, where every run kept per-image counts of the same images, a bootstrap interval; and
  the pairs' differences (bootstrap.compare). Runs without an evaluation are left out."""
  settings = []
  for key, runs in group_runs(sweep):
    done = [r for r in runs if r.get('result')]
    rows = [r['result'] for r in done]
    mious = [r['miou'] for r in rows]
    classes = list(rows[0].get('per_class_iou', {})) if rows else []
    per_class = {c: [r['per_class_iou'][c] for r in rows
                     if r.get('per_class_iou', {}).get(c) is not None] for c in classes}
    nan = float('nan')
    settings.append({
        'setting': dict(key), 'runs': len(runs), 'rows': rows,
        'workdirs': [r['workdir'] for r in done], 'steps': sorted({r['step'] for r in rows}),
        'mious': mious, 'mean': statistics.fmean(mious) if mious else nan,
        'sd': statistics.stdev(mious) if len(mious) > 1 else nan,
        'pixel_accuracy': statistics.fmean(r['pixel_accuracy'] for r in rows) if rows else nan,
        'per_class': {c: statistics.fmean(v) if v else nan for c, v in per_class.items()},
        'low': nan, 'high': nan})
  scored = [s for s in settings if s['rows']]
  for s in scored:
    if len(s['steps']) > 1:
      print(f'note: {_setting_label(s["setting"])} pools runs last evaluated at steps '
            f'{s["steps"]}: some have not finished.', file=sys.stderr)
  counts = per_image_counts(scored)
  if counts is not None and block >= counts[0].shape[1]:
    print(f'note: --block={block} covers all {counts[0].shape[1]} images: the intervals '
          'resample seeds only.', file=sys.stderr)
  pairs = []
  if counts is not None:
    stats = bootstrap.resample_statistics(counts, block, resamples, seed)
    for s, column in zip(scored, stats.T):
      s['low'], s['high'] = bootstrap.interval(column, level)
    pairs = bootstrap.compare([s['mean'] for s in scored], stats, level)
    for pair in pairs:
      pair['a'], pair['b'] = scored[pair['a']], scored[pair['b']]
  return settings, pairs


def per_image_counts(settings):
  """[runs, N, 3, K] per setting from the runs' per-image counts, or None (with the reason on
  stderr) where a run has none or the runs scored different images."""
  out, first = [], None
  for s in settings:
    runs = []
    for workdir, row in zip(s['workdirs'], s['rows']):
      if not row.get('per_image_counts'):
        print(f'note: {workdir} kept no per-image counts (step {row["step"]}): no intervals.',
              file=sys.stderr)
        return None
      index, counts = per_image_counts_file.read(workdir, row)
      if first is None:
        first = index
      if not np.array_equal(index, first):
        print(f'note: {workdir} scored other images than {settings[0]["workdirs"][0]}: no '
              'intervals.', file=sys.stderr)
        return None
      # The counts must give the line's own mIoU, or they belong to another evaluation.
      mine = float(bootstrap.miou(*counts.sum(0)))
      if not math.isclose(mine, row['miou'], abs_tol=1e-6):
        raise SystemExit(f'error: {workdir}: its per-image counts give mIoU {mine:.6f}, its '
                         f'evals.jsonl line {row["miou"]:.6f}.')
      runs.append(counts)
    out.append(np.stack(runs))
  return out if out else None


def _setting_label(setting) -> str:
  return ', '.join(f'{k.split(".")[-1]}={v}' for k, v in setting.items()) or 'all runs'


def _percent(level: float) -> str:
  return f'{100 * level:g} %'


def table(settings, split: str, level: float = 0.95) -> str:
  fields = list(settings[0]['setting']) if settings else []
  lines = ['| ' + ' | '.join(fields + [
      'seeds', 'step', f'{split or "eval"} mIoU mean', 'sd', f'{_percent(level)} interval',
      'pixel accuracy']) + ' |', '|' + '---|' * (len(fields) + 6)]
  for s in settings:
    cells = [s['setting'][f] for f in fields]
    if not s['rows']:
      cells += [f'0 of {s["runs"]}', 'not evaluated', '', '', '', '']
    else:
      ci = ('n/a' if math.isnan(s['low']) else f'{s["low"]:.4f} - {s["high"]:.4f}')
      sd = 'n/a' if math.isnan(s['sd']) else f'{s["sd"]:.4f}'
      cells += [f'{len(s["rows"])} of {s["runs"]}', '/'.join(map(str, s['steps'])),
                f'{s["mean"]:.4f}', sd, ci, f'{s["pixel_accuracy"]:.4f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def class_table(settings) -> str:
  scored = [s for s in settings if s['rows']]
  if not scored:
    return ''
  lines = ['| class | ' + ' | '.join(_setting_label(s['setting']) for s in scored) + ' |',
           '|---|' + '---|' * len(scored)]
  for c in scored[0]['per_class']:
    lines.append(f'| {c} | ' + ' | '.join(
        'n/a' if math.isnan(s['per_class'][c]) else f'{s["per_class"][c]:.3f}'
        for s in scored) + ' |')
  return '\n'.join(lines)


def pairs_table(pairs, level: float = 0.95) -> str:
  if not pairs:
    return ''
  lines = ['| a | b | a - b | interval (Holm level) | p | p (Holm) | '
           f'real at {_percent(level)} |',
           '|---|---|---|---|---|---|---|']
  for p in pairs:
    lines.append(
        f'| {_setting_label(p["a"]["setting"])} | {_setting_label(p["b"]["setting"])} | '
        f'{p["difference"]:+.4f} | {p["low"]:+.4f} - {p["high"]:+.4f} '
        f'({100 * (1 - p["alpha"]):.1f} %) | {p["p"]:.4f} | {p["p_holm"]:.4f} | '
        f'{"yes" if p["real"] else "no"} |')
  return '\n'.join(lines)


def write_csv(settings, pairs, path: str, pairs_path: str) -> None:
  fields = list(settings[0]['setting']) if settings else []
  classes = next((list(s['per_class']) for s in settings if s['rows']), [])
  with open(path, 'w', newline='') as f:
    out = csv.writer(f)
    out.writerow(fields + ['runs', 'evaluated', 'steps', 'miou_mean', 'miou_sd', 'ci_low',
                           'ci_high', 'pixel_accuracy_mean', 'mious']
                 + [f'iou_{c}' for c in classes])
    for s in settings:
      out.writerow([s['setting'][k] for k in fields] + [
          s['runs'], len(s['rows']), '/'.join(map(str, s['steps'])), s['mean'], s['sd'],
          s['low'], s['high'], s['pixel_accuracy'], ' '.join(f'{m:.6f}' for m in s['mious'])]
                   + [s['per_class'].get(c, float('nan')) for c in classes])
  with open(pairs_path, 'w', newline='') as f:
    out = csv.writer(f)
    out.writerow(['a', 'b', 'difference', 'low', 'high', 'level', 'p', 'p_holm', 'real'])
    for p in pairs:
      out.writerow([_setting_label(p['a']['setting']), _setting_label(p['b']['setting']),
                    p['difference'], p['low'], p['high'], 1 - p['alpha'], p['p'], p['p_holm'],
                    p['real']])


def plot(settings, title: str, split: str, path: str, level: float = 0.95):
  done = [s for s in settings if s['rows']]
  fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(done)), 3.5))
  x = np.arange(len(done))
  means = np.array([s['mean'] for s in done])
  ax.plot(x, means, 'D', color='tab:blue', label='mean over seeds')
  have = [i for i, s in enumerate(done) if not math.isnan(s['low'])]
  if have:
    low = np.array([done[i]['low'] for i in have])
    high = np.array([done[i]['high'] for i in have])
    ax.errorbar(x[have], means[have], yerr=[means[have] - low, high - means[have]], fmt='none',
                ecolor='black', capsize=4, label=f'{_percent(level)} bootstrap interval')
  for i, s in enumerate(done):
    ax.plot([i] * len(s['mious']), s['mious'], 'o', color='tab:red', markersize=3,
            label='one seed' if i == 0 else None)
    ax.annotate(f'{s["mean"]:.3f}', (i, means[i]), textcoords='offset points', xytext=(8, -12),
                fontsize=8)
  ax.set_xticks(x, [_setting_label(s['setting']) for s in done], rotation=20, ha='right',
                fontsize=8)
  ax.set_ylabel(f'{split or "eval"} mIoU')
  lows = [s['low'] for s in done if not math.isnan(s['low'])] + [min(s['mious']) for s in done]
  highs = [s['high'] for s in done if not math.isnan(s['high'])] + [max(s['mious']) for s in done]
  span = max(max(highs) - min(lows), 0.01) if done else 1
  ax.set_ylim(max(0, min(lows) - span), max(highs) + span * 0.5 if done else 1)
  ax.set_title(title)
  ax.legend(fontsize=7, loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sweep', default='', help='the workdir given to launch/sweep.py')
  parser.add_argument('--protocol', default='', help='only evaluations under this protocol')
  parser.add_argument('--split', default='', help='only evaluations of this split')
  parser.add_argument('--block', type=int, default=10,
                      help='bootstrap: consecutive evaluation images drawn together')
  parser.add_argument('--resamples', type=int, default=2000, help='bootstrap resamples')
  parser.add_argument('--bootstrap_seed', type=int, default=0, help="the bootstrap's own seed")
  parser.add_argument('--level', type=float, default=0.95, help='coverage of the intervals')
  parser.add_argument('--runs', default='', help='comma-separated workdirs: their evaluations')
  parser.add_argument('--per_class', default='', help='a workdir: per-class IoU and pixels')
  parser.add_argument('--seeds', default='',
                      help='comma-separated workdirs of one recipe: mean and sd over them')
  args = parser.parse_args(argv)
  if sum(map(bool, (args.sweep, args.runs, args.per_class, args.seeds))) != 1:
    print('error: give one of --sweep=DIR, --runs=DIR,DIR,..., --per_class=DIR or '
          '--seeds=DIR,DIR,...')
    return 2
  if args.block < 1 or args.resamples < 1 or not 0 < args.level < 1:
    print(f'error: --block={args.block} and --resamples={args.resamples} must be >= 1, '
          f'--level={args.level} in (0, 1).')
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
    run['result'] = last_evaluation(run['workdir'], args.protocol, args.split)
  settings, pairs = settings_summary(sweep, args.block, args.resamples, args.bootstrap_seed,
                                     args.level)
  split = args.split or next((s['rows'][0]['split'] for s in settings if s['rows']), '')
  blocks = [table(settings, split, args.level), class_table(settings),
            pairs_table(pairs, args.level)]
  if pairs or any(not math.isnan(s['low']) for s in settings):
    blocks.append(bootstrap.WHAT_IT_COVERS.format(
        resamples=args.resamples, seed=args.bootstrap_seed, block=args.block,
        pairs=len(pairs), alpha=round(1 - args.level, 6)))
  text = '\n\n'.join(b for b in blocks if b)
  with open(os.path.join(args.sweep, 'results.md'), 'w') as f:
    f.write(text + '\n')
  write_csv(settings, pairs, os.path.join(args.sweep, 'results.csv'),
            os.path.join(args.sweep, 'pairs.csv'))
  if any(s['rows'] for s in settings):
    plot(settings, os.path.basename(sweep['config']), split,
         os.path.join(args.sweep, 'results.png'), args.level)
  print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
