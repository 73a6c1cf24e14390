"""launch/sweep.py turns a grid into runs; launch/summarize.py turns their evals into a table."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deeplab_jax import per_image_counts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'launch'))

import bootstrap  # pylint: disable=g-import-not-at-top,wrong-import-position
import summarize  # pylint: disable=g-import-not-at-top,wrong-import-position
import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_grid_product_names_and_commands(tmp_path):
  runs = sweep.plan('configs/quickstart.py', str(tmp_path),
                    [sweep.parse_grid('model.aspp.atrous_rates=(1,1,1);(6,12,18)'),
                     sweep.parse_grid('model.output_stride=8;16')], ['--config.seed=1'])
  assert [r['name'] for r in runs] == [
      'atrous_rates-1_1_1,output_stride-8', 'atrous_rates-1_1_1,output_stride-16',
      'atrous_rates-6_12_18,output_stride-8', 'atrous_rates-6_12_18,output_stride-16']
  assert runs[2]['command'][-3:] == ['--config.model.aspp.atrous_rates=(6,12,18)',
                                     '--config.model.output_stride=8', '--config.seed=1']
  assert len({r['workdir'] for r in runs}) == 4


def independent_bootstrap(settings, block, resamples, seed):
  """launch/bootstrap.py's resampling written out plainly: per resample, the image blocks'
  starts, then each setting's drawn runs; each drawn run's mIoU on the drawn images' summed
  counts, class by class; averaged over the drawn runs."""
  rng = np.random.default_rng(seed)
  n = settings[0].shape[1]
  out = np.zeros((resamples, len(settings)))
  for b in range(resamples):
    starts = rng.integers(0, n - block + 1, size=-(-n // block))
    images = [i for start in starts for i in range(start, start + block)][:n]
    for k, runs in enumerate(settings):
      picks = rng.integers(0, len(runs), size=len(runs))
      values = []
      for pick in picks:
        truth, predicted, both = runs[pick][images].sum(axis=0)
        ious = [both[c] / (truth[c] + predicted[c] - both[c])
                for c in range(len(truth)) if truth[c] + predicted[c] - both[c] > 0]
        values.append(sum(ious) / len(ious))
      out[b, k] = sum(values) / len(values)
  return out


def percentile(values, q):
  """np.quantile's default (linear) interpolation, by hand."""
  values = sorted(values)
  x = q * (len(values) - 1)
  lo = int(np.floor(x))
  return values[lo] + (values[min(lo + 1, len(values) - 1)] - values[lo]) * (x - lo)


def load_counts(path):
  data = np.load(path)
  counts = np.zeros(tuple(data['shape']), np.int64)
  for (i, j, k), v in zip(data['nonzero'].T, data['values']):
    counts[i, j, k] = v
  return counts


@pytest.mark.slow
def test_a_real_sweep_with_seeds_ends_in_tables_intervals_and_a_plot(tmp_path, cache_dir,
                                                                     subprocess_env):
  """2 settings x 2 seeds of the tiny config: the table's means, standard deviations and
  bootstrap intervals, and the pair's difference, against a computation of their own from the
  runs' evals.jsonl lines and per-image counts. A relaunch skips the finished runs."""
  workdir = str(tmp_path / 'sweep')
  env = subprocess_env()
  command = [sys.executable, 'launch/sweep.py', '--config=configs/quickstart.py:smoke',
             f'--workdir={workdir}', '--grid=model.aspp.atrous_rates=(1,1,1);(2,4,6)',
             '--seeds=2', '--', f'--config.data.cache_dir={cache_dir}',
             '--config.train.num_steps=2', '--config.eval.num_images_to_write=0']
  subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True,
                 timeout=900)
  block, resamples = 7, 300
  out = subprocess.run([sys.executable, 'launch/summarize.py', f'--sweep={workdir}',
                        f'--block={block}', f'--resamples={resamples}', '--bootstrap_seed=3'],
                       cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
  lines = out.strip().splitlines()
  assert lines[0] == ('| model.aspp.atrous_rates | seeds | step | val mIoU mean | sd | '
                      '95 % interval | pixel accuracy |')
  runs = json.load(open(os.path.join(workdir, 'sweep.json')))['runs']
  assert [os.path.basename(r['workdir']) for r in runs] == [
      'atrous_rates-1_1_1,seed-0', 'atrous_rates-1_1_1,seed-1',
      'atrous_rates-2_4_6,seed-0', 'atrous_rates-2_4_6,seed-1']
  settings, means = [], []
  for k, rates in enumerate(('(1,1,1)', '(2,4,6)')):
    rows = [json.loads(open(os.path.join(r['workdir'], 'evals.jsonl')).readlines()[-1])
            for r in runs[2 * k:2 * k + 2]]
    mious = [r['miou'] for r in rows]
    means.append(sum(mious) / 2)
    sd = abs(mious[0] - mious[1]) / np.sqrt(2)  # the sample sd of two values
    counts = np.stack([load_counts(os.path.join(r['workdir'], row['per_image_counts']))
                       for r, row in zip(runs[2 * k:2 * k + 2], rows)])
    settings.append(counts)
    assert lines[2 + k].startswith(f'| {rates} | 2 of 2 | 2 | {means[-1]:.4f} | {sd:.4f} | ')
  stats = independent_bootstrap(settings, block, resamples, 3)
  for k in range(2):
    low, high = percentile(stats[:, k], 0.025), percentile(stats[:, k], 0.975)
    assert f'| {means[k]:.4f} | ' in lines[2 + k]
    assert f' | {low:.4f} - {high:.4f} | ' in lines[2 + k]
  d = stats[:, 0] - stats[:, 1]
  p = min(1.0, 2 * (1 + min(np.sum(d <= 0), np.sum(d >= 0))) / (1 + len(d)))
  pair = next(l for l in lines if l.startswith('| atrous_rates=(1,1,1) | atrous_rates=(2,4,6)'))
  assert (f'| {means[0] - means[1]:+.4f} | {percentile(d, 0.025):+.4f} - '
          f'{percentile(d, 0.975):+.4f} (95.0 %) | {p:.4f} | {p:.4f} |') in pair
  assert 'They do not cover' in out
  assert open(os.path.join(workdir, 'results.md')).read().strip() == out.strip()
  assert os.path.getsize(os.path.join(workdir, 'results.png')) > 1000
  with open(os.path.join(workdir, 'results.csv')) as f:
    table = list(csv.DictReader(f))
  assert [float(r['miou_mean']) for r in table] == pytest.approx(means)
  again = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True, timeout=300).stdout
  assert again.count('finished before, skipped') == 4
  printed = subprocess.run(
      [sys.executable, 'launch/sweep.py', '--config=configs/quickstart.py:smoke',
       f'--workdir={workdir}', '--grid=model.output_stride=8;16', '--seeds=3', '--print_only'],
      cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.splitlines()
  assert len(printed) == 6 and printed[5].endswith('--config.model.output_stride=16 '
                                                   '--config.seed=2')


def test_settings_that_share_a_workdir_name_are_refused(tmp_path):
  with pytest.raises(SystemExit, match="share the workdir names \\['seed-1'\\]"):
    sweep.plan('configs/quickstart.py', str(tmp_path), [('seed', ['-1', '1'])], [])


def test_holm_steps_down_and_stops_at_the_first_kept_hypothesis():
  """p = 0.01, 0.04, 0.03, 0.005 at 5 %: sorted, 0.005 <= 0.05/4 and 0.01 <= 0.05/3 are
  rejected, 0.03 > 0.05/2 is kept, and so is 0.04 though 0.04 <= 0.05/1 (Holm stops)."""
  got = bootstrap.holm([0.01, 0.04, 0.03, 0.005], 0.05)
  assert [g['real'] for g in got] == [True, False, False, True]
  assert [g['p_holm'] for g in got] == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert [g['alpha'] for g in got] == pytest.approx([0.05 / 3, 0.05, 0.05 / 2, 0.05 / 4])


def test_intervals_of_three_settings_against_a_plain_computation(tmp_path, capsys):
  """Records written by hand (3 settings x 3 seeds, 23 images, blocks of 4 that do not divide
  them): each setting's interval, each pair's Holm-adjusted p and verdict recomputed plainly;
  a setting far above the others is 'real', two alike are not."""
  rng = np.random.default_rng(1)
  runs, settings = [], []
  for k, quality in enumerate((0.5, 0.5, 0.9)):
    counts = []
    for seed in range(3):
      workdir = tmp_path / f'x{k}_s{seed}'
      os.makedirs(workdir)
      truth = rng.integers(0, 60, (23, 4))
      both = (truth * rng.uniform(quality - 0.1, quality, (23, 4))).astype(np.int64)
      c = np.stack([truth, both + rng.integers(0, 5, (23, 4)), both], 1)
      counts.append(c)
      row = {'step': 9, 'split': 'dev', 'protocol': 'p', 'pixel_accuracy': 0.5,
             'miou': float(bootstrap.miou(*c.sum(0))),
             'per_class_iou': {n: 0.5 for n in 'abcd'}}
      row['per_image_counts'] = per_image_counts.write(
          str(workdir), row, np.arange(23), c, list('abcd'))
      with open(workdir / 'evals.jsonl', 'w') as f:
        f.write(json.dumps(row) + '\n')
      runs.append({'name': workdir.name, 'setting': {'x': str(k), 'seed': str(seed)},
                   'workdir': str(workdir)})
    settings.append(np.stack(counts))
  json.dump({'config': 'c.py', 'runs': runs}, open(tmp_path / 'sweep.json', 'w'))
  assert summarize.main([f'--sweep={tmp_path}', '--block=4', '--resamples=400',
                         '--bootstrap_seed=5']) == 0
  out = capsys.readouterr().out
  stats = independent_bootstrap(settings, 4, 400, 5)
  means = [np.mean([bootstrap.miou(*run.sum(0)) for run in s]) for s in settings]
  for k in range(3):
    sd = np.std([bootstrap.miou(*r.sum(0)) for r in settings[k]], ddof=1)
    assert (f'| {means[k]:.4f} | {sd:.4f} | {percentile(stats[:, k], 0.025):.4f} - '
            f'{percentile(stats[:, k], 0.975):.4f} |') in out
  pairs = [(0, 1), (0, 2), (1, 2)]
  ps = []
  for a, b in pairs:
    d = stats[:, a] - stats[:, b]
    ps.append(min(1.0, 2 * (1 + min(np.sum(d <= 0), np.sum(d >= 0))) / (1 + len(d))))
  order = np.argsort(ps, kind='stable')
  adjusted, verdict, running, going = [0.0] * 3, [False] * 3, 0.0, True
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (3 - rank) * ps[i]))
    going = going and ps[i] <= 0.05 / (3 - rank)
    adjusted[i], verdict[i] = running, going
  for (a, b), p, adj, real in zip(pairs, ps, adjusted, verdict):
    assert (f'| x={a} | x={b} | {means[a] - means[b]:+.4f} | ') in out
    line = next(l for l in out.splitlines() if l.startswith(f'| x={a} | x={b} |'))
    assert line.endswith(f'| {p:.4f} | {adj:.4f} | {"yes" if real else "no"} |')
  assert verdict == [False, True, True]
  # A run without per-image counts: means and sds stay, intervals go.
  os.remove(os.path.join(runs[0]['workdir'], 'evals.jsonl'))
  with open(os.path.join(runs[0]['workdir'], 'evals.jsonl'), 'w') as f:
    f.write(json.dumps({'step': 9, 'split': 'dev', 'protocol': 'p', 'miou': 0.4,
                        'pixel_accuracy': 0.5, 'per_class_iou': {n: 0.5 for n in 'abcd'}}) + '\n')
  assert summarize.main([f'--sweep={tmp_path}']) == 0
  out = capsys.readouterr()
  assert '| n/a |' in out.out and 'kept no per-image counts' in out.err
  assert summarize.main([f'--sweep={tmp_path}', '--level=1.5']) == 2


def test_summarize_marks_runs_not_evaluated(tmp_path):
  workdir = tmp_path / 's'
  os.makedirs(workdir / 'a')
  with open(workdir / 'a' / 'evals.jsonl', 'w') as f:
    f.write(json.dumps({'step': 5, 'split': 'val', 'protocol': 'p', 'miou': 0.5,
                        'pixel_accuracy': 0.9}) + '\n')
    f.write(json.dumps({'step': 9, 'split': 'val', 'protocol': 'q', 'miou': 0.6,
                        'pixel_accuracy': 0.91}) + '\n')
  json.dump({'config': 'c.py', 'runs': [
      {'name': 'a', 'setting': {'x': '1'}, 'workdir': str(workdir / 'a')},
      {'name': 'b', 'setting': {'x': '2'}, 'workdir': str(workdir / 'b')}]},
            open(workdir / 'sweep.json', 'w'))
  assert summarize.main([f'--sweep={workdir}', '--protocol=p']) == 0
  text = open(workdir / 'results.md').read()
  assert '| 1 | 1 of 1 | 5 | 0.5000 | n/a | n/a | 0.9000 |' in text
  assert '| 2 | 0 of 1 | not evaluated |  |  |  |  |' in text


def test_runs_and_per_class_tables_read_the_last_step(tmp_path, capsys):
  rows = [
      {'step': 10, 'split': 'dev', 'protocol': 'p', 'miou': 0.1, 'pixel_accuracy': 0.5,
       'per_class_iou': {'a': 0.1, 'b': 0.1}, 'confusion': [[1, 0], [0, 1]]},
      {'step': 20, 'split': 'dev', 'protocol': 'p', 'miou': 0.25, 'pixel_accuracy': 0.75,
       'per_class_iou': {'a': 0.5, 'b': None}, 'confusion': [[30, 10], [0, 0]]},
      {'step': 20, 'split': 'val', 'protocol': 'p ema=0.9', 'miou': 0.5, 'pixel_accuracy': 0.9,
       'per_class_iou': {'a': 0.8, 'b': 0.2}, 'confusion': [[8, 1], [1, 2]]},
  ]
  workdir = tmp_path / 'run'
  os.makedirs(workdir)
  with open(workdir / 'evals.jsonl', 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in rows))
  assert summarize.main([f'--runs={workdir},{tmp_path / "none"}']) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[2:] == [f'| {workdir} | 20 | dev | p | 0.2500 | 0.7500 |',
                     f'| {workdir} | 20 | val | p ema=0.9 | 0.5000 | 0.9000 |',
                     f'| {tmp_path / "none"} | not evaluated | | | | |']
  assert summarize.main([f'--per_class={workdir}']) == 0
  out = capsys.readouterr().out
  # Pixels are the ground truth's: the confusion matrix's row sums (40 and 0; 9 and 3).
  assert '| a | 0.500 | 40 |\n| b | n/a | 0 |' in out
  assert '| a | 0.800 | 9 |\n| b | 0.200 | 3 |' in out
  assert summarize.main([]) == 2


def test_seeds_table_gives_mean_and_sample_sd(tmp_path, capsys):
  rng = np.random.default_rng(0)
  ious = rng.uniform(0, 1, (3, 2))
  ious[1, 1] = np.nan                        # a class run 1 never saw nor predicted
  workdirs = []
  for seed in range(3):
    workdir = tmp_path / f's{seed}'
    os.makedirs(workdir)
    per_class = {c: None if np.isnan(ious[seed, i]) else ious[seed, i]
                 for i, c in enumerate(('a', 'b'))}
    rows = [{'step': 5, 'split': 'dev', 'protocol': 'p', 'miou': 0.0, 'pixel_accuracy': 0.0,
             'per_class_iou': per_class, 'confusion': [[0, 0], [0, 0]]},
            {'step': 9, 'split': 'dev', 'protocol': 'p', 'miou': float(np.nanmean(ious[seed])),
             'pixel_accuracy': 0.5, 'per_class_iou': per_class, 'confusion': [[6, 1], [2, 3]],
             'boundary_f_2px': 0.1 * (seed + 1), 'per_class_boundary_f_2px': per_class}]
    if seed == 0:                            # a protocol the other runs lack is left out
      rows.append(dict(rows[-1], protocol='p ema=0.9'))
    with open(workdir / 'evals.jsonl', 'w') as f:
      f.write(''.join(json.dumps(r) + '\n' for r in rows))
    workdirs.append(str(workdir))
  assert summarize.main([f'--seeds={",".join(workdirs)}']) == 0
  out = capsys.readouterr().out
  mious = np.nanmean(ious, axis=1)
  assert ('dev, p, 3 runs (steps 9, 9, 9): mIoU '
          f'{mious.mean():.4f} sd {mious.std(ddof=1):.4f}') in out
  assert 'boundary_f_2px: 0.2000 sd 0.1000 (0.1000, 0.2000, 0.3000)' in out
  assert 'per_class_boundary_f' not in out
  assert f'| a | {ious[:, 0].mean():.3f} | {ious[:, 0].std(ddof=1):.3f} | 7 |' in out
  b = ious[[0, 2], 1]
  assert f'| b | {b.mean():.3f} | {b.std(ddof=1):.3f} | 5 |' in out
  assert 'ema' not in out
  assert summarize.main([f'--seeds={workdirs[0]},{tmp_path / "none"}']) == 0
  assert 'not evaluated' in capsys.readouterr().out
